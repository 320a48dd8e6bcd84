# `cc-ci run` end to end on a NixOS host configured by the module: real abra from nixpkgs, a real
# single-node swarm, the fixture recipe `web` (two releases and a head) on locally built images.
#
# What the backup subtest needs, honestly: real abra backs up through backup-bot-two, a service
# deployed on the swarm from its own recipe and image. Neither can be fetched inside the VM (no
# network), so this test does not deploy it. It proves what holds offline: the backup tier is
# attempted on the one deployment, abra's failure is reported as a failed tier (never a silent pass),
# restore does not claim a pass without a backup, and teardown still leaves nothing behind. A
# passing backup and restore are covered by the integration tests on the stand-in, which
# implements backup-bot-two's label semantics, and on a real host where backup-bot-two runs.
{ pkgs, self }:
pkgs.testers.runNixOSTest {
  name = "cc-ci-harness";

  nodes.machine = {
    imports = [ (import ./lib/node.nix { inherit self; }) ];
    # Runs here come from the command line only.
    services.cc-ci.gc.enable = false;
  };

  testScript = ''
    import shlex

    CONFIG = "/etc/cc-ci/config.toml"
    RECIPE = "/root/recipes/web"


    def expect(report: str, expr: str) -> None:
        """Fail, showing run.json, unless the jq expression holds for it."""
        status, _ = machine.execute(f"jq -e {shlex.quote(expr)} {report}/run.json")
        if status != 0:
            _, shown = machine.execute(f"cat {report}/run.json; ls -R {report}")
            raise AssertionError(f"{report}/run.json does not satisfy `{expr}`:\n{shown}")


    def run(stages: str, report: str) -> int:
        status, out = machine.execute(
            f"cc-ci run --config {CONFIG} --recipe {RECIPE} --stages {stages}"
            f" --report-dir {report} 2>&1"
        )
        print(out)
        return status


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

    with subtest("backup and restore without backup-bot-two"):
        status = run("install,backup,restore", "/tmp/backup")
        assert status == 1, f"expected a failed run (exit 1), got exit {status}"
        expect("/tmp/backup", '.deploy_count == 1 and .verdict == "fail"')
        expect("/tmp/backup", '[.tiers[] | select(.name == "install") | .verdict] == ["pass"]')
        expect("/tmp/backup", '[.tiers[] | select(.name == "backup") | .verdict] == ["fail"]')
        # It failed where it should: abra could not back up (no backup-bot-two on the swarm).
        expect(
            "/tmp/backup",
            '[.tiers[] | select(.name == "backup") | .checks[] | select(.name == "backup-create")'
            ' | .verdict] == ["fail"]',
        )
        expect("/tmp/backup", '[.tiers[] | select(.name == "restore") | .verdict] | all(. != "pass")')
        expect("/tmp/backup", '(.teardown.leftovers | length) == 0')
        swarm_is_clean()
  '';
}
