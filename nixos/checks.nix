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
  evalNode =
    extra:
    pkgs.nixos {
      imports = [
        self.nixosModules.cc-ci
        extra
      ];
      boot.loader.grub.enable = false;
      fileSystems."/" = {
        device = "none";
        fsType = "tmpfs";
      };
      system.stateVersion = "26.05";
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
    services.cc-ci = {
      enable = true;
      forge.tokenFile = "/run/keys/forge-token";
      listen = "/run/cc-ci/http.sock";
      openFirewall = true;
    };
  };
  liveRestore = evalNode {
    services.cc-ci = {
      enable = true;
      forge.tokenFile = "/run/keys/forge-token";
    };
    virtualisation.docker.liveRestore = true;
  };

  moduleEval =
    assert lib.assertMsg (ourFailedAssertions good == [ ]) (
      "a valid configuration fails: " + lib.concatStringsSep "; " (ourFailedAssertions good)
    );
    assert refuses "a forge token in the Nix store" storeSecret "forge.tokenFile";
    assert refuses "openFirewall with a unix socket" unixFirewall "openFirewall";
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
