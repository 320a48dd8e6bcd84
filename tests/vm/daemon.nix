# `cc-ci serve` as the module runs it: socket activation, webhook signature checking, and a signed
# `!testme` comment against a Gitea double that becomes a run (real abra, real swarm, the
# service's sandbox) with a pending and a final commit status and a pull-request comment.
{ pkgs, self }:
let
  port = 3000;
  owner = "coop-cloud";
  recipe = "web";
  reposRoot = "/var/lib/gitea-double/repos";
in
pkgs.testers.runNixOSTest {
  name = "cc-ci-daemon";

  nodes.machine = {
    imports = [ (import ./lib/node.nix { inherit self; }) ];

    services.cc-ci = {
      listen = "127.0.0.1:8088";
      repoAllowlist = [ "${owner}/${recipe}" ];
      orgAllowlist = [ owner ];
      settings.forge.url = "http://127.0.0.1:${toString port}";
    };

    # Started by the test script once the repository it serves exists.
    systemd.services.gitea-double = {
      description = "Gitea double for the cc-ci daemon test";
      path = [ pkgs.git ];
      serviceConfig.ExecStart = "${pkgs.python3.interpreter} ${./lib/gitea-double.py} ${reposRoot} ${toString port} /run/keys/cc-ci-forge-token ${owner}/alice";
    };
  };

  testScript = ''
    import json
    import shlex

    SECRET = "test-webhook-secret"
    HOOK = "http://127.0.0.1:8088/hooks/gitea"
    DOUBLE = "http://127.0.0.1:${toString port}"


    def payload(comment_id: int, body: str, user: str) -> str:
        base = f"{DOUBLE}/${owner}/${recipe}"
        repo = {
            "id": 1,
            "name": "${recipe}",
            "full_name": "${owner}/${recipe}",
            "owner": {"login": "${owner}"},
            "clone_url": f"{base}.git",
            "html_url": base,
        }
        return json.dumps(
            {
                "action": "created",
                "is_pull": True,
                "issue": {
                    "number": 1,
                    "title": "Bump the web image",
                    "pull_request": {"merged": False},
                    "user": {"login": user},
                },
                "comment": {
                    "id": comment_id,
                    "body": body,
                    "user": {"login": user},
                    "html_url": f"{base}/pulls/1#issuecomment-{comment_id}",
                },
                "repository": repo,
                "sender": {"login": user},
            },
            indent=2,
        )


    def deliver(body: str, delivery: str, signature: str | None) -> str:
        """POST a delivery as Gitea does; returns the HTTP status code."""
        machine.succeed(f"cat > /tmp/{delivery}.json <<'EOF'\n{body}\nEOF")
        if signature is None:
            signature = machine.succeed(
                f"openssl dgst -sha256 -hmac {shlex.quote(SECRET)} -hex < /tmp/{delivery}.json"
                " | sed 's/^.*= //'"
            ).strip()
        return machine.succeed(
            "curl -s -o /dev/null -w '%{http_code}' -X POST"
            " -H 'Content-Type: application/json'"
            " -H 'X-Gitea-Event: issue_comment'"
            " -H 'X-Gitea-Event-Type: pull_request_comment'"
            f" -H 'X-Gitea-Delivery: {delivery}'"
            f" -H 'X-Gitea-Signature: {signature}'"
            f" --data-binary @/tmp/{delivery}.json {HOOK}"
        ).strip()


    def statuses() -> list:
        return json.loads(machine.succeed(f"curl -fsS {DOUBLE}/_double/statuses"))


    machine.wait_for_unit("sockets.target")
    machine.wait_for_unit("cc-ci-swarm.service")
    machine.succeed("cc-ci-test-load-images")

    # The recipe as the forge holds it: a bare repository, the pull request's hidden head ref,
    # and the files git's dumb HTTP protocol needs.
    machine.succeed(
        "cc-ci-test-recipe ${recipe} /root/work",
        "mkdir -p ${reposRoot}/${owner}",
        "git clone -q --bare /root/work/${recipe} ${reposRoot}/${owner}/${recipe}.git",
        "git -C ${reposRoot}/${owner}/${recipe}.git update-ref refs/pull/1/head refs/heads/main",
        "git -C ${reposRoot}/${owner}/${recipe}.git update-server-info",
    )
    head = machine.succeed("git -C /root/work/${recipe} rev-parse HEAD").strip()
    machine.systemctl("start gitea-double.service")
    machine.wait_for_open_port(${toString port})

    with subtest("the socket starts the daemon on the first request"):
        machine.fail("systemctl is-active cc-ci.service")
        machine.succeed("curl -fsS http://127.0.0.1:8088/healthz")
        machine.wait_for_unit("cc-ci.service")
        machine.succeed("systemctl is-active cc-ci.service")

    with subtest("a badly signed or unsigned delivery is refused"):
        trigger = payload(501, "!testme install", "alice")
        for delivery, signature in [("bad-sig", "0" * 64), ("no-sig", "")]:
            code = deliver(trigger, delivery, signature)
            assert code.startswith("4"), f"{delivery}: expected a 4xx, got {code}"
        assert statuses() == [], f"a refused delivery reached the forge: {statuses()}"

    with subtest("a signed !testme becomes a run with statuses and a comment"):
        code = deliver(payload(502, "!testme install", "alice"), "good", None)
        assert code.startswith("2"), f"a signed !testme got {code}"
        machine.wait_until_succeeds(
            f"curl -fsS {DOUBLE}/_double/statuses"
            f" | jq -e 'any(.[]; .state == \"pending\" and .sha == \"{head}\")'",
            timeout=120,
        )
        machine.wait_until_succeeds(
            f"curl -fsS {DOUBLE}/_double/statuses"
            " | jq -e 'any(.[]; .state != \"pending\")'",
            timeout=900,
        )
        final = [s for s in statuses() if s["state"] != "pending"]
        assert [s["state"] for s in final] == ["success"], f"final statuses: {final}"
        assert all(s["context"] == "cc-ci/testme" for s in statuses()), statuses()
        comments = json.loads(machine.succeed(f"curl -fsS {DOUBLE}/_double/comments"))
        assert len(comments) == 1, f"expected one pull-request comment, got {comments}"
        assert "install" in comments[0]["body"], comments[0]["body"]
        machine.succeed("curl -fsS http://127.0.0.1:8088/runs | grep -q ${owner}/${recipe}")
        machine.succeed("test -z \"$(docker service ls -q)\"")
  '';
}
