//! No crate of the workspace has an import circle between its top-level modules (issue 14).

use std::path::Path;

use cc_ci_testkit::imports::{find_circle, graph};

#[test]
fn no_crate_has_an_import_circle() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&crates)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", crates.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    entries.sort();
    for dir in entries {
        let name = dir.file_name().map(|n| n.to_string_lossy().to_string());
        let g = graph(&dir.join("src"));
        if let Some(c) = find_circle(&g) {
            panic!(
                "import circle in crates/{}: {} (move what both sides need into a module that imports neither)",
                name.unwrap_or_default(),
                c.join(" → ")
            );
        }
        checked.push((name.unwrap_or_default(), g.len()));
    }
    // The walk must have seen the workspace, or the test would pass on nothing.
    for (krate, at_least) in [("harness", 20), ("daemon", 15)] {
        assert!(
            checked
                .iter()
                .any(|(n, len)| n == krate && *len >= at_least),
            "crates/{krate} was not read (saw {checked:?})"
        );
    }
}
