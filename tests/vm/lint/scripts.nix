# Every VM test of tests/vm/ with its name, node names and testScript, evaluated with plain Nix and
# no nixpkgs: `pkgs` is a stub whose `testers.runNixOSTest` returns the test's own attribute set,
# and only the attributes below are forced (not the nodes' configurations). scripts/check-nix
# lints the scripts with this, as the NixOS test driver does when it builds a test.
let
  dir = ../.;
  entries = builtins.readDir dir;
  files = builtins.filter (
    f: entries.${f} == "regular" && builtins.match ".*\\.nix" f != null
  ) (builtins.attrNames entries);
  stubPkgs = {
    testers.runNixOSTest = test: test;
  };
  load =
    file:
    let
      test = import (dir + "/${file}") {
        pkgs = stubPkgs;
        self = { };
      };
    in
    {
      inherit (test) name;
      nodes = builtins.attrNames (test.nodes or { });
      testScript =
        if builtins.isString test.testScript then
          test.testScript
        else
          throw "tests/vm/${file}: testScript is not a plain string; extend tests/vm/lint/scripts.nix to lint it";
    };
in
map (file: { inherit file; } // load file) files
