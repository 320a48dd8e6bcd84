# The `cc-ci` command (run, serve, gc, ...). Only the `cc-ci` package of the workspace is built and
# installed: `abra-standin` is test support and must never reach an operator's PATH.
{
  lib,
  rustPlatform,
  makeWrapper,
  abra,
  git,
  docker-client,
}:
let
  fs = lib.fileset;
  # Only what cargo reads, the overlays shipped with cc-ci (their `.toml` files), and what the
  # harness's tier unit tests build their fixture recipes from (fixture trees are taken whole:
  # a fixture's files are committed as they are): editing docs/, nixos/, other tests or any
  # other Markdown file (overlays/README.md included) does not rebuild.
  src = fs.toSource {
    root = ../.;
    fileset = fs.unions [
      (fs.difference (fs.unions [
        ../Cargo.toml
        ../Cargo.lock
        ../crates
        (fs.fileFilter (file: file.hasExt "toml") ../overlays)
      ]) (fs.fileFilter (file: file.hasExt "md") ../.))
      ../scripts/make-fixture-repo
      ../tests/fixtures/recipes
    ];
  };
  workspace = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "cc-ci";
  inherit (workspace.workspace.package) version;
  inherit src;

  cargoLock.lockFile = ../Cargo.lock;

  # Which source this build is (the hash part of its store path): recorded in every result's
  # inputs as part of cc-ci's version, so a new build of the same version makes results stale
  # (crates/harness/src/inputs.rs, `cc_ci_version`).
  CC_CI_REVISION = "src-" + builtins.substring 11 12 (toString src);

  # `-p cc-ci` builds the binary and the libraries it links (harness, daemon, envfile,
  # engine-api); the install hook copies every executable of the build directory, so
  # abra-standin must not be built at all.
  cargoBuildFlags = [
    "-p"
    "cc-ci"
  ];

  # The unit tests only, the tier tests over the in-memory swarm and abra included (they build
  # fixture recipes with git). The integration tests under crates/*/tests need a Docker Swarm and
  # are run by scripts/setup-swarm + `cargo test` in CI, and end to end by the NixOS VM tests.
  nativeCheckInputs = [ git ];
  cargoTestFlags = [
    "-p"
    "cc-ci-harness"
    "-p"
    "cc-ci-daemon"
    "--lib"
  ];

  nativeBuildInputs = [ makeWrapper ];

  # The shipped overlays go where the binary looks for them: <prefix>/share/cc-ci/overlays.
  postInstall = ''
    if [ -d overlays ]; then
      mkdir -p $out/share/cc-ci
      cp -r overlays $out/share/cc-ci/overlays
    fi
    # `nix run .#cc-ci -- run ...` works without anything installed: abra, git and the docker CLI
    # are appended to PATH, so an operator's own versions on PATH still win. (No script(1): cc-ci
    # opens abra's pseudo-terminal itself.)
    wrapProgram $out/bin/cc-ci --suffix PATH : ${
      lib.makeBinPath [
        abra
        git
        docker-client
      ]
    }
  '';

  meta = {
    description = "Continuous integration for Co-op Cloud recipes: install, upgrade, backup and restore on Docker Swarm";
    license = lib.licenses.agpl3Plus;
    mainProgram = "cc-ci";
    platforms = lib.platforms.linux;
  };
}
