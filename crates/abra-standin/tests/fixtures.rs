//! The fixture recipes under `tests/fixtures/recipes` and `scripts/make-fixture-repo`: every
//! fixture builds into a repository whose commits hold exactly its steps, and bad input is refused.

use std::path::Path;
use std::process::{Command, Stdio};

use cc_ci_testkit::cmd::git;
use cc_ci_testkit::repo_root;

fn make(fixture_dir: &Path, out: &Path) -> std::process::Output {
    Command::new(repo_root().join("scripts/make-fixture-repo"))
        .arg(fixture_dir)
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn step_dirs(fixture: &Path) -> Vec<(String, String)> {
    let mut steps: Vec<(u32, String, String)> = std::fs::read_dir(fixture)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            let (nn, tag) = name.split_once('-').unwrap();
            (nn.parse().unwrap(), name.clone(), tag.to_string())
        })
        .collect();
    steps.sort();
    steps.into_iter().map(|(_, d, t)| (d, t)).collect()
}

#[test]
fn every_fixture_builds_with_its_steps_as_commits_and_tags() {
    let root = repo_root().join("tests/fixtures/recipes");
    let work = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        let fixture = entry.path();
        assert!(
            fixture.join("README.md").is_file(),
            "{name} has no README.md"
        );
        let out = work.path().join(&name);
        let o = make(&fixture, &out);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );

        let steps = step_dirs(&fixture);
        let commits: Vec<String> = git(&out, &["rev-list", "--reverse", "HEAD"])
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(commits.len(), steps.len(), "{name}");
        let mut tags = 0;
        for ((dir, tag), commit) in steps.iter().zip(&commits) {
            // Each commit holds exactly that step's files, byte for byte.
            let listed = git(&out, &["ls-tree", "-r", "--name-only", commit]);
            for file in listed.lines() {
                let want = std::fs::read(fixture.join(dir).join(file)).unwrap();
                let got = Command::new("git")
                    .arg("-C")
                    .arg(&out)
                    .args(["show", &format!("{commit}:{file}")])
                    .output()
                    .unwrap()
                    .stdout;
                assert_eq!(got, want, "{name} {dir}/{file}");
            }
            let on_disk = walk(&fixture.join(dir));
            assert_eq!(listed.lines().count(), on_disk, "{name} {dir}: file count");
            if tag != "head" {
                tags += 1;
                assert_eq!(
                    &git(&out, &["rev-parse", &format!("{tag}^{{commit}}")]),
                    commit
                );
            }
            // Recipe conventions: `.env.sample` starts with TYPE=<recipe> (but in `typeless`,
            // whose point is its absence).
            let sample = std::fs::read_to_string(fixture.join(dir).join(".env.sample")).unwrap();
            if name == "typeless" {
                assert!(!sample.contains("TYPE="), "{name} {dir}");
            } else {
                assert_eq!(sample.lines().next(), Some(format!("TYPE={name}").as_str()));
            }
            // `web-nocompose`'s point is that its compose file is not called compose.yml.
            let compose_name = if name == "web-nocompose" {
                "docker-compose.yml"
            } else {
                "compose.yml"
            };
            let compose = std::fs::read_to_string(fixture.join(dir).join(compose_name)).unwrap();
            let parsed = serde_norway::from_str::<serde_norway::Value>(&compose);
            assert_eq!(
                parsed.is_err(),
                name == "web-badcompose",
                "{name} {dir}: {parsed:?}"
            );
        }
        assert!(tags >= 1, "{name} has no release");
        names.push(name);
    }
    assert!(names.len() >= 12, "{names:?}");
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn make_fixture_repo_refuses_bad_input() {
    let work = tempfile::tempdir().unwrap();
    let web = repo_root().join("tests/fixtures/recipes/web");

    // The recipe's name is TYPE=, so a repository may be named otherwise (`coop-cloud-web`).
    let o = make(&web, &work.path().join("coop-cloud-web"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let out = work.path().join("web");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("x"), "").unwrap();
    let o = make(&web, &out);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));

    let bad = work.path().join("fx/bad");
    std::fs::create_dir_all(bad.join("first")).unwrap();
    std::fs::write(bad.join("first/f"), "x").unwrap();
    let o = make(&bad, &work.path().join("o/bad"));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("<NN>-<tag>"));

    let dup = work.path().join("fx/dup");
    for d in ["01-1.0.0", "02-1.0.0"] {
        std::fs::create_dir_all(dup.join(d)).unwrap();
        std::fs::write(dup.join(d).join("f"), d).unwrap();
    }
    let o = make(&dup, &work.path().join("o/dup"));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("twice"));

    let o = make(&work.path().join("nope"), &work.path().join("o/nope"));
    assert_eq!(o.status.code(), Some(2));
}
