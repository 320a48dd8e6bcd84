# `cc-ci run` end to end on a NixOS host configured by the module: real abra from nixpkgs, a real
# single-node swarm, the fixture recipe `web` (two releases and a head) on locally built images.
#
# The backup subtest runs with services.cc-ci.backupBot.enable off (its default), and expects what
# an operator sees on such a host: the install passes, backup and restore are an infrastructure
# `error` naming backup-bot-two (exit 3, never a failed recipe), and teardown leaves nothing.
#
# Why no passing backup here: with backupBot.enable, the module's unit runs abra, which clones the
# backup-bot-two recipe from the Co-op Cloud catalogue and deploys its image from its registry.
# The VM has no network. Feeding both in offline would need the recipe (fetchgit) and the image
# (dockerTools.pullImage) pinned by hashes that can only be taken on a machine with network
# access, plus abra's catalogue; none of that can be produced or checked where this test was
# written, and an unverified hash fails the build. A passing backup and restore are covered by the
# end-to-end tests on the abra stand-in (which deploys its own backup-bot stand-in) and on a real
# host with backupBot.enable; the unit the option generates is checked by the flake's module-eval.
{ pkgs, self }:
pkgs.testers.runNixOSTest {
  name = "cc-ci-harness";

  nodes.machine = {
    imports = [ (import ./lib/node.nix { inherit self; }) ];
    # Runs here come from the command line only.
    services.cc-ci.gc.enable = false;
    # Deadlines of cc-ci's own that fit the driver's RUN_TIMEOUT in the test script.
    services.cc-ci.settings.harness.abra_timeout_secs = 300;
    services.cc-ci.settings.harness.converge_timeout_secs = 180;
  };

  testScript = ''
    import shlex

    CONFIG = "/etc/cc-ci/config.toml"
    RECIPE = "/root/recipes/web"
    # Deadline of one `cc-ci run` by the driver. The driver's default for execute() is 900 s,
    # shorter than what a healthy run may take on a 2-core VM (several abra calls, each with
    # cc-ci's own deadline of harness.abra_timeout_secs, set to 300 in this node, plus convergence
    # waits of harness.converge_timeout_secs, 180). 1800 s leaves cc-ci time to hit and report its
    # own deadlines first, and still fails a hung run well inside the test's global timeout.
    RUN_TIMEOUT = 1800


    def expect(report: str, expr: str) -> None:
        """Fail, showing run.json, unless the jq expression holds for it."""
        status, _ = machine.execute(f"jq -e {shlex.quote(expr)} {report}/run.json")
        if status != 0:
            _, shown = machine.execute(f"cat {report}/run.json; ls -R {report}")
            raise AssertionError(f"{report}/run.json does not satisfy `{expr}`:\n{shown}")


    def run(stages: str, report: str) -> int:
        status, out = run_output(stages, report)
        return status


    def run_output(stages: str, report: str) -> tuple[int, str]:
        status, out = machine.execute(
            f"cc-ci run --config {CONFIG} --recipe {RECIPE} --stages {stages}"
            f" --report-dir {report} 2>&1",
            timeout=RUN_TIMEOUT,
        )
        print(out)
        return status, out


    def swarm_is_clean() -> None:
        # Every object a run creates carries its stack's namespace label; only `proxy` and the
        # swarm's own networks may remain.
        machine.succeed("test -z \"$(docker service ls -q)\"")
        machine.succeed("test -z \"$(docker secret ls -q)\"")
        machine.succeed("test -z \"$(docker config ls -q)\"")
        machine.succeed("test -z \"$(docker volume ls -q --filter label=com.docker.stack.namespace)\"")
        machine.succeed("test -z \"$(docker network ls -q --filter label=com.docker.stack.namespace)\"")


    machine.wait_for_unit("cc-ci-swarm.service")
    machine.succeed("docker info --format '{{.Swarm.LocalNodeState}}' | grep -qx active")
    machine.succeed("docker network inspect --format '{{.Driver}}/{{.Scope}}' proxy | grep -qx overlay/swarm")
    machine.succeed("cc-ci-test-load-images")
    machine.succeed("cc-ci-test-recipe web /root/recipes")
    head = machine.succeed(f"git -C {RECIPE} rev-parse HEAD").strip()

    with subtest("the config the module generated passes check-config"):
        machine.succeed(f"cc-ci check-config {CONFIG}")

    with subtest("the swarm unit is idempotent"):
        machine.succeed("systemctl restart cc-ci-swarm.service")
        machine.succeed("docker network ls --filter name=^proxy$ -q | wc -l | grep -qx 1")

    with subtest("install"):
        assert run("install", "/tmp/install") == 0, "cc-ci run --stages install failed"
        expect("/tmp/install", '.verdict == "pass" and .deploy_count == 1')
        expect("/tmp/install", f'.head_sha == "{head}"')
        expect("/tmp/install", '[.tiers[] | select(.name == "install") | .verdict] == ["pass"]')
        expect("/tmp/install", '.teardown.verdict == "pass" and (.teardown.leftovers | length) == 0')
        swarm_is_clean()

    with subtest("upgrade"):
        assert run("install,upgrade", "/tmp/upgrade") == 0, "cc-ci run --stages install,upgrade failed"
        expect("/tmp/upgrade", '.verdict == "pass" and .deploy_count == 1')
        # The base is the newest release older than the head.
        expect("/tmp/upgrade", '.base_version == "1.1.0+1.1"')
        expect("/tmp/upgrade", '[.tiers[] | select(.name == "upgrade") | .verdict] == ["pass"]')
        expect("/tmp/upgrade", '(.teardown.leftovers | length) == 0')
        swarm_is_clean()

    with subtest("backup and restore without backup-bot-two are an infrastructure error"):
        machine.fail("systemctl cat cc-ci-backup-bot.service")
        status, out = run_output("install,backup,restore", "/tmp/backup")
        assert status == 3, f"expected an infrastructure error (exit 3), got exit {status}"
        assert "backup-bot-two" in out, "the run's output does not name backup-bot-two"
        expect("/tmp/backup", '.deploy_count == 1')
        expect("/tmp/backup", '[.tiers[] | select(.name == "install") | .verdict] == ["pass"]')
        # Never blamed on the recipe: both tiers are `error`, not `fail`.
        expect("/tmp/backup", '[.tiers[] | select(.name == "backup") | .verdict] == ["error"]')
        expect("/tmp/backup", '[.tiers[] | select(.name == "restore") | .verdict] == ["error"]')
        machine.succeed("grep -q backup-bot-two /tmp/backup/run.json")
        expect("/tmp/backup", '(.teardown.leftovers | length) == 0')
        swarm_is_clean()
  '';
}
