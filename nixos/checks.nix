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
}
// vmTests
