{
  description = "cc-ci: continuous integration for Co-op Cloud recipes on Docker Swarm";

  # nixpkgs is the only input; the revision is pinned in flake.lock (see docs/nixos.md).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: _prev: { cc-ci = final.callPackage ./nixos/package.nix { }; };

      packages = forAllSystems (pkgs: {
        cc-ci = pkgs.callPackage ./nixos/package.nix { };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.cc-ci;
      });

      apps = forAllSystems (
        pkgs:
        let
          app = {
            type = "app";
            program = lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.cc-ci;
            meta.description = "The cc-ci command: run, serve, gc, queue, logs, cancel, check-config";
          };
        in
        {
          cc-ci = app;
          default = app;
        }
      );

      nixosModules = {
        cc-ci = {
          # One identity for both names: the module system imports a module once per key, so a
          # configuration importing nixosModules.default and nixosModules.cc-ci (directly or
          # through two other modules) gets it once instead of "defined multiple times".
          key = "${toString ./.}/flake.nix#nixosModules.cc-ci";
          _file = "${toString ./.}/flake.nix#nixosModules.cc-ci";
          imports = [
            ./nixos/module.nix
            (
              { pkgs, ... }:
              {
                # The package built against this flake's pinned nixpkgs (the toolchain it is
                # tested with); on another platform, against the host's nixpkgs.
                services.cc-ci.package = lib.mkDefault (
                  self.packages.${pkgs.stdenv.hostPlatform.system}.cc-ci
                    or (pkgs.callPackage ./nixos/package.nix { })
                );
              }
            )
          ];
        };
        default = self.nixosModules.cc-ci;
      };

      checks = forAllSystems (pkgs: import ./nixos/checks.nix { inherit pkgs self; });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.cc-ci ];
          packages = [
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.abra
            pkgs.docker-client
            pkgs.git
            pkgs.jq
            pkgs.sqlite
            pkgs.nixfmt
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-tree);
    };
}
