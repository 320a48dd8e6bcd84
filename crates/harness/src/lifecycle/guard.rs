//! The gate before anything is deployed: the compose policy on every compose file of the tree
//! that is about to be deployed (see `policy`), and the repository's own folders being what
//! they seem. A refusal is bad input (exit 2).

use std::collections::BTreeSet;

use super::job::{Job, Stop};
use crate::policy;
use crate::recipe::{self, Checkout};
use crate::safefs;

impl Job {
    /// The policy rules the operator allows for this run's repository.
    fn allowed_rules(&self) -> (Option<String>, BTreeSet<String>) {
        let repo = policy::repository_of(&self.opts.recipe_source);
        let allowed = repo
            .as_ref()
            .map(|r| {
                self.opts
                    .config
                    .compose_allow
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(r))
                    .flat_map(|(_, v)| v.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        (repo, allowed)
    }

    /// Judges every compose file of the checked-out tree: those `COMPOSE_FILE` names and every
    /// `compose*.yml` at the top (abra may be told to use any of them). `what` names the tree
    /// (`head 0beb710420`, `base release 1.0.0+1.0`) in the error.
    pub(super) fn compose_policy(&mut self, checkout: &Checkout, what: &str) -> Result<(), Stop> {
        let bad = |e: String| Stop::BadInput(format!("the recipe at {what} is refused: {e}"));
        let dot_cc_ci = checkout.dir.join(".cc-ci");
        if std::fs::symlink_metadata(&dot_cc_ci).is_ok_and(|m| !m.is_dir()) {
            return Err(bad(
                ".cc-ci is not a directory (a symbolic link?): cc-ci reads only regular files inside the checkout".into(),
            ));
        }
        let escaping = safefs::escaping_links(&checkout.dir).map_err(|e| bad(e.to_string()))?;
        if let Some(first) = escaping.first() {
            let more = match escaping.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return Err(bad(format!(
                "{first}{more}: cc-ci and abra read only regular files inside the checkout"
            )));
        }
        let sample = checkout
            .read_file(".env.sample")
            .map_err(|e| bad(e.to_string()))?
            .unwrap_or_default();
        let mut files = recipe::compose_files(&recipe::EnvFile::parse(&sample));
        if let Ok(dir) = std::fs::read_dir(&checkout.dir) {
            let mut extra: Vec<String> = dir
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    (n.starts_with("compose") || n.starts_with("docker-compose"))
                        && (n.ends_with(".yml") || n.ends_with(".yaml"))
                })
                .collect();
            extra.sort();
            files.extend(extra);
        }
        files.dedup();
        let (repo, allowed) = self.allowed_rules();
        let root = checkout.dir.clone();
        let file_check = |rel: &str| -> Result<(), String> {
            match safefs::check_inside(&root, rel) {
                Ok(_) => Ok(()),
                Err(safefs::SafeError::Refused { problem, .. }) => Err(problem),
                Err(e) => Err(e.to_string()),
            }
        };
        let mut seen = BTreeSet::new();
        for file in files {
            if !seen.insert(file.clone()) {
                continue;
            }
            let Some(text) = checkout.read_file(&file).map_err(|e| bad(e.to_string()))? else {
                continue;
            };
            let doc: serde_norway::Value = serde_norway::from_str(&text)
                .map_err(|e| bad(format!("{file}: not valid YAML: {e}")))?;
            let verdict = policy::check_compose(&file, &doc, &allowed, &file_check);
            if let Some(v) = verdict.refused.first() {
                let more = match verdict.refused.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                };
                return Err(bad(format!("{v}{more}")));
            }
            for v in verdict.allowed {
                let note = format!(
                    "compose policy: `{}` allowed by the operator for {}: {}: {}: key `{}`",
                    v.rule,
                    repo.as_deref().unwrap_or("this repository"),
                    v.file,
                    v.place,
                    v.key
                );
                if !self.notes.contains(&note) {
                    self.notes.push(note);
                }
            }
        }
        Ok(())
    }
}
