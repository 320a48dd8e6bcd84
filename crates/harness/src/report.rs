//! The run report: `run.json` (machine-readable, schema in docs/report.md), `summary.md` (the
//! pull-request comment body) and `junit.xml`. Pure data and rendering; writing files is
//! the caller's business.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::contract::Stage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skipped,
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Skipped => "skipped",
            Verdict::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckSource {
    Generic,
    Overlay,
    RepoLocal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub source: CheckSource,
    pub verdict: Verdict,
    pub detail: String,
}

impl CheckResult {
    pub fn new(
        name: impl Into<String>,
        source: CheckSource,
        verdict: Verdict,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            source,
            verdict,
            detail: detail.into(),
        }
    }
    pub fn generic(name: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Self {
        Self::new(name, CheckSource::Generic, verdict, detail)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierReport {
    pub name: String,
    pub verdict: Verdict,
    pub duration_ms: u64,
    pub checks: Vec<CheckResult>,
}

impl TierReport {
    pub fn skipped(name: &str, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            verdict: Verdict::Skipped,
            duration_ms: 0,
            checks: vec![CheckResult::generic("tier", Verdict::Skipped, reason)],
        }
    }

    /// A tier's verdict from its checks: any error → error, else any fail → fail, else pass
    /// (all skipped → skipped).
    pub fn verdict_of(checks: &[CheckResult]) -> Verdict {
        if checks.iter().any(|c| c.verdict == Verdict::Error) {
            Verdict::Error
        } else if checks.iter().any(|c| c.verdict == Verdict::Fail) {
            Verdict::Fail
        } else if !checks.is_empty() && checks.iter().all(|c| c.verdict == Verdict::Skipped) {
            Verdict::Skipped
        } else {
            Verdict::Pass
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TeardownReport {
    pub verdict: Option<Verdict>,
    pub leftovers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub recipe: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub head_sha: String,
    pub base_version: Option<String>,
    pub app_domain: String,
    /// pass | fail | error (never skipped: a run where everything was skipped passed).
    pub verdict: Verdict,
    pub deploy_count: u32,
    pub tiers: Vec<TierReport>,
    pub teardown: TeardownReport,
    /// Extra notes shown in the summary (ignored repo-local tests, generic checks opted out, ...).
    #[serde(default)]
    pub notes: Vec<String>,
    /// What `abra --version` said (which abra ran the deploys).
    #[serde(default)]
    pub abra_version: Option<String>,
    /// What the result was made of (crates/harness/src/inputs.rs); absent when the run stopped
    /// before they were known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Inputs>,
    /// Set when this report is an earlier result reported again (its inputs unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused: Option<Reused>,
}

/// An earlier result reported again: which run made it, when, and where it is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reused {
    pub run: i64,
    /// When that run finished, as shown (`2026-11-30 12:05:09 UTC`).
    pub finished: String,
    pub url: String,
}

impl RunReport {
    /// Overall verdict: error beats fail beats pass; a teardown that left objects behind is an error.
    pub fn overall(tiers: &[TierReport], teardown: &TeardownReport) -> Verdict {
        if tiers.iter().any(|t| t.verdict == Verdict::Error)
            || teardown.verdict == Some(Verdict::Error)
        {
            Verdict::Error
        } else if tiers.iter().any(|t| t.verdict == Verdict::Fail)
            || teardown.verdict == Some(Verdict::Fail)
        {
            Verdict::Fail
        } else {
            Verdict::Pass
        }
    }

    /// Markdown for the pull-request comment.
    pub fn summary_markdown(&self, log_url: Option<&str>) -> String {
        let mut out = String::new();
        let icon = |v: Verdict| match v {
            Verdict::Pass => "✅ pass",
            Verdict::Fail => "❌ fail",
            Verdict::Skipped => "⏭️ skipped",
            Verdict::Error => "⚠️ error",
        };
        let short = crate::contract::short_sha(&self.head_sha);
        out.push_str(&format!(
            "### cc-ci: {} — `{}` at `{}`\n\n",
            icon(self.verdict),
            self.recipe,
            short
        ));
        if let Some(r) = &self.reused {
            out.push_str(&format!(
                "♻️ unchanged since [run #{}]({}) ({}): same commit, images, abra and cc-ci — \
                 reported again without deploying (`!testme fresh` runs anyway)\n\n",
                r.run, r.url, r.finished
            ));
        }
        if let Some(base) = &self.base_version {
            out.push_str(&format!("Upgrade base: `{base}` · "));
        }
        out.push_str(&format!("deploys: {}\n\n", self.deploy_count));
        out.push_str("| tier | verdict | duration |\n|---|---|---|\n");
        for t in &self.tiers {
            out.push_str(&format!(
                "| {} | {} | {:.1} s |\n",
                t.name,
                icon(t.verdict),
                t.duration_ms as f64 / 1000.0
            ));
        }
        if let Some(v) = self.teardown.verdict {
            out.push_str(&format!("| teardown | {} | |\n", icon(v)));
        }
        let failing: Vec<_> = self
            .tiers
            .iter()
            .flat_map(|t| t.checks.iter().map(move |c| (t, c)))
            .filter(|(_, c)| matches!(c.verdict, Verdict::Fail | Verdict::Error))
            .collect();
        if !failing.is_empty() {
            out.push_str("\n**Failing checks**\n\n");
            for (t, c) in failing {
                out.push_str(&format!(
                    "- `{}` / {} ({}): {}\n",
                    t.name,
                    code_span(&c.name),
                    match c.source {
                        CheckSource::Generic => "generic",
                        CheckSource::Overlay => "overlay",
                        CheckSource::RepoLocal => "repo-local",
                    },
                    code_span(&excerpt(&c.detail, 300))
                ));
            }
        }
        let skipped: Vec<_> = self
            .tiers
            .iter()
            .filter(|t| t.verdict == Verdict::Skipped)
            .filter_map(|t| t.checks.first().map(|c| (t, c)))
            .collect();
        if !skipped.is_empty() {
            out.push_str("\n**Skipped**\n\n");
            for (t, c) in skipped {
                out.push_str(&format!(
                    "- `{}`: {}\n",
                    t.name,
                    code_span(&excerpt(&c.detail, 200))
                ));
            }
        }
        if !self.teardown.leftovers.is_empty() {
            out.push_str(&format!(
                "\n**Teardown left:** {}\n",
                code_span(&self.teardown.leftovers.join(", "))
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("\n> {}\n", code_span(n)));
        }
        out.push_str(&format!("\nCommit tested: `{}`", self.head_sha));
        if let Some(url) = log_url {
            out.push_str(&format!(" · [log]({url})"));
        }
        out.push('\n');
        out
    }

    /// JUnit XML: one testsuite per tier, one testcase per check.
    pub fn junit_xml(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let total: usize = self.tiers.iter().map(|t| t.checks.len()).sum();
        let count = |v: Verdict| {
            self.tiers
                .iter()
                .flat_map(|t| &t.checks)
                .filter(|c| c.verdict == v)
                .count()
        };
        out.push_str(&format!(
            "<testsuites name=\"cc-ci {}\" tests=\"{total}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\">\n",
            xml_escape(&self.recipe),
            count(Verdict::Fail),
            count(Verdict::Error),
            count(Verdict::Skipped)
        ));
        for t in &self.tiers {
            let c = |v: Verdict| t.checks.iter().filter(|c| c.verdict == v).count();
            out.push_str(&format!(
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
                xml_escape(&t.name),
                t.checks.len(),
                c(Verdict::Fail),
                c(Verdict::Error),
                c(Verdict::Skipped),
                t.duration_ms as f64 / 1000.0
            ));
            for check in &t.checks {
                out.push_str(&format!(
                    "    <testcase classname=\"{}.{}\" name=\"{}\"",
                    xml_escape(&self.recipe),
                    xml_escape(&t.name),
                    xml_escape(&check.name)
                ));
                let detail = xml_escape(&check.detail);
                match check.verdict {
                    Verdict::Pass => out.push_str("/>\n"),
                    Verdict::Fail => out.push_str(&format!(
                        "><failure message=\"{}\">{detail}</failure></testcase>\n",
                        xml_escape(&excerpt(&check.detail, 200))
                    )),
                    Verdict::Error => out.push_str(&format!(
                        "><error message=\"{}\">{detail}</error></testcase>\n",
                        xml_escape(&excerpt(&check.detail, 200))
                    )),
                    Verdict::Skipped => {
                        out.push_str(&format!("><skipped message=\"{detail}\"/></testcase>\n"))
                    }
                }
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

/// `s` as one Markdown code span, whatever it contains: the delimiter is longer than any run of
/// backticks inside, and line breaks become spaces. Text a recipe controls (check output,
/// logs) is quoted this way in the pull-request comment, so it cannot mention people, embed
/// images or links, or break the layout.
pub fn code_span(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut longest = 0;
    let mut run = 0;
    for c in flat.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    // A space on each side keeps a leading or trailing backtick out of the delimiter; Markdown
    // strips one such space again.
    let pad = if flat.starts_with('`') || flat.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{flat}{pad}{fence}")
}

/// At most about `max` characters of `s`. When cut, the start (the headline) and the end are
/// kept with ` … ` between: abra and docker print the cause of an error last.
pub fn excerpt(s: &str, max: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= max {
        return s.to_string();
    }
    let head_len = max / 3;
    let tail_len = max.saturating_sub(head_len + 3);
    let head: String = chars[..head_len].iter().collect();
    let tail: String = chars[chars.len() - tail_len..].iter().collect();
    format!("{} … {}", head.trim_end(), tail.trim_start())
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters even when escaped.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// One service's image as a version of the recipe names it, and the digest the registry serves
/// for it now (`None`: the registry could not be asked; such an input is never fresh).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceImage {
    pub service: String,
    /// As the compose file names it, interpolated (`nginx:1.27`).
    pub image: String,
    pub digest: Option<String>,
    /// Why the digest is missing, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

impl ServiceImage {
    /// `name:tag@digest` (or the bare name when no digest is known).
    pub fn pinned(&self) -> String {
        match &self.digest {
            Some(d) if !self.image.contains('@') => format!("{}@{d}", self.image),
            _ => self.image.clone(),
        }
    }
}

/// Everything a result depends on. `key` digests all other fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// The recipe repository (credentials in a URL left out).
    pub source: String,
    pub recipe: String,
    pub head_commit: String,
    pub base_release: Option<String>,
    pub base_commit: Option<String>,
    /// Stages asked for (lifecycle order).
    pub stages: Vec<Stage>,
    pub head_images: Vec<ServiceImage>,
    pub base_images: Vec<ServiceImage>,
    pub abra_version: Option<String>,
    pub cc_ci_version: String,
    /// sha256 of the overlay in force (shipped, operator and allowed repo-local files, scripts inlined).
    pub overlay_digest: String,
    /// sha256 of the config keys that change what a run checks ([`checked_config`]).
    pub config_digest: String,
    pub key: String,
}

impl Inputs {
    /// The key of these inputs: sha256 over every field but `key`, in a fixed order.
    pub fn derive_key(&self) -> String {
        let mut h = Sha256::new();
        let mut part = |name: &str, value: &str| {
            h.update(name.as_bytes());
            h.update([0]);
            h.update((value.len() as u64).to_be_bytes());
            h.update(value.as_bytes());
        };
        part("source", &self.source);
        part("recipe", &self.recipe);
        part("head", &self.head_commit);
        part("base", self.base_release.as_deref().unwrap_or("\u{1}none"));
        part(
            "base-commit",
            self.base_commit.as_deref().unwrap_or("\u{1}none"),
        );
        for s in &self.stages {
            part("stage", s.name());
        }
        for (side, list) in [
            ("head-image", &self.head_images),
            ("base-image", &self.base_images),
        ] {
            for i in list {
                part(side, &i.service);
                part("image", &i.image);
                part("digest", i.digest.as_deref().unwrap_or("\u{1}none"));
            }
        }
        part("abra", self.abra_version.as_deref().unwrap_or("\u{1}none"));
        part("cc-ci", &self.cc_ci_version);
        part("overlay", &self.overlay_digest);
        part("config", &self.config_digest);
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// Sets `key` from the other fields.
    pub fn sealed(mut self) -> Self {
        self.key = self.derive_key();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_hold_any_text() {
        assert_eq!(code_span("deploy"), "`deploy`");
        assert_eq!(code_span("a `b` c"), "``a `b` c``");
        assert_eq!(code_span("``x"), "``` ``x ```");
        assert_eq!(code_span("line\nbreak"), "`line break`");
        // What a recipe could print to reach people or embed things stays inert code.
        let s = code_span("@admin ![x](http://e/x.png) [l](http://e) `@x`");
        assert!(s.starts_with("`` ") || s.starts_with("``@"), "{s}");
        assert!(s.ends_with("``"), "{s}");
    }

    #[test]
    fn recipe_text_in_the_summary_is_quoted() {
        let r = RunReport {
            recipe: "web".into(),
            git_ref: "HEAD".into(),
            head_sha: "abc".into(),
            base_version: None,
            app_domain: "web-abcdef.ci.local".into(),
            verdict: Verdict::Fail,
            deploy_count: 1,
            tiers: vec![TierReport {
                name: "install".into(),
                verdict: Verdict::Fail,
                duration_ms: 1,
                checks: vec![CheckResult::generic(
                    "converged",
                    Verdict::Fail,
                    "healthcheck said: @admin ![pwn](http://evil/x.png) `` | broken table",
                )],
            }],
            teardown: TeardownReport::default(),
            notes: vec!["note with @someone".into()],
            abra_version: None,
            inputs: None,
            reused: None,
        };
        let md = r.summary_markdown(None);
        assert!(
            md.contains(
                "```healthcheck said: @admin ![pwn](http://evil/x.png) `` | broken table```"
            ),
            "{md}"
        );
        assert!(md.contains("> `note with @someone`"), "{md}");
    }

    fn sample() -> RunReport {
        let tiers = vec![
            TierReport {
                name: "install".into(),
                verdict: Verdict::Pass,
                duration_ms: 1200,
                checks: vec![CheckResult::generic("converged", Verdict::Pass, "")],
            },
            TierReport {
                name: "upgrade".into(),
                verdict: Verdict::Fail,
                duration_ms: 3400,
                checks: vec![CheckResult::generic(
                    "data-continuity",
                    Verdict::Fail,
                    "volume <db> lost canary & more",
                )],
            },
        ];
        let teardown = TeardownReport {
            verdict: Some(Verdict::Pass),
            leftovers: vec![],
        };
        RunReport {
            recipe: "web".into(),
            git_ref: "main".into(),
            head_sha: "0123456789abcdef".into(),
            base_version: Some("1.0.0+1".into()),
            app_domain: "web-abcdef.ci.local".into(),
            verdict: RunReport::overall(&tiers, &teardown),
            deploy_count: 1,
            tiers,
            teardown,
            notes: vec![],
            abra_version: None,
            inputs: None,
            reused: None,
        }
    }

    #[test]
    fn json_shape_matches_contract() {
        let v = serde_json::to_value(sample()).unwrap();
        for key in [
            "recipe",
            "ref",
            "head_sha",
            "base_version",
            "app_domain",
            "verdict",
            "deploy_count",
            "tiers",
            "teardown",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["verdict"], "fail");
        assert_eq!(v["tiers"][1]["checks"][0]["source"], "generic");
        assert_eq!(v["teardown"]["leftovers"], serde_json::json!([]));
    }

    #[test]
    fn verdict_rules() {
        let c = |v| CheckResult::generic("c", v, "");
        assert_eq!(
            TierReport::verdict_of(&[c(Verdict::Pass), c(Verdict::Fail)]),
            Verdict::Fail
        );
        assert_eq!(
            TierReport::verdict_of(&[c(Verdict::Fail), c(Verdict::Error)]),
            Verdict::Error
        );
        assert_eq!(
            TierReport::verdict_of(&[c(Verdict::Skipped)]),
            Verdict::Skipped
        );
        assert_eq!(
            TierReport::verdict_of(&[c(Verdict::Skipped), c(Verdict::Pass)]),
            Verdict::Pass
        );
        let t = TeardownReport {
            verdict: Some(Verdict::Error),
            leftovers: vec!["x".into()],
        };
        assert_eq!(RunReport::overall(&[], &t), Verdict::Error);
    }

    #[test]
    fn excerpts_keep_the_headline_and_the_cause_at_the_end() {
        assert_eq!(excerpt("short", 10), "short");
        let long = format!("deploy failed{}the real cause", " filler".repeat(100));
        let e = excerpt(&long, 60);
        assert!(e.starts_with("deploy failed"), "{e}");
        assert!(e.ends_with("the real cause"), "{e}");
        assert!(e.chars().count() <= 60, "{e}");
        assert_eq!(excerpt("ééééé", 4).chars().count(), 4);
    }

    #[test]
    fn summary_and_junit() {
        let r = sample();
        let md = r.summary_markdown(Some("http://ci/runs/1/log"));
        assert!(md.contains("| upgrade | ❌ fail |"), "{md}");
        assert!(md.contains("data-continuity"), "{md}");
        assert!(md.contains("0123456789abcdef"), "{md}");
        let xml = r.junit_xml();
        assert!(xml.contains("failures=\"1\""), "{xml}");
        assert!(xml.contains("&lt;db&gt;"), "{xml}");
        assert!(xml.contains("&amp;"), "{xml}");
    }
}
