# The CI host of the VM tests: services.cc-ci enabled as an operator would, a single-node swarm,
# the fixture images and the tools the test scripts use. Sized for Docker.
{ self }:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  fixtureImages = import ./fixture-images.nix { inherit pkgs; };

  # scripts/make-fixture-repo and the fixture trees it turns into recipe repositories. The
  # fixture directory's basename is the recipe name, so the trees keep their names under one
  # store path.
  makeFixtureRepo = pkgs.writeShellScriptBin "make-fixture-repo" ''
    exec ${pkgs.bash}/bin/bash ${../../../scripts/make-fixture-repo} "$@"
  '';
  fixtureRecipes = builtins.path {
    path = ../../fixtures/recipes;
    name = "cc-ci-fixture-recipes";
  };

  # Writes a fixture's repository to <dir>/<name> (from a writable copy: make-fixture-repo keeps
  # file modes, and the store's are read-only).
  makeRecipe = pkgs.writeShellScriptBin "cc-ci-test-recipe" ''
    set -euo pipefail
    name=$1 dir=$2
    work=$(mktemp -d)
    cp -r ${fixtureRecipes}/"$name" "$work/$name"
    chmod -R u+w "$work"
    mkdir -p "$dir"
    make-fixture-repo "$work/$name" "$dir/$name"
    rm -rf "$work"
  '';

  loadImages = pkgs.writeShellScriptBin "cc-ci-test-load-images" ''
    set -euo pipefail
    ${fixtureImages.loadScript}
  '';
in
{
  imports = [ self.nixosModules.cc-ci ];

  system.stateVersion = lib.mkDefault "26.05";

  virtualisation = {
    memorySize = 4096;
    diskSize = 10240;
    cores = 2;
  };

  services.cc-ci = {
    enable = true;
    forge.tokenFile = "/run/keys/cc-ci-forge-token";
    forge.webhookSecretFile = "/run/keys/cc-ci-webhook-secret";
    settings.harness.domain_suffix = "ci.test";
  };

  # The secrets are written at boot, so they are in no store path the module sees. Test values.
  systemd.tmpfiles.rules = [
    "d /run/keys 0750 root root -"
    "f+ /run/keys/cc-ci-forge-token 0400 root root - test-forge-token"
    "f+ /run/keys/cc-ci-webhook-secret 0400 root root - test-webhook-secret"
  ];

  environment.systemPackages = [
    pkgs.curl
    pkgs.git
    pkgs.jq
    pkgs.openssl
    makeFixtureRepo
    makeRecipe
    loadImages
  ];

  # Strictness: any evaluation warning (an undocumented or deprecated option, a module
  # complaint about the configuration) fails the test instead of scrolling past.
  assertions = [
    {
      assertion = config.warnings == [ ];
      message = "the test node evaluates with warnings: ${lib.concatStringsSep "; " config.warnings}";
    }
  ];
}
