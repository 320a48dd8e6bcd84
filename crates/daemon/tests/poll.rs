//! The polling fallback: no webhook, the daemon reads open pull requests' comments.

use cc_ci_testkit::cmd::read;
use cc_ci_testkit::daemon::Env;
use cc_ci_testkit::forge::{SHA, SHA2};
use cc_ci_testkit::hooks::comment;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_triggers_on_new_comments_only_and_follows_head_changes() {
    let env = Env::new().await;
    // A trigger that was there before the daemon ever looked must not run.
    env.gitea.add_comment("coop/web", 1, "alice", "!testme");
    let mut config = env.config.clone();
    config.forge.webhook_secret_file = None;
    config.forge.poll_repos = vec!["coop/web".into()];
    config.daemon.poll_interval_secs = 1;
    env.set_mode(None, "pass");
    let d = env.daemon(config.clone()).await;
    let addr = d.local_addr().unwrap();
    env.wait_first_poll("coop/web").await;

    // Without a webhook secret every delivery is refused.
    assert_eq!(
        comment(addr, "coop/web", 1, 5000, "alice", "!testme")
            .await
            .0,
        401
    );

    env.gitea.add_comment("coop/web", 1, "bob", "nice");
    env.gitea.add_comment("coop/web", 1, "mallory", "!testme");
    env.gitea.add_comment("coop/web", 1, "alice", "!testme");
    env.wait_status(SHA, "success", "run #1").await;
    env.wait_reply("@mallory").await;

    // A hanging run is superseded when the poll sees a new head.
    env.set_mode(None, "hang");
    env.gitea.add_comment("coop/web", 1, "alice", "!testme");
    env.wait_hanging(2).await;
    env.gitea.set_head("coop/web", 1, SHA2);
    let c = env.wait_comment(2, "🛑 cancelled").await;
    assert!(c.body.contains("new commits"), "{}", c.body);

    let runs = read(&env.marks().join("runs.log"));
    assert_eq!(runs.lines().count(), 2, "{runs}");
    d.shutdown().await;
}
