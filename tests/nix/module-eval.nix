# nixos/module.nix evaluated by nixpkgs' real module system (`lib.evalModules`) without the rest
# of NixOS: the options it sets (systemd units, users, firewall, …) are declared here loosely
# (`anything`), and `pkgs` is a stub of the few attributes the module reads. What this proves
# holds for the module's own types, defaults and assertions; that the units are valid for
# systemd is left to the flake's `module-eval` check and the VM tests, on real NixOS.
#
# `lib` is nixpkgs' lib (a checkout of nixpkgs' `lib/` directory will do). scripts/check-nix runs
# `cases` and the `probes` (whose error messages it reads) when CC_CI_NIXPKGS_LIB names one;
# the flake's checks run `cases` with the pinned nixpkgs' lib.
{ lib }:
let
  inherit (lib) mkOption types;

  storePath = name: "${builtins.storeDir}/00000000000000000000000000000000-${name}";
  stubDrv = name: {
    type = "derivation";
    inherit name;
    outPath = storePath name;
    meta.mainProgram = name;
  };
  # A store path whose string forces `input`, as a real derivation's would.
  forcing = name: input: storePath name + builtins.substring 0 0 input;

  pkgs = rec {
    abra = stubDrv "abra";
    git = stubDrv "git";
    coreutils = stubDrv "coreutils";
    util-linux = stubDrv "util-linux";
    cc-ci = stubDrv "cc-ci";
    formats.toml = _: {
      type = types.anything;
      generate = name: value: forcing name (builtins.toJSON value);
    };
    runCommand =
      name: env: script:
      stubDrv name
      // {
        outPath = forcing name script;
        inherit env;
      };
    stdenv = {
      buildPlatform.canExecute = _: true;
      hostPlatform.system = "x86_64-linux";
    };
    buildPackages.callPackage = _: _: cc-ci;
    callPackage = _: _: cc-ci;
  };

  # attrsOf, as NixOS declares them: a `mkIf false` attribute is absent, not present and empty.
  loose = mkOption {
    type = types.attrsOf types.anything;
    default = { };
  };
  list = mkOption {
    type = types.listOf types.anything;
    default = [ ];
  };
  # The NixOS options the module defines or reads.
  nixosStub = {
    options = {
      assertions = list;
      warnings = list;
      users.users = loose;
      users.groups = loose;
      environment.systemPackages = list;
      environment.etc = loose;
      networking.firewall.allowedTCPPorts = list;
      systemd.sockets = loose;
      systemd.services = loose;
      systemd.timers = loose;
      systemd.tmpfiles.rules = list;
      virtualisation.docker = {
        enable = mkOption {
          type = types.bool;
          default = false;
        };
        # NixOS' default.
        liveRestore = mkOption {
          type = types.bool;
          default = true;
        };
        package = mkOption {
          type = types.anything;
          default = stubDrv "docker";
        };
      };
    };
  };

  # The flake's outputs with a stub nixpkgs, for its nixosModules.
  flake =
    let
      outputs = (import ../../flake.nix).outputs {
        self = outputs // {
          outPath = toString ../..;
        };
        nixpkgs = {
          inherit lib;
          legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: pkgs);
        };
      };
    in
    outputs;

  # A cross build: the build machine cannot run the host's binaries.
  crossPkgs = pkgs // {
    stdenv = pkgs.stdenv // {
      buildPlatform.canExecute = _: false;
    };
    buildPackages.callPackage = _: _: stubDrv "cc-ci-for-the-build-platform";
  };

  evalWithPkgs =
    pkgs: modules: cfg:
    (lib.evalModules {
      modules = [
        nixosStub
        { _module.args.pkgs = pkgs; }
        { services.cc-ci = cfg; }
      ]
      ++ modules;
    }).config;
  evalWith = evalWithPkgs pkgs;
  eval = evalWith [ ../../nixos/module.nix ];

  base = {
    enable = true;
    forge.tokenFile = "/run/keys/forge-token";
  };
  good = eval (
    lib.recursiveUpdate base {
      forge.webhookSecretFile = "/run/keys/webhook-secret";
      repoAllowlist = [ "coop-cloud/web" ];
      settings.harness.domain_suffix = "ci.example.org";
    }
  );

  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  evaluates = value: (builtins.tryEval (builtins.deepSeq value true)).success;
  refusedBy = config: fragment: lib.any (lib.hasInfix fragment) (failedAssertions config);

  # Everything a valid configuration generates, forced.
  generated = config: {
    inherit (config.systemd) services sockets timers;
    inherit (config.systemd.tmpfiles) rules;
    inherit (config.users) users groups;
    etc = config.environment.etc;
    firewall = config.networking.firewall.allowedTCPPorts;
    inherit (config) warnings;
    assertions = failedAssertions config;
  };

  badListens = [
    "localhost:8088"
    "0.0.0.0:99999"
    "::1:8088"
    "127.0.0.1:0"
    "[::1]"
    "run/cc-ci.sock"
  ];
  goodListens = [
    "127.0.0.1:8088"
    "[::]:8088"
    "[::1]:8088"
    "10.0.0.5:65535"
    "/run/cc-ci/http.sock"
  ];

  inlineToken = eval (base // { settings.forge.token = "inline-secret-value"; });
  unknownSection = eval (base // { settings.secrets.token = "inline-secret-value"; });
  unix = eval (
    base
    // {
      listen = "/run/cc-ci/http.sock";
      socketGroup = "nginx";
    }
  );
  srvWorkDir = eval (base // { settings.harness.work_dir = "/srv/cc-ci"; });
  both = evalWith [
    flake.nixosModules.default
    flake.nixosModules.cc-ci
  ] base;
  backupBot = eval (
    base
    // {
      backupBot.enable = true;
      backupBot.version = "2.4.0+2.4.0";
    }
  );

  cases = {
    "a valid configuration evaluates without failed assertions" =
      evaluates (generated good) && failedAssertions good == [ ];
    "the config file holds the settings and no secret path" =
      let
        settings = builtins.toJSON good.services.cc-ci.settings;
      in
      lib.hasInfix "ci.example.org" settings && !lib.hasInfix "/run/keys" settings;
    "every bad listen address fails evaluation" = lib.all (
      listen: !evaluates (eval (base // { inherit listen; })).services.cc-ci.listen
    ) badListens;
    "every good listen address reaches cc-ci.socket" = lib.all (
      listen: (eval (base // { inherit listen; })).systemd.sockets.cc-ci.listenStreams == [ listen ]
    ) goodListens;
    "an inline token under settings fails evaluation" =
      !evaluates inlineToken.services.cc-ci.settings
      && !evaluates inlineToken.environment.etc."cc-ci/config.toml".source;
    "an unknown settings section fails evaluation" = !evaluates unknownSection.services.cc-ci.settings;
    "a token file in the Nix store fails evaluation" =
      !evaluates (eval (base // { forge.tokenFile = storePath "token"; })).services.cc-ci.forge.tokenFile;
    "a path literal token file is used as its string, not copied" =
      (eval (base // { forge.tokenFile = /run/keys/token; })).services.cc-ci.forge.tokenFile
      == "/run/keys/token";
    "openFirewall with a loopback listen is refused" = refusedBy (eval (
      base // { openFirewall = true; }
    )) "loopback";
    "openFirewall with a unix socket is refused" = refusedBy (eval (
      base
      // {
        openFirewall = true;
        listen = "/run/cc-ci/http.sock";
      }
    )) "unix socket";
    "openFirewall with a routable listen opens its port" =
      let
        c = eval (
          base
          // {
            openFirewall = true;
            listen = "[::]:8089";
          }
        );
      in
      failedAssertions c == [ ] && c.networking.firewall.allowedTCPPorts == [ 8089 ];
    "a unix socket is 0660 with the socket group, which exists" =
      unix.systemd.sockets.cc-ci.socketConfig == {
        SocketUser = "root";
        SocketGroup = "nginx";
        SocketMode = "0660";
      }
      && unix.users.groups ? nginx
      && unix.users.groups ? cc-ci;
    "a TCP listen sets no socket permissions" = good.systemd.sockets.cc-ci ? socketConfig == false
      || good.systemd.sockets.cc-ci.socketConfig == { };
    "a work_dir outside the state directory is created and writable" =
      failedAssertions srvWorkDir == [ ]
      && srvWorkDir.systemd.services.cc-ci.serviceConfig.ReadWritePaths == [ "/srv/cc-ci" ]
      && srvWorkDir.systemd.services.cc-ci-gc.serviceConfig.ReadWritePaths == [ "/srv/cc-ci" ]
      && srvWorkDir.systemd.tmpfiles.rules == [ "d /srv/cc-ci 0700 cc-ci cc-ci -" ];
    "a work_dir inside the state directory needs nothing more" =
      let
        c = eval (base // { settings.harness.work_dir = "/var/lib/cc-ci/runs"; });
      in
      failedAssertions c == [ ] && c.systemd.services.cc-ci.serviceConfig.ReadWritePaths == [ ];
    "a work_dir the sandbox hides is refused" = lib.all (
      dir: refusedBy (eval (base // { settings.harness.work_dir = dir; })) "work_dir"
    ) [
      "/tmp/cc-ci"
      "/home/ci/work"
      "relative/work"
    ];
    "the daemon has memory, task and file limits" =
      let
        s = good.systemd.services.cc-ci.serviceConfig;
      in
      s.MemoryMax == "4G" && s.TasksMax == 1024 && s.LimitNOFILE == 8192 && s.OOMPolicy == "continue";
    "the limits are options" =
      let
        s =
          (eval (
            base
            // {
              limits = {
                memoryMax = "8G";
                tasksMax = 4096;
                openFiles = 65536;
              };
            }
          )).systemd.services.cc-ci.serviceConfig;
      in
      s.MemoryMax == "8G" && s.TasksMax == 4096 && s.LimitNOFILE == 65536;
    "no util-linux on the daemon's PATH" =
      !lib.elem pkgs.util-linux good.systemd.services.cc-ci.path;
    "both module names import together" =
      evaluates (generated both)
      && both.systemd.services.cc-ci.serviceConfig.ExecStart
      == good.systemd.services.cc-ci.serviceConfig.ExecStart;
    "check-config runs the deployed package natively" =
      map (p: p.name) good.environment.etc."cc-ci/config.toml".source.env.nativeBuildInputs == [
        "cc-ci"
      ];
    "check-config runs the build platform's cc-ci in a cross build" =
      map (p: p.name)
        (evalWithPkgs crossPkgs [ ../../nixos/module.nix ] base)
        .environment.etc."cc-ci/config.toml".source.env.nativeBuildInputs == [
          "cc-ci-for-the-build-platform"
        ];
    "no backup-bot-two unit unless enabled" = !(good.systemd.services ? cc-ci-backup-bot);
    "the backup-bot-two unit deploys the configured recipe and version after the swarm" =
      let
        unit = backupBot.systemd.services.cc-ci-backup-bot;
      in
      evaluates (generated backupBot)
      && lib.hasInfix "version=${lib.escapeShellArg "2.4.0+2.4.0"}\n" unit.script
      && lib.hasInfix "recipe=${lib.escapeShellArg "backup-bot-two"}\n" unit.script
      && lib.hasInfix "domain=${lib.escapeShellArg "backup-bot-two.ci.local"}\n" unit.script
      && lib.elem "cc-ci-swarm.service" unit.after
      && lib.elem "cc-ci-swarm.service" unit.requires
      && lib.elem pkgs.util-linux unit.path
      && lib.elem "cc-ci-backup-bot.service" backupBot.systemd.services.cc-ci.wants
      && !lib.elem "cc-ci-backup-bot.service" backupBot.systemd.services.cc-ci.requires;
  };
in
{
  inherit cases;
  # Each must fail evaluation; scripts/check-nix reads the error message.
  probes = {
    inlineToken = builtins.deepSeq inlineToken.services.cc-ci.settings null;
    unknownSection = builtins.deepSeq unknownSection.services.cc-ci.settings null;
    badListen = (eval (base // { listen = "localhost:8088"; })).services.cc-ci.listen;
  };
}
