//! Fixture recipes (tests/fixtures/recipes) as git repositories, and those repositories on the
//! forge double: bare clones served over git's "dumb" HTTP protocol with `refs/pull/<n>/head`,
//! so a run clones `<forge>/<owner>/<repo>.git` exactly as it would from a real forge.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{git, stdout};
use crate::forge::Gitea;
use crate::repo_root;

/// `tests/fixtures/recipes/<name>` (a fixture, or one of its steps: `web/03-head`).
pub fn recipe_dir(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/recipes").join(name)
}

/// `scripts/make-fixture-repo <src> <out>`: the fixture's steps as commits and release tags.
pub fn make_fixture_repo(src: &Path, out: &Path) {
    stdout(
        Command::new(repo_root().join("scripts/make-fixture-repo"))
            .arg(src)
            .arg(out),
    );
}

/// A repository on the forge double: `<git_root>/<owner>/<name>.git`.
pub struct ForgeRepo {
    pub bare: PathBuf,
}

impl ForgeRepo {
    /// A bare clone of the repository `src` as `repo` (`owner/name`) under `git_root` (what
    /// [`Gitea::serve_git`] serves).
    pub fn publish(git_root: &Path, repo: &str, src: &Path) -> Self {
        let bare = git_root.join(format!("{repo}.git"));
        std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
        git(
            git_root,
            &[
                "clone",
                "--quiet",
                "--bare",
                src.to_str().expect("a UTF-8 path"),
                bare.to_str().expect("a UTF-8 path"),
            ],
        );
        ForgeRepo { bare }
    }

    /// Pull request `pr` of `repo` on `gitea` whose head (`refs/pull/<pr>/head`) is revision
    /// `rev`; returns the head commit.
    pub fn pull_request(&self, gitea: &Gitea, repo: &str, pr: i64, rev: &str) -> String {
        let sha = git(&self.bare, &["rev-parse", &format!("{rev}^{{commit}}")]);
        git(
            &self.bare,
            &["update-ref", &format!("refs/pull/{pr}/head"), &sha],
        );
        gitea.add_pr(repo, pr, &sha);
        sha
    }

    /// Writes what the dumb protocol reads instead of asking the server: call it after the last
    /// ref changed.
    pub fn update_server_info(&self) {
        git(&self.bare, &["update-server-info"]);
    }
}
