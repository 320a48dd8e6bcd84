# `nix flake check`: the package (with its pure unit tests), clippy, rustfmt, the module's option
# documentation, and every file of tests/vm/ as a NixOS VM test (they need the `kvm` feature).
{ pkgs, self }:
let
  inherit (pkgs) lib;
  cc-ci = self.packages.${pkgs.stdenv.hostPlatform.system}.cc-ci;

  # Same source, vendored dependencies and toolchain as the package; only the cargo command differs.
  cargoCheck =
    name: command:
    cc-ci.overrideAttrs (old: {
      pname = "cc-ci-${name}";
      nativeBuildInputs = old.nativeBuildInputs ++ [
        pkgs.clippy
        pkgs.rustfmt
      ];
      buildPhase = ''
        runHook preBuild
        ${command}
        runHook postBuild
      '';
      doCheck = false;
      postInstall = "";
      installPhase = "touch $out";
      dontFixup = true;
    });

  vmTestDir = ../tests/vm;
  vmTests = lib.mapAttrs' (
    file: _:
    lib.nameValuePair "vm-${lib.removeSuffix ".nix" file}" (
      import (vmTestDir + "/${file}") { inherit pkgs self; }
    )
  ) (lib.filterAttrs (file: type: type == "regular" && lib.hasSuffix ".nix" file) (builtins.readDir vmTestDir));

  # Evaluation-only tests of the module (no VM, no KVM): what it generates and what it refuses.
  evalNodeWith =
    modules: extra:
    pkgs.nixos {
      imports = modules ++ [ extra ];
      boot.loader.grub.enable = false;
      fileSystems."/" = {
        device = "none";
        fsType = "tmpfs";
      };
      system.stateVersion = "26.05";
    };
  evalNode = evalNodeWith [ self.nixosModules.cc-ci ];
  base = {
    enable = true;
    forge.tokenFile = "/run/keys/forge-token";
  };

  # Whether forcing `value` fails evaluation (a type error or a throw of the module).
  failsToEvaluate = value: !(builtins.tryEval (builtins.deepSeq value true)).success;
  refusesValue =
    what: value: lib.assertMsg (failsToEvaluate value) "the module accepted ${what}";

  # Listen addresses systemd's socket unit or the daemon would refuse: each must fail evaluation
  # of the option itself (tests/listen-cases.json has the full list, checked by scripts/check-nix
  # against nixos/listen.nix, which this type uses).
  badListens = [
    "localhost:8088"
    "0.0.0.0:99999"
    "::1:8088"
    "127.0.0.1:0"
    "run/cc-ci.sock"
  ];
  listenNode =
    listen:
    evalNode {
      services.cc-ci = base // {
        inherit listen;
      };
    };
  goodListens = [
    "[::]:8088"
    "10.0.0.5:8088"
    "/run/cc-ci/http.sock"
  ];

  # A secret typed into `settings` under a key cc-ci does not have.
  inlineToken = evalNode {
    services.cc-ci = base // {
      settings.forge.token = "inline-secret-value";
    };
  };
  # Only this module's assertions are evaluated: the rest of a bare NixOS is not under test.
  ourFailedAssertions =
    node:
    map (a: a.message) (
      lib.filter (a: lib.hasInfix "services.cc-ci" a.message && !a.assertion) node.config.assertions
    );
  refuses =
    what: node: fragment:
    lib.assertMsg (lib.any (lib.hasInfix fragment) (ourFailedAssertions node)) "the module accepted ${what}";

  good = evalNode {
    services.cc-ci = {
      enable = true;
      forge.tokenFile = "/run/keys/forge-token";
      forge.webhookSecretFile = "/run/keys/webhook-secret";
      repoAllowlist = [ "coop-cloud/web" ];
      orgAllowlist = [ "coop-cloud" ];
      settings.harness.domain_suffix = "ci.example.org";
    };
  };
  goodService = good.config.systemd.services.cc-ci.serviceConfig;
  storeSecret = evalNode {
    services.cc-ci = {
      enable = true;
      forge.tokenFile = "${pkgs.writeText "token" "not-a-secret-any-more"}";
    };
  };
  unixFirewall = evalNode {
    services.cc-ci = base // {
      listen = "/run/cc-ci/http.sock";
      openFirewall = true;
    };
  };
  loopbackFirewall = evalNode {
    services.cc-ci = base // {
      listen = "127.0.0.1:8088";
      openFirewall = true;
    };
  };
  unixSocket = evalNode {
    services.cc-ci = base // {
      listen = "/run/cc-ci/http.sock";
      socketGroup = "nginx";
    };
  };
  tmpWorkDir = evalNode {
    services.cc-ci = base // {
      settings.harness.work_dir = "/tmp/cc-ci";
    };
  };
  srvWorkDir = evalNode {
    services.cc-ci = base // {
      settings.harness.work_dir = "/srv/cc-ci";
    };
  };
  # Both names of the module at once, as two other modules might import them.
  bothModules = evalNodeWith [
    self.nixosModules.default
    self.nixosModules.cc-ci
  ] { services.cc-ci = base; };
  backupBot = evalNode {
    services.cc-ci = base // {
      backupBot.enable = true;
      backupBot.version = "2.4.0+2.4.0";
    };
  };
  backupBotUnit = backupBot.config.systemd.services.cc-ci-backup-bot;
  liveRestore = evalNode {
    services.cc-ci = {
      enable = true;
      forge.tokenFile = "/run/keys/forge-token";
    };
    virtualisation.docker.liveRestore = true;
  };

  # The cases scripts/check-nix runs when it has nixpkgs' lib: the module under the real module
  # system with stub NixOS options, here with the pinned nixpkgs' lib.
  libCases = (import ../tests/nix/module-eval.nix { inherit lib; }).cases;
  failedLibCases = lib.attrNames (lib.filterAttrs (_: ok: !ok) libCases);

  moduleEval =
    assert lib.assertMsg (failedLibCases == [ ]) (
      "tests/nix/module-eval.nix: " + lib.concatStringsSep "; " failedLibCases
    );
    assert lib.assertMsg (ourFailedAssertions good == [ ]) (
      "a valid configuration fails: " + lib.concatStringsSep "; " (ourFailedAssertions good)
    );
    assert refusesValue "a forge token in the Nix store" storeSecret.config.services.cc-ci.forge.tokenFile;
    assert lib.all (
      listen: refusesValue "listen = ${listen}" (listenNode listen).config.services.cc-ci.listen
    ) badListens;
    assert lib.all (
      listen:
      lib.assertMsg (
        (listenNode listen).config.systemd.sockets.cc-ci.listenStreams == [ listen ]
      ) "listen = ${listen} is refused or not passed to cc-ci.socket"
    ) goodListens;
    assert refusesValue "an unknown settings key (settings.forge.token)" inlineToken.config.services.cc-ci.settings;
    assert refusesValue "an inline token reaching the config file" (
      toString inlineToken.config.environment.etc."cc-ci/config.toml".source
    );
    assert refuses "openFirewall with a unix socket" unixFirewall "openFirewall";
    assert refuses "openFirewall with a loopback listen" loopbackFirewall "loopback";
    assert refuses "a work_dir under /tmp" tmpWorkDir "work_dir";
    assert lib.assertMsg (ourFailedAssertions srvWorkDir == [ ]) "work_dir = /srv/cc-ci is refused";
    assert lib.assertMsg (
      lib.elem "/srv/cc-ci" srvWorkDir.config.systemd.services.cc-ci.serviceConfig.ReadWritePaths
      && lib.elem "/srv/cc-ci" srvWorkDir.config.systemd.services.cc-ci-gc.serviceConfig.ReadWritePaths
    ) "a work_dir outside /var/lib/cc-ci is not writable by the units";
    assert lib.assertMsg (
      unixSocket.config.systemd.sockets.cc-ci.socketConfig.SocketMode == "0660"
      && unixSocket.config.systemd.sockets.cc-ci.socketConfig.SocketGroup == "nginx"
      && unixSocket.config.users.groups ? nginx
    ) "a unix-socket listen is not mode 0660 with the configured group";
    assert lib.assertMsg (
      bothModules.config.systemd.services.cc-ci.serviceConfig.ExecStart
      == good.config.systemd.services.cc-ci.serviceConfig.ExecStart
    ) "importing nixosModules.default and nixosModules.cc-ci together changes the service";
    assert lib.assertMsg (
      goodService.MemoryMax == "4G" && goodService.TasksMax == 1024 && goodService.LimitNOFILE == 8192
    ) "the service's resource limits are not set";
    assert lib.assertMsg (!(good.config.systemd.services ? cc-ci-backup-bot)) "backup-bot-two is deployed without backupBot.enable";
    assert lib.assertMsg (
      lib.hasInfix "version=${lib.escapeShellArg "2.4.0+2.4.0"}\n" backupBotUnit.script
      && lib.hasInfix "recipe=${lib.escapeShellArg "backup-bot-two"}\n" backupBotUnit.script
      && lib.elem "cc-ci-swarm.service" backupBotUnit.after
      && lib.elem "cc-ci-backup-bot.service" backupBot.config.systemd.services.cc-ci.wants
    ) "the backup-bot-two unit does not deploy the configured recipe and version after the swarm";
    assert refuses "live-restore with swarm" liveRestore "live-restore";
    assert lib.assertMsg (goodService.Type == "notify") "cc-ci.service is not Type=notify";
    assert lib.assertMsg (
      goodService.LoadCredential == [
        "forge-token:/run/keys/forge-token"
        "webhook-secret:/run/keys/webhook-secret"
      ]
    ) "the secrets are not passed as credentials: ${toString goodService.LoadCredential}";
    assert lib.assertMsg (
      good.config.systemd.sockets.cc-ci.listenStreams == [ "127.0.0.1:8088" ]
    ) "cc-ci.socket does not listen on the default address";
    assert lib.assertMsg (!good.config.virtualisation.docker.liveRestore) "live-restore stays on";
    # The config file's derivation already ran `cc-ci check-config` on it.
    pkgs.runCommand "cc-ci-module-eval" { } ''
      config=${good.config.environment.etc."cc-ci/config.toml".source}
      cat "$config"
      grep -q 'ci.example.org' "$config"
      grep -q 'coop-cloud/web' "$config"
      # The secrets reach the daemon as credentials only, never through the config file.
      if grep -q /run/keys "$config"; then
        echo "a secret file path leaked into the config file" >&2
        exit 1
      fi
      touch $out
    '';

  # An option without a description, or a default that cannot be shown, fails this build.
  optionsDoc = pkgs.nixosOptionsDoc {
    options = (pkgs.nixos { imports = [ self.nixosModules.cc-ci ]; }).options.services.cc-ci;
    warningsAreErrors = true;
    transformOptions = option: option // { declarations = [ ]; };
  };
in
{
  package = cc-ci;
  clippy = cargoCheck "clippy" "cargo clippy --offline --workspace --all-targets -- -D warnings";
  fmt = cargoCheck "fmt" "cargo fmt --all --check";
  options-doc = optionsDoc.optionsCommonMark;
  module-eval = moduleEval;
}
// vmTests
