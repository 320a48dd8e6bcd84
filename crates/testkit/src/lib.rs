//! Test support shared by the tests of the daemon, the cli and the stand-in, instead of
//! `#[path]` includes and a copy in every test file. Test support only (`publish = false`); the
//! product never links it.
//!
//! | module | holds |
//! |---|---|
//! | [`forge`] | the Gitea/Forgejo double (API, redirects, paging, git over dumb HTTP) |
//! | [`hooks`] | webhook deliveries as the forges send them, signed |
//! | [`daemon`] | the daemon in the test's process with a fake `cc-ci run` ([`daemon::Env`]) |
//! | [`serve`] | `cc-ci serve` as a process: start, socket activation, stop, kill, gc guard |
//! | [`sandbox`] | one test's `cc-ci run` sandbox on the swarm (gated abra, secret recorder) |
//! | [`fixtures`] | fixture recipes as git repositories, and as repositories on the forge |
//! | [`proxy`] | Docker engine proxies that can be cut or hung |
//! | [`browser`] | a headless Chromium session over WebDriver |
//! | [`standin`] | the stand-in's scaffolding: an `ABRA_DIR` with an app, cleaned up on drop |
//! | [`wait`] | waits with deadlines that name what they were stuck on |
//! | [`cmd`] | commands that must succeed, files, processes, ports |

use std::path::{Path, PathBuf};

pub mod browser;
pub mod cmd;
pub mod daemon;
pub mod fixtures;
pub mod forge;
pub mod hooks;
pub mod imports;
pub mod proxy;
pub mod sandbox;
pub mod serve;
pub mod standin;
pub mod wait;

/// The harness's in-memory swarm and abra (`cc_ci_harness::fakes`), for tests outside the harness.
pub use cc_ci_harness::fakes;

/// The root of the source tree (fixtures, scripts, overlays live under it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The stand-in abra built beside `cc_ci` (same target directory); fails the test naming what
/// to build when it is missing.
pub fn standin_beside(cc_ci: &Path) -> PathBuf {
    let p = cc_ci.with_file_name("abra-standin");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p abra-standin` first (the README's test command does)",
        p.display()
    );
    p
}
