//! Helpers shared by the end-to-end tests of `crates/cli` and the stand-in's tests, instead of a
//! copy in every test file. Test support only (`publish = false`); the product never links it.

use std::path::{Path, PathBuf};

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
