//! The run contract between the daemon and `cc-ci run`: which stages exist and how they are
//! spelled, what the exit code of a run means, the files a run writes into its report
//! directory, and how a commit is shortened for people. Both sides use this module so they
//! cannot drift apart.

use serde::{Deserialize, Serialize};

/// A tier of the lifecycle, in the order tiers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Install,
    Upgrade,
    Backup,
    Restore,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Install,
        Stage::Upgrade,
        Stage::Backup,
        Stage::Restore,
    ];

    /// The spellings of [`Stage::ALL`], as in `--stages`, `!testme` and the store.
    pub const NAMES: [&'static str; 4] = ["install", "upgrade", "backup", "restore"];

    pub const fn name(self) -> &'static str {
        match self {
            Stage::Install => Self::NAMES[0],
            Stage::Upgrade => Self::NAMES[1],
            Stage::Backup => Self::NAMES[2],
            Stage::Restore => Self::NAMES[3],
        }
    }

    /// The stage spelled `name`, if any.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Parses a comma-separated list; order and duplicates do not matter (tiers always run in
    /// lifecycle order).
    pub fn parse_list(s: &str) -> Result<Vec<Stage>, String> {
        let mut out = Vec::new();
        for part in s.split([',', ' ']).map(str::trim).filter(|p| !p.is_empty()) {
            let stage = Stage::from_name(part).ok_or_else(|| {
                format!("unknown stage `{part}`: use install, upgrade, backup, restore")
            })?;
            if !out.contains(&stage) {
                out.push(stage);
            }
        }
        if out.is_empty() {
            return Err("no stages given: use install, upgrade, backup, restore".into());
        }
        out.sort();
        Ok(out)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Exit codes of `cc-ci run` (docs/harness.md). The daemon reads a child's exit code with
/// [`exit::Exit::from_code`].
pub mod exit {
    /// Every requested tier passed or was skipped.
    pub const PASS: i32 = 0;
    /// A tier failed (or a check errored after another failed).
    pub const FAIL: i32 = 1;
    /// Bad input or configuration: nothing was deployed.
    pub const BAD_INPUT: i32 = 2;
    /// Infrastructure error: the run could not be carried out.
    pub const INFRA: i32 = 3;

    /// What an exit code of `cc-ci run` means.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Exit {
        Pass,
        Fail,
        BadInput,
        Infra,
    }

    impl Exit {
        pub const fn code(self) -> i32 {
            match self {
                Exit::Pass => PASS,
                Exit::Fail => FAIL,
                Exit::BadInput => BAD_INPUT,
                Exit::Infra => INFRA,
            }
        }

        /// `None` for a code `cc-ci run` never exits with.
        pub const fn from_code(code: i32) -> Option<Exit> {
            match code {
                PASS => Some(Exit::Pass),
                FAIL => Some(Exit::Fail),
                BAD_INPUT => Some(Exit::BadInput),
                INFRA => Some(Exit::Infra),
                _ => None,
            }
        }
    }

    /// The process exit status for `code`; codes outside 0..=255 become [`INFRA`] (they would
    /// otherwise wrap into something that looks like a verdict).
    pub fn process(code: i32) -> std::process::ExitCode {
        match u8::try_from(code) {
            Ok(c) => std::process::ExitCode::from(c),
            Err(_) => std::process::ExitCode::from(INFRA as u8),
        }
    }
}

/// The files a run writes into its report directory.
pub mod files {
    /// The machine-readable report (a `RunReport`), written last.
    pub const RUN_JSON: &str = "run.json";
    /// Progress while the run is under way; removed once `run.json` is written.
    pub const PROGRESS_JSON: &str = "progress.json";
    /// The report for people.
    pub const SUMMARY_MD: &str = "summary.md";
    /// The report for CI tools.
    pub const JUNIT_XML: &str = "junit.xml";
    /// Every abra command the run made, with its output (secrets masked).
    pub const ABRA_LOG: &str = "abra.log";
    /// The folder of service logs and task states written when a tier fails.
    pub const DIAGNOSTICS: &str = "diagnostics";

    /// What a run produces afresh: a re-run removes these first so a stale one is never read.
    pub const RESULTS: [&str; 4] = [RUN_JSON, PROGRESS_JSON, SUMMARY_MD, JUNIT_XML];
    /// The reports the daemon serves as they are, with their content types.
    pub const SERVED: [(&str, &str); 3] = [
        (SUMMARY_MD, "text/markdown; charset=utf-8"),
        (RUN_JSON, "application/json"),
        (JUNIT_XML, "application/xml"),
    ];
}

/// A commit as people see it: the first 10 hex digits (the whole string if shorter).
pub fn short_sha(sha: &str) -> &str {
    sha.get(..10).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_round_trip_and_serialize_as_spelled() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_name(s.name()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.name())
            );
        }
        assert_eq!(Stage::from_name("deploy"), None);
        assert_eq!(
            Stage::ALL.map(Stage::name),
            Stage::NAMES,
            "ALL and NAMES in the same order"
        );
    }

    #[test]
    fn stage_lists_are_sorted_and_deduplicated() {
        assert_eq!(
            Stage::parse_list("restore, install,restore").unwrap(),
            vec![Stage::Install, Stage::Restore]
        );
        assert!(
            Stage::parse_list("install,deploy")
                .unwrap_err()
                .contains("deploy")
        );
        assert!(Stage::parse_list(" , ").is_err());
    }

    #[test]
    fn exit_codes_round_trip() {
        for e in [
            exit::Exit::Pass,
            exit::Exit::Fail,
            exit::Exit::BadInput,
            exit::Exit::Infra,
        ] {
            assert_eq!(exit::Exit::from_code(e.code()), Some(e));
        }
        assert_eq!(exit::Exit::from_code(137), None);
        assert_eq!(exit::process(-1), std::process::ExitCode::from(3));
        assert_eq!(exit::process(2), std::process::ExitCode::from(2));
    }

    #[test]
    fn short_sha_cuts_to_ten_and_keeps_short_strings() {
        assert_eq!(short_sha("0123456789abcdef"), "0123456789");
        assert_eq!(short_sha("abc"), "abc");
        assert_eq!(short_sha("é"), "é");
    }
}
