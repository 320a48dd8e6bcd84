//! Test support for unit tests: a daemon state over a temporary store and the in-memory
//! forge (`forge::fake`), with no listener, no child process, no HTTP and no Docker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::forge::fake::FakeForge;
use crate::secrets::Secrets;
use crate::state::{Settings, State, Tuning};
use crate::store::Store;

/// cc-ci's own login on the fake forge.
pub(crate) const BOT: &str = "cc-ci-bot";
/// The one repository on the allowlist.
pub(crate) const REPO: &str = "recipes/demo";

/// A state whose forge is the returned `FakeForge`; `edit` adjusts the config (allowlists,
/// public URL) before the state is made. The directory lives as long as the returned guard.
pub(crate) fn state(
    edit: impl FnOnce(&mut Config),
) -> (Arc<State>, Arc<FakeForge>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
    let mut config = Config::default();
    config.forge.repo_allowlist = vec![REPO.into()];
    config.forge.user_allowlist = vec!["alice".into()];
    config.daemon.public_url = "https://ci.example".into();
    edit(&mut config);
    let store = Store::open(&dir.path().join("db.sqlite")).unwrap_or_else(|e| panic!("store: {e}"));
    let secrets = Secrets {
        token: Some("forge-token".into()),
        webhook_secret: Some("hook-secret".into()),
    };
    let settings = Settings {
        config,
        config_path: None,
        state_dir: dir.path().to_path_buf(),
        exe: PathBuf::from("/nonexistent/cc-ci"),
        redactor: secrets.redactor(),
        secrets,
        host: cc_ci_harness::hostenv::HostEnv::default(),
        tuning: Tuning {
            retry_base: Duration::from_secs(1),
            ..Tuning::default()
        },
    };
    let fake = Arc::new(FakeForge::new(BOT));
    let state = Arc::new(State::new(settings, store, fake.clone()));
    (state, fake, dir)
}

/// The head of pull request 4 in the runs `queued_run` makes.
pub(crate) const HEAD: &str = "0123456789abcdef0123456789abcdef01234567";

/// A queued run of `alice`'s `!testme` (comment `comment`) on pull request 4 at [`HEAD`], as
/// the intake leaves it.
pub(crate) fn queued_run(state: &State, comment: i64) -> i64 {
    use crate::store::{Ingested, NewTrigger};
    let stored = state.store.ingest_trigger(&NewTrigger {
        source: "webhook",
        delivery_id: None,
        repo: REPO,
        pr: 4,
        comment_id: comment,
        user: "alice",
        stages: &[],
        unknown_stages: &[],
    });
    let Ok(Ingested::Stored(id)) = stored else {
        panic!("not stored: {stored:?}")
    };
    let t = state
        .store
        .get_trigger(id)
        .unwrap_or_else(|e| panic!("trigger: {e}"))
        .unwrap_or_else(|| panic!("trigger {id} vanished"));
    state
        .store
        .accept_trigger(&t, HEAD)
        .unwrap_or_else(|e| panic!("accept: {e}"))
        .run_id
}
