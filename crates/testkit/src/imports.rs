//! The import graph of a crate's top-level modules, and its circles: module A using `crate::b`
//! while b uses `crate::a` (directly or through others) makes both harder to read and to change
//! alone. The graph is read from the source text: every `crate::<module>` in a line that is not
//! a comment is an edge from the file's top-level module to `<module>`. `tests/import_graph.rs`
//! holds every crate of the workspace to it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module a source file belongs to (`pages/run.rs` → `pages`); None for the
/// crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The modules named after `crate::` in one line: `crate::a::x` and `crate::{a, b::y}`.
fn targets(line: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            out.extend(group.split(',').map(|p| ident(p.trim())));
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// The edges `module → modules it imports` of the Rust files under `src`.
pub fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let Some(from) = module_of(src, &path) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let entry = g.entry(from.clone()).or_default();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for to in targets(line) {
                    if to != from {
                        entry.insert(to);
                    }
                }
            }
        }
    }
    g
}

/// One circle of the graph, as the modules along it (first = last), if there is any.
pub fn find_circle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).unwrap_or(0);
                let mut circle = path[start..].to_vec();
                circle.push(node.to_string());
                return Some(circle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in g.get(node).into_iter().flatten() {
            if let Some(c) = visit(g, next, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in g.keys() {
        if let Some(c) = visit(g, node, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_circle_is_found_and_named() {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
            g.entry(a.into()).or_default().insert(b.into());
        }
        assert_eq!(
            find_circle(&g),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        g.get_mut("c").map(|s| s.remove("a"));
        assert_eq!(find_circle(&g), None);
    }

    #[test]
    fn grouped_and_nested_imports_are_edges() {
        assert_eq!(
            targets("use crate::{http, intake::x, self};"),
            vec!["http".to_string(), "intake".into()]
        );
        assert_eq!(
            targets("let x = crate::store::now();"),
            vec!["store".to_string()]
        );
    }
}
