# NixOS module `services.cc-ci`: the socket-activated `cc-ci serve` daemon, a timer for `cc-ci gc`,
# and the single-node Docker Swarm both need. Every option is documented in docs/nixos.md.
#
# crates/daemon/tests/nix_agreement.rs reads this file as text: an option is a line
# `<name> = lib.mkOption ...` (or mkEnableOption/mkPackageOption) and a config-file key is a quoted
# `"<section>.<key>" = ...` line in `settingsOptions`. Keep those on one line each.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types literalExpression;

  cfg = config.services.cc-ci;
  format = pkgs.formats.toml { };

  # The service's StateDirectory=cc-ci.
  statePath = "/var/lib/cc-ci";

  # `IPv4:port`, `[IPv6]:port` or an absolute unix-socket path: what systemd's socket unit and
  # the daemon both take. The same rule as `check-config` (crates/daemon/src/config/listen.rs).
  isValidListen = import ./listen.nix;
  listenType = lib.mkOptionType {
    name = "cc-ci-listen";
    description = "`IPv4:port`, `[IPv6]:port` (port 1-65535) or an absolute unix-socket path";
    descriptionClass = "noun";
    check = isValidListen;
    merge = lib.options.mergeEqualOption;
  };

  isUnixSocket = lib.hasPrefix "/" cfg.listen;
  listenPort = lib.toInt (lib.last (lib.splitString ":" cfg.listen));
  # Reachable from this host only: opening the firewall for it does nothing but mislead.
  isLoopbackListen = lib.hasPrefix "127." cfg.listen || lib.hasPrefix "[::1]:" cfg.listen;

  # `settings` takes only the keys declared below. A freeform type would let an unknown key
  # through into the world-readable config file in the Nix store (`settings.forge.token = "…"`)
  # before `check-config` could refuse it, and the module system's own "option does not exist"
  # error prints the value. This type fails evaluation naming the key only.
  unknownSettingsKey = lib.mkOptionType {
    name = "cc-ci-unknown-settings-key";
    # The description of the `settings` submodule is taken from its freeform type.
    description = "cc-ci config file: only the keys below";
    check = _: true;
    merge =
      loc: defs:
      let
        # Attribute paths of the unknown keys, never their values.
        keysOf =
          prefix: value:
          if builtins.isAttrs value && builtins.length prefix < 2 then
            lib.concatLists (lib.mapAttrsToList (k: keysOf (prefix ++ [ k ])) value)
          else
            [ (lib.concatStringsSep "." prefix) ];
        keys = lib.unique (lib.concatMap (def: keysOf [ ] def.value) defs);
        files = lib.unique (map (def: toString def.file) defs);
      in
      throw "${lib.showOption loc}: cc-ci has no config key ${lib.concatMapStringsSep ", " (k: "`${k}`") keys} (set in ${lib.concatStringsSep ", " files}); the keys are listed in docs/config.md. Secrets never go into settings: use services.cc-ci.forge.tokenFile and services.cc-ci.forge.webhookSecretFile.";
  };

  # A config-file key left `null` is omitted from the file, so cc-ci's built-in default applies
  # and is written down only once (crates/harness/src/config.rs, crates/daemon/src/config).
  builtin =
    {
      type,
      builtinDefault,
      description,
      example ? null,
    }:
    mkOption (
      {
        type = types.nullOr type;
        default = null;
        description = "${description}\n\n`null` leaves the key out of the file: cc-ci's default, ${builtinDefault}, applies.";
      }
      // lib.optionalAttrs (example != null) { inherit example; }
    );

  # A list whose empty value is also cc-ci's default.
  list =
    description: example:
    mkOption {
      type = types.listOf types.str;
      default = [ ];
      inherit example description;
    };

  # Keys owned by a top-level option of this module: one place to set each.
  ownedBy =
    name: type: value:
    mkOption {
      inherit type;
      default = value;
      defaultText = literalExpression "config.services.cc-ci.${name}";
      readOnly = true;
      description = "Set through {option}`services.cc-ci.${name}`; read-only here.";
    };

  # Secret files never appear in the config file: the daemon reads them from its systemd
  # credentials ($CREDENTIALS_DIRECTORY), loaded from the `*File` options.
  credential =
    name: option:
    mkOption {
      type = types.nullOr types.str;
      default = null;
      readOnly = true;
      description = "Always unset: the daemon reads the systemd credential `${name}`, loaded from {option}`services.cc-ci.${option}`.";
    };

  # Every key of the config file, by its dotted name. Keep in step with `known_keys()`.
  settingsOptions = {
    "harness.abra" = mkOption {
      type = types.str;
      default = lib.getExe pkgs.abra;
      defaultText = literalExpression "lib.getExe pkgs.abra";
      description = "The abra binary runs use (a path, or a name looked up on PATH).";
    };
    "harness.domain_suffix" = builtin {
      type = types.str;
      builtinDefault = "`ci.local`";
      example = "ci.example.org";
      description = "Suffix of the per-run app domains, `<recipe[:4]>-<6 hex>.<domain_suffix>`. Point a wildcard DNS record `*.<domain_suffix>` at this host so Traefik can route the apps under test.";
    };
    "harness.server" = builtin {
      type = types.str;
      builtinDefault = "`default`";
      description = "Name of the abra server the apps are deployed to (`abra server add --local` names it `default`).";
    };
    "harness.work_dir" = builtin {
      type = types.str;
      builtinDefault = "`$STATE_DIRECTORY/work`, i.e. `/var/lib/cc-ci/work`";
      description = "Where per-run state lives: the per-run `ABRA_DIR`, run locks, reports. An absolute path; outside `/var/lib/cc-ci` it is created for the `cc-ci` user and added to the units' `ReadWritePaths=` (not under `/tmp`, `/var/tmp`, `/home`, `/root`, `/run/user` or the Nix store, which the sandbox hides or makes private). Unset, the daemon and the gc job use `/var/lib/cc-ci/work`, and a `cc-ci run` by hand uses its user's own cache directory, so manual runs never leave files the service cannot remove.";
    };
    "harness.overlay_dirs" = list "Operator overlay folders, searched after the overlays shipped with cc-ci (a later folder wins per key)." [
      "/etc/cc-ci/overlays"
    ];
    "harness.repo_local_allowlist" = ownedBy "repoLocalAllowlist" (types.listOf types.str) cfg.repoLocalAllowlist;
    "harness.skip_generic" = list "Recipes whose generic checks are turned off (every report says so)." [
      "some-recipe"
    ];
    "harness.abra_timeout_secs" = builtin {
      type = types.ints.positive;
      builtinDefault = "900";
      description = "Deadline of one abra call, in seconds.";
    };
    "harness.converge_timeout_secs" = builtin {
      type = types.ints.positive;
      builtinDefault = "300";
      description = "Deadline for a deployment to converge (replicas running, healthy, updates settled), in seconds.";
    };
    "harness.stability_window_secs" = builtin {
      type = types.ints.unsigned;
      builtinDefault = "10";
      description = "How long services must run without a task restart after converging, in seconds.";
    };
    "harness.poll_interval_ms" = builtin {
      type = types.ints.positive;
      builtinDefault = "250";
      description = "How often the swarm state is polled while waiting, in milliseconds.";
    };
    "harness.engine_timeout_secs" = builtin {
      type = types.ints.positive;
      builtinDefault = "30";
      description = "Deadline of one Docker Engine API request, in seconds: a hung engine ends the run with exit 3.";
    };
    "harness.compose_allow" = mkOption {
      type = types.attrsOf (types.listOf types.str);
      default = { };
      example = { "coop-cloud/traefik" = [ "docker-socket" ]; };
      description = "Compose-policy rules allowed per repository (`owner/name`); every other way for a recipe to reach the host is refused (see docs/harness.md).";
    };
    "harness.port_lease_timeout_secs" = builtin {
      type = types.ints.positive;
      builtinDefault = "3600";
      description = "How long a run waits for host ports another cc-ci run holds, in seconds.";
    };
    "harness.http_probe_image" = builtin {
      type = types.str;
      builtinDefault = "unset: HTTP checks run `wget` inside the service's container";
      description = "Image of cc-ci's own HTTP probe container (it needs `wget`); HTTP checks then run from it, sharing the service's network.";
    };

    "daemon.listen" = ownedBy "listen" listenType cfg.listen;
    "daemon.state_dir" = mkOption {
      type = types.str;
      default = statePath;
      readOnly = true;
      description = "Database, run logs and reports: the service's `StateDirectory`. Written to the file so that `cc-ci queue`, `cc-ci logs` and `cc-ci cancel` run with `--config /etc/cc-ci/config.toml` find the daemon's database.";
    };
    "daemon.concurrency" = builtin {
      type = types.ints.positive;
      builtinDefault = "1";
      description = "Runs executed at once.";
    };
    "daemon.run_timeout_secs" = builtin {
      type = types.ints.positive;
      builtinDefault = "3600";
      description = "Deadline of one run, in seconds.";
    };
    "daemon.cancel_grace_secs" = builtin {
      type = types.ints.unsigned;
      builtinDefault = "30";
      description = "Grace period of a running run on shutdown or cancel before it is killed and torn down, in seconds.";
    };
    "daemon.public_url" = builtin {
      type = types.str;
      builtinDefault = "`http://127.0.0.1:8088`";
      example = "https://ci.example.org";
      description = "Base URL of this daemon as the forge links it (run pages, logs).";
    };
    "daemon.poll_interval_secs" = builtin {
      type = types.ints.unsigned;
      builtinDefault = "0 (no polling)";
      example = 60;
      description = "Interval of the pull-request comment poll of `forge.poll_repos`, in seconds; 0 disables polling.";
    };
    "daemon.max_body_bytes" = builtin {
      type = types.ints.positive;
      builtinDefault = "16777216";
      description = "Largest webhook body accepted, in bytes (at least 1024). Newer Gitea and Forgejo carry a pull request's description twice in a comment payload, JSON-escaped.";
    };
    "daemon.max_connections" = builtin {
      type = types.ints.positive;
      builtinDefault = "256";
      description = "Connections the daemon serves at once; more are answered 503 (keep it well below `LimitNOFILE`).";
    };
    "daemon.max_log_followers" = builtin {
      type = types.ints.positive;
      builtinDefault = "32";
      description = "`/runs/{id}/log?follow` streams at once; more are answered 503.";
    };
    "daemon.request_timeout_secs" = builtin {
      type = types.ints.positive;
      builtinDefault = "10";
      description = "Deadline to read one webhook request, in seconds.";
    };
    "daemon.max_requeues" = builtin {
      type = types.ints.unsigned;
      builtinDefault = "1";
      description = "How often a run interrupted by a daemon crash is re-queued before it is reported as an error.";
    };
    "daemon.drift_interval_secs" = mkOption {
      type = types.ints.unsigned;
      default = 21600;
      example = 3600;
      description = "Interval of the drift sweep, in seconds: the inputs of the latest result of each tracked recipe and pull request are resolved again (one registry request per image, no deploy), and a result whose image digest moved is re-run. On here (every 6 hours); `0` turns it off, as is cc-ci's own default for a daemon started by hand.";
    };
    "daemon.reuse_max_age_secs" = builtin {
      type = types.ints.unsigned;
      builtinDefault = "0 (no age limit)";
      example = 604800;
      description = "A result older than this is neither reused for a repeated `!testme` nor counted fresh by the drift sweep, in seconds.";
    };

    "forge.url" = builtin {
      type = types.str;
      builtinDefault = "`http://127.0.0.1:3000`";
      example = "https://git.coopcloud.tech";
      description = "Base URL of the Gitea or Forgejo instance (the API is under `/api/v1`).";
    };
    "forge.token_file" = credential "forge-token" "forge.tokenFile";
    "forge.webhook_secret_file" = credential "webhook-secret" "forge.webhookSecretFile";
    "forge.repo_allowlist" = ownedBy "repoAllowlist" (types.listOf types.str) cfg.repoAllowlist;
    "forge.org_allowlist" = ownedBy "orgAllowlist" (types.listOf types.str) cfg.orgAllowlist;
    "forge.user_allowlist" = ownedBy "userAllowlist" (types.listOf types.str) cfg.userAllowlist;
    "forge.poll_repos" = list "Repositories (`owner/name`) whose open pull requests are polled for `!testme` comments (with `daemon.poll_interval_secs` > 0)." [
      "coop-cloud/traefik"
    ];
    "forge.status_context" = builtin {
      type = types.str;
      builtinDefault = "`cc-ci/testme`";
      description = "Context of the commit statuses cc-ci posts.";
    };
  };

  settingsOptionTree = lib.foldl' lib.recursiveUpdate { } (
    lib.mapAttrsToList (
      key: option: lib.setAttrByPath (lib.splitString "." key) option
    ) settingsOptions
  );

  settingsFile = format.generate "cc-ci.toml" (
    lib.filterAttrsRecursive (_: value: value != null) cfg.settings
  );

  # The checker runs on the build machine: the deployed package itself when the build machine can
  # execute it, otherwise cc-ci built for the build platform from the same source (a package
  # from the flake is not spliced, so `nativeBuildInputs = [ cfg.package ]` would put the host's
  # binary on a cross build's PATH).
  checkConfigPackage =
    if pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform then
      cfg.package
    else
      pkgs.buildPackages.callPackage ./package.nix { };

  # The file the units use: validated at build time by the daemon's own parser, so a typo in a
  # key or a bad value fails `nixos-rebuild`, not the service at run time.
  configFile =
    if cfg.checkConfig then
      pkgs.runCommand "cc-ci-config.toml" { nativeBuildInputs = [ checkConfigPackage ]; } ''
        cc-ci check-config ${settingsFile}
        cp ${settingsFile} $out
      ''
    else
      settingsFile;

  # A work directory outside the state directory must be writable under ProtectSystem=strict.
  workDir = cfg.settings.harness.work_dir;
  extraWorkDir = workDir != null && !lib.hasPrefix "${statePath}/" "${workDir}/";
  # Places the sandbox hides (ProtectHome=), makes private per unit (PrivateTmp=) or that are
  # read-only: the daemon, its runs and the gc job would not share the directory.
  hiddenDirs = [
    "/tmp"
    "/var/tmp"
    "/home"
    "/root"
    "/run/user"
    builtins.storeDir
  ];
  workDirHidden = workDir != null && lib.any (d: lib.hasPrefix "${d}/" "${workDir}/") hiddenDirs;

  dockerPackage = config.virtualisation.docker.package;

  servicePath = [
    cfg.package
    pkgs.abra
    pkgs.git
    dockerPackage
    pkgs.coreutils
  ]
  ++ cfg.extraPackages;

  cancelGraceSecs =
    if cfg.settings.daemon.cancel_grace_secs != null then cfg.settings.daemon.cancel_grace_secs else 30;

  swarmUnits = lib.optional cfg.swarm.enable "cc-ci-swarm.service";

  # Shared by the daemon and the gc job: the same user and state directory. A static system
  # user rather than DynamicUser=, so that an operator can run `sudo -u cc-ci cc-ci queue ...`
  # on the daemon's database without leaving files the service could not write.
  sandbox = {
    User = "cc-ci";
    Group = "cc-ci";
    # The docker socket is root:docker 0660. Membership is root-equivalent on this host: see
    # docs/operator-guide.md. Without it cc-ci cannot deploy anything.
    SupplementaryGroups = [ "docker" ];
    StateDirectory = "cc-ci";
    StateDirectoryMode = "0700";
    UMask = "0077";

    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    # Keeps /dev/null and friends and the pseudo-terminal subsystem (/dev/ptmx, /dev/pts), which
    # abra needs: it refuses to run without a terminal.
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    NoNewPrivileges = true;
    RemoveIPC = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
    ];
    SystemCallErrorNumber = "EPERM";
    ReadWritePaths = lib.optional extraWorkDir workDir;

    # The daemon, its runs (cc-ci run, abra, git, the docker client) and the gc job share these;
    # the containers under test run in docker's cgroups, not here. See docs/nixos.md.
    MemoryMax = cfg.limits.memoryMax;
    TasksMax = cfg.limits.tasksMax;
    LimitNOFILE = cfg.limits.openFiles;

    # Relaxed: runs reach the forge and the apps under test over IP, and the docker engine over
    # its unix socket, so no PrivateNetwork= and no IPAddressDeny=. AF_NETLINK: glibc's
    # getaddrinfo asks the kernel which address families are configured.
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ];
    # Relaxed: no PrivateUsers=, which would unmap the docker group inside the service's user
    # namespace and so lose access to the docker socket.
  };

  environment = {
    # abra, git and the docker client keep dotfiles in $HOME.
    HOME = statePath;
  };

  # An absolute path outside the Nix store (which is world-readable), checked without reading
  # or copying anything. Not `types.externalPath`: that type accepts a path literal such as
  # `./token` in /etc/nixos, which the first string interpolation (`LoadCredential=`) would copy
  # into the store. Here a literal is turned into its string as it is (`apply`), so it never
  # is; a literal in a flake is already in the store and is refused.
  secretFileType = lib.mkOptionType {
    name = "cc-ci-secret-file";
    description = "absolute path outside the Nix store";
    descriptionClass = "noun";
    check =
      x:
      (builtins.isString x || builtins.isPath x)
      && lib.hasPrefix "/" (toString x)
      && !lib.hasPrefix "${builtins.storeDir}/" (toString x);
    merge = lib.options.mergeEqualOption;
  };
  asString = path: if path == null then null else toString path;

  backupBotDomainSuffix =
    if cfg.settings.harness.domain_suffix != null then cfg.settings.harness.domain_suffix else "ci.local";
  backupBotUnits = lib.optional cfg.backupBot.enable "cc-ci-backup-bot.service";
in
{
  options.services.cc-ci = {
    enable = lib.mkEnableOption "cc-ci, continuous integration for Co-op Cloud recipes (the `cc-ci serve` daemon, its socket and the gc timer)";

    package = lib.mkPackageOption pkgs "cc-ci" { };

    listen = mkOption {
      type = listenType;
      default = "127.0.0.1:8088";
      example = "/run/cc-ci/http.sock";
      description = ''
        Where the socket unit `cc-ci.socket` listens: `IPv4:port`, `[IPv6]:port` (`[::]:8088`
        for every address; port 1-65535) or the absolute path of a unix socket (mode 0660, group
        {option}`services.cc-ci.socketGroup`). Host names such as `localhost:8088` are refused.
        The daemon is started on the first connection. Also written to the config file as
        `daemon.listen`.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the TCP port of {option}`services.cc-ci.listen` in the firewall. Only for a non-loopback `IPv4:port` or `[IPv6]:port` listen address.";
    };

    socketGroup = mkOption {
      type = types.str;
      default = "cc-ci";
      example = "nginx";
      description = "Group that may connect to a unix-socket {option}`services.cc-ci.listen` (the socket is mode 0660, owned by root and this group): put a reverse proxy's group here. Created when missing. Unused with a TCP listen address.";
    };

    limits.memoryMax = mkOption {
      type = types.str;
      default = "4G";
      example = "8G";
      description = "`MemoryMax=` of the daemon and the gc job: the daemon, its runs (`cc-ci run`, abra, git, the docker client) together. Beyond it the OOM killer ends the biggest process in the unit, which fails that run (`OOMPolicy=continue` keeps the daemon going; a killed daemon restarts and re-queues its run). Containers under test are not counted (they run in docker's cgroups). Raise it with `settings.daemon.concurrency`.";
    };

    limits.tasksMax = mkOption {
      type = types.ints.positive;
      default = 1024;
      example = 4096;
      description = "`TasksMax=` (processes and threads) of the daemon and the gc job: a run forks abra, git and docker clients, which start threads of their own. Bounds a fork bomb from a recipe's repo-local scripts.";
    };

    limits.openFiles = mkOption {
      type = types.ints.positive;
      default = 8192;
      example = 65536;
      description = "`LimitNOFILE=` of the daemon and the gc job: connections, log followers, run logs and the sockets of the processes of every run. Keep it above the daemon's own connection and follower limits so that they answer 503 before the file table runs out.";
    };

    startAtBoot = mkOption {
      type = types.bool;
      default = cfg.settings.daemon.poll_interval_secs != null && cfg.settings.daemon.poll_interval_secs > 0;
      defaultText = literalExpression "config.services.cc-ci.settings.daemon.poll_interval_secs > 0";
      description = ''
        Start the daemon at boot rather than on the first connection to its socket. Polling
        needs a running daemon; so does resuming queued runs right after a reboot (otherwise
        they resume on the first request).
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = "Validate the generated config file at build time with `cc-ci check-config`, run on the build machine (in a cross build, cc-ci built for the build platform). Turn off only when cc-ci cannot be built or run there.";
    };

    extraPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = literalExpression "[ pkgs.curl ]";
      description = "Extra packages on the PATH of the daemon, its runs and the gc job.";
    };

    repoAllowlist = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "coop-cloud/traefik" ];
      description = "Repositories (`owner/name`) whose pull requests may be tested. `[]` denies every repository. Written as `forge.repo_allowlist`.";
    };

    orgAllowlist = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "coop-cloud" ];
      description = "Members of these forge organisations may trigger runs with `!testme`. `[]` trusts no organisation. Written as `forge.org_allowlist`.";
    };

    userAllowlist = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "alice" ];
      description = "These forge users may trigger runs with `!testme`. `[]` trusts no user by name. Written as `forge.user_allowlist`.";
    };

    repoLocalAllowlist = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "coop-cloud/traefik" ];
      description = ''
        Repositories (`owner/name`, not recipe names) whose own tests (the `.cc-ci/` folder of
        the recipe repository: an overlay and scripts) may run. That is code from a pull request
        running with docker access: list only repositories whose every committer you trust. `[]`
        denies all. Written as `harness.repo_local_allowlist`.
      '';
    };

    forge.tokenFile = mkOption {
      type = secretFileType;
      apply = asString;
      example = "/run/secrets/cc-ci-forge-token";
      description = ''
        File holding the forge API token (commit statuses, pull-request comments, membership
        look-ups). Loaded with `LoadCredential=` as `forge-token`, so it may stay readable by
        root only. Must not be in the Nix store.
      '';
    };

    forge.webhookSecretFile = mkOption {
      type = types.nullOr secretFileType;
      apply = asString;
      default = null;
      example = "/run/secrets/cc-ci-webhook-secret";
      description = ''
        File holding the webhook secret shared with Gitea/Forgejo. Loaded with `LoadCredential=`
        as `webhook-secret`. Must not be in the Nix store. `null`: no secret is configured, so
        the daemon cannot verify any delivery and triggers come only from polling.
      '';
    };

    swarm.enable = mkOption {
      type = types.bool;
      default = true;
      description = "Initialise a single-node Docker Swarm and the `proxy` overlay network recipes expect (unit `cc-ci-swarm.service`, idempotent). Turn off when the swarm is managed elsewhere.";
    };

    swarm.advertiseAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      example = "192.168.1.10";
      description = "`--advertise-addr` of `docker swarm init`. Required by docker when the host has several addresses; the loopback address suits a single-node swarm.";
    };

    backupBot.enable = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Deploy backup-bot-two on the swarm with abra (unit `cc-ci-backup-bot.service`, after
        the swarm is initialised; idempotent). cc-ci's backup and restore tiers need it: without
        a backup-bot-two service on the swarm they end as an infrastructure `error` (exit 3),
        never as a recipe failure. Fetches the recipe from the recipe catalogue and its image from
        its registry, so the host needs network access.
      '';
    };

    backupBot.recipe = mkOption {
      type = types.str;
      default = "backup-bot-two";
      example = "backup-bot-two";
      description = "The recipe abra deploys as backup-bot-two: a name from the Co-op Cloud catalogue, as `abra app new` takes it.";
    };

    backupBot.version = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "2.4.0+2.4.0";
      description = "Release of {option}`services.cc-ci.backupBot.recipe` to deploy. `null`: the newest release when the app is first created; a later change of this option redeploys at the new version.";
    };

    backupBot.domain = mkOption {
      type = types.str;
      default = "backup-bot-two.${backupBotDomainSuffix}";
      defaultText = literalExpression ''"backup-bot-two.''${config.services.cc-ci.settings.harness.domain_suffix}"'';
      example = "backups.ci.example.org";
      description = "Domain of the backup-bot-two app in abra (it serves nothing; abra names apps by domain). Its stack is never mistaken for a run's by `cc-ci gc`.";
    };

    gc.enable = mkOption {
      type = types.bool;
      default = true;
      description = "Run `cc-ci gc` on a timer: it tears down what runs that died left on the swarm (a live run is never touched).";
    };

    gc.dates = mkOption {
      type = types.str;
      default = "hourly";
      example = "*:0/15";
      description = "When `cc-ci gc` runs, as a systemd calendar event (`systemd.time(7)`).";
    };

    settings = mkOption {
      type = types.submodule {
        freeformType = unknownSettingsKey;
        options = settingsOptionTree;
      };
      default = { };
      example = literalExpression ''
        {
          harness.domain_suffix = "ci.example.org";
          daemon.public_url = "https://ci.example.org";
          forge.url = "https://git.coopcloud.tech";
        }
      '';
      description = ''
        The cc-ci config file (TOML), see docs/config.md. Every key is a typed option below;
        a key cc-ci does not know fails evaluation, naming the key and never its value (so a
        secret typed here by mistake reaches neither the Nix store nor the error). Keys left
        `null` take cc-ci's built-in default.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.openFirewall -> !isUnixSocket;
        message = "services.cc-ci.openFirewall needs an IP:port listen address, not the unix socket ${cfg.listen}.";
      }
      {
        assertion = cfg.openFirewall -> !isLoopbackListen;
        message = "services.cc-ci.openFirewall is set, but services.cc-ci.listen = ${cfg.listen} is a loopback address no other host can reach: listen on a routable address (e.g. [::]:8088) or drop openFirewall.";
      }
      {
        assertion = workDir == null || lib.hasPrefix "/" workDir;
        message = "services.cc-ci.settings.harness.work_dir must be an absolute path, not ${toString workDir}.";
      }
      {
        assertion = !workDirHidden;
        message = "services.cc-ci.settings.harness.work_dir = ${toString workDir} is hidden, private or read-only in the service's sandbox (${lib.concatStringsSep ", " hiddenDirs}): keep it unset (/var/lib/cc-ci/work) or use a directory such as /srv/cc-ci.";
      }
      {
        assertion = !config.virtualisation.docker.liveRestore;
        message = "services.cc-ci needs Docker Swarm, which dockerd refuses while live-restore is on: set virtualisation.docker.liveRestore = false.";
      }
    ];

    warnings =
      lib.optional
        (
          cfg.forge.webhookSecretFile == null
          && (cfg.settings.daemon.poll_interval_secs == null || cfg.settings.daemon.poll_interval_secs == 0)
        )
        "services.cc-ci: no webhook secret and no polling (settings.daemon.poll_interval_secs) are configured, so nothing can trigger a run.";

    # Not in the docker group: only the units get it (SupplementaryGroups=), not a login as
    # cc-ci.
    users.users.cc-ci = {
      isSystemUser = true;
      group = "cc-ci";
      home = statePath;
      description = "cc-ci daemon";
    };
    # The socket's group too, when a unix socket is used (it may be the same group).
    users.groups = lib.genAttrs (lib.unique (
      [ "cc-ci" ] ++ lib.optional isUnixSocket cfg.socketGroup
    )) (_: { });

    systemd.tmpfiles.rules = lib.optional extraWorkDir "d ${workDir} 0700 cc-ci cc-ci -";

    virtualisation.docker.enable = true;
    virtualisation.docker.liveRestore = lib.mkDefault false;

    environment.systemPackages = [ cfg.package ];
    # So that `cc-ci queue --config /etc/cc-ci/config.toml` and friends read what the daemon reads.
    environment.etc."cc-ci/config.toml".source = configFile;

    networking.firewall.allowedTCPPorts = lib.optional (cfg.openFirewall && !isUnixSocket) listenPort;

    systemd.sockets.cc-ci = {
      description = "cc-ci webhook and API socket";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ cfg.listen ];
      # The daemon gets the socket as a file descriptor; only the path's permissions decide who
      # may connect (the default would be 0666: everyone on the host).
      socketConfig = lib.mkIf isUnixSocket {
        SocketUser = "root";
        SocketGroup = cfg.socketGroup;
        SocketMode = "0660";
      };
    };

    systemd.services.cc-ci = {
      description = "cc-ci daemon: tests Co-op Cloud recipes on !testme";
      requires = [
        "cc-ci.socket"
        "docker.service"
      ]
      ++ swarmUnits;
      after = [
        "cc-ci.socket"
        "docker.service"
        "network-online.target"
      ]
      ++ swarmUnits
      ++ backupBotUnits;
      # Wanted, not required: without backup-bot-two the daemon still runs, and its backup and
      # restore tiers report the missing service as an infrastructure error.
      wants = [ "network-online.target" ] ++ backupBotUnits;
      wantedBy = lib.optional cfg.startAtBoot "multi-user.target";
      path = servicePath;
      inherit environment;
      serviceConfig = sandbox // {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${lib.getExe cfg.package} serve --config ${configFile}";
        WatchdogSec = "60s";
        Restart = "on-failure";
        # An OOM kill under MemoryMax= (usually a run's abra) fails that run, not the daemon
        # and its other runs; systemd's default policy would stop the whole unit.
        OOMPolicy = "continue";
        RestartSec = "5s";
        # SIGTERM goes to the daemon only: it stops taking runs, gives the running run its grace
        # period, then cancels it (another grace period) and tears it down (docs/daemon.md).
        # Whatever is left after TimeoutStopSec is killed.
        KillMode = "mixed";
        TimeoutStopSec = "${toString (2 * cancelGraceSecs + 300)}s";
        LoadCredential = [
          "forge-token:${cfg.forge.tokenFile}"
        ]
        ++ lib.optional (cfg.forge.webhookSecretFile != null) "webhook-secret:${cfg.forge.webhookSecretFile}";
      };
    };

    systemd.services.cc-ci-gc = {
      description = "cc-ci gc: tear down what dead runs left on the swarm";
      requires = [ "docker.service" ] ++ swarmUnits;
      after = [ "docker.service" ] ++ swarmUnits;
      path = servicePath;
      inherit environment;
      serviceConfig = sandbox // {
        Type = "oneshot";
        ExecStart = "${lib.getExe cfg.package} gc --config ${configFile}";
      };
    };

    systemd.timers.cc-ci-gc = lib.mkIf cfg.gc.enable {
      description = "Timer of cc-ci gc";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.gc.dates;
        Persistent = true;
        RandomizedDelaySec = "5min";
      };
    };

    # backup-bot-two as its own app in an abra directory of its own. Spellings of abra used here:
    # `server add --local`, `app new`, `app secret generate -a`, `app deploy <domain> [version]`
    # with `-n`, `-f` and `-D` (see ../shared/reference: the deploy flags are confirmed, the others
    # are the documented ones).
    systemd.services.cc-ci-backup-bot = lib.mkIf cfg.backupBot.enable {
      description = "backup-bot-two on the swarm, for cc-ci's backup and restore tiers";
      requires = [ "docker.service" ] ++ swarmUnits;
      after = [
        "docker.service"
        "network-online.target"
      ]
      ++ swarmUnits;
      wants = [ "network-online.target" ];
      wantedBy = [ "multi-user.target" ];
      # util-linux for script(1): abra refuses to run without a terminal, even with -n.
      path = [
        pkgs.abra
        pkgs.git
        dockerPackage
        pkgs.util-linux
        pkgs.coreutils
      ];
      environment.HOME = "/var/lib/cc-ci-backup-bot";
      serviceConfig = sandbox // {
        Type = "oneshot";
        RemainAfterExit = true;
        StateDirectory = "cc-ci-backup-bot";
        # A deadline for the recipe fetch, the image pull and abra's convergence wait.
        TimeoutStartSec = "15min";
      };
      script = ''
        set -euo pipefail
        export ABRA_DIR="$STATE_DIRECTORY/abra"
        abra_bin=${lib.escapeShellArg cfg.settings.harness.abra}
        recipe=${lib.escapeShellArg cfg.backupBot.recipe}
        version=${lib.escapeShellArg (if cfg.backupBot.version == null then "" else cfg.backupBot.version)}
        domain=${lib.escapeShellArg cfg.backupBot.domain}
        stack=''${domain//./_}

        # abra in a pseudo-terminal; its exit status is script's.
        abra() {
          script --quiet --return --command "$(printf '%q ' "$abra_bin" "$@")" /dev/null
        }

        if [ ! -d "$ABRA_DIR/servers/default" ]; then
          abra server add --local
        fi
        if [ ! -e "$ABRA_DIR/servers/default/$domain.env" ]; then
          abra app new "$recipe" --server default --domain "$domain" -n
          # Its output lists the generated secrets: keep them out of the journal.
          abra app secret generate -a "$domain" -n >/dev/null
        fi

        label="coop-cloud.$stack.version"
        current=$(docker service inspect --format "{{ index .Spec.Labels \"$label\" }}" "''${stack}_app" 2>/dev/null || true)
        if [ -n "$current" ] && { [ -z "$version" ] || [ "$current" = "$version" ]; }; then
          echo "backup-bot-two: $domain runs $current"
          exit 0
        fi
        args=(app deploy "$domain")
        if [ -n "$version" ]; then args+=("$version"); fi
        # Moving a deployed app to another release needs --force.
        if [ -n "$current" ]; then args+=(--force); fi
        abra "''${args[@]}" -n --no-domain-checks
        echo "backup-bot-two: $domain deployed (''${version:-newest release})"
      '';
    };

    systemd.services.cc-ci-swarm = lib.mkIf cfg.swarm.enable {
      description = "Single-node Docker Swarm and the proxy network for cc-ci";
      requires = [ "docker.service" ];
      after = [ "docker.service" ];
      wantedBy = [ "multi-user.target" ];
      path = [ dockerPackage ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      script = ''
        state=$(docker info --format '{{.Swarm.LocalNodeState}}')
        case "$state" in
          active) echo "swarm: already active" ;;
          inactive)
            docker swarm init --advertise-addr ${lib.escapeShellArg cfg.swarm.advertiseAddress} >/dev/null
            echo "swarm: initialised (advertise address ${cfg.swarm.advertiseAddress})"
            ;;
          *)
            echo "swarm is in state '$state'; repair it by hand (e.g. docker swarm leave --force) and restart cc-ci-swarm.service" >&2
            exit 1
            ;;
        esac
        if driver=$(docker network inspect --format '{{.Driver}}/{{.Scope}}' proxy 2>/dev/null); then
          if [ "$driver" != overlay/swarm ]; then
            echo "a network 'proxy' exists but is $driver, not a swarm overlay; remove it (docker network rm proxy) and restart cc-ci-swarm.service" >&2
            exit 1
          fi
          echo "network proxy: present"
        else
          docker network create --driver overlay --attachable proxy >/dev/null
          echo "network proxy: created"
        fi
      '';
    };
  };
}
