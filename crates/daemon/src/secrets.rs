//! The forge token and the webhook secret. Read from files only (systemd credentials first), kept
//! out of `Debug` output, and removed from every text the daemon writes (run logs, pages) by the
//! harness's [`Redactor`], the one redactor of cc-ci.

use std::fmt;
use std::path::Path;

use cc_ci_harness::redact::Redactor;

use crate::config::ForgeConfig;
use crate::error::DaemonError;

/// Credential names under `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
/// (One spelling, shared with the harness, which learns the same values to redact them.)
pub const TOKEN_CREDENTIAL: &str = cc_ci_harness::redact::FORGE_TOKEN_CREDENTIAL;
pub const WEBHOOK_CREDENTIAL: &str = cc_ci_harness::redact::WEBHOOK_SECRET_CREDENTIAL;

#[derive(Clone, Default)]
pub struct Secrets {
    pub token: Option<String>,
    pub webhook_secret: Option<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

impl Secrets {
    /// `$CREDENTIALS_DIRECTORY/<name>` wins over the configured file; a configured file that
    /// cannot be read is an error (the operator asked for it), a missing credential is not.
    pub fn load(
        credentials_dir: Option<&Path>,
        token_file: Option<&Path>,
        webhook_secret_file: Option<&Path>,
    ) -> Result<Self, DaemonError> {
        Ok(Self {
            token: read_secret(
                TOKEN_CREDENTIAL,
                credentials_dir,
                token_file,
                "forge.token_file",
            )?,
            webhook_secret: read_secret(
                WEBHOOK_CREDENTIAL,
                credentials_dir,
                webhook_secret_file,
                "forge.webhook_secret_file",
            )?,
        })
    }

    /// The files `[forge]` names, with the systemd credentials in `credentials_dir`
    /// (`$CREDENTIALS_DIRECTORY`, read by the edge) first.
    pub fn for_config(
        config: &ForgeConfig,
        credentials_dir: Option<&Path>,
    ) -> Result<Self, DaemonError> {
        Self::load(
            credentials_dir,
            config.token_file.as_deref(),
            config.webhook_secret_file.as_deref(),
        )
    }

    /// A redactor that masks both values (very short values would mask ordinary words; such
    /// secrets are refused at load).
    pub fn redactor(&self) -> Redactor {
        let r = Redactor::new();
        for s in [&self.token, &self.webhook_secret].into_iter().flatten() {
            r.add(s);
        }
        r
    }
}

fn read_secret(
    name: &'static str,
    credentials_dir: Option<&Path>,
    file: Option<&Path>,
    key: &str,
) -> Result<Option<String>, DaemonError> {
    let from_creds = credentials_dir
        .map(|d| d.join(name))
        .filter(|p| p.is_file());
    let path = match (from_creds, file) {
        (Some(p), _) => p,
        (None, Some(f)) => f.to_path_buf(),
        (None, None) => return Ok(None),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| DaemonError::Secret {
        name,
        problem: format!(
            "cannot read {}: {e} (check `{key}` or the systemd credential `{name}`)",
            path.display()
        ),
    })?;
    let value = text.trim().to_string();
    if value.is_empty() {
        return Err(DaemonError::Secret {
            name,
            problem: format!("{} is empty", path.display()),
        });
    }
    if value.len() < 8 {
        return Err(DaemonError::Secret {
            name,
            problem: format!(
                "{} holds fewer than 8 characters: use a long random value",
                path.display()
            ),
        });
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_directory_wins_and_values_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("forge-token"), "from-credentials\n").unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-config-file").unwrap();
        let wh = dir.path().join("wh");
        std::fs::write(&wh, "  webhook-secret-value \n").unwrap();
        let s = Secrets::load(Some(&creds), Some(&file), Some(&wh)).unwrap();
        assert_eq!(s.token.as_deref(), Some("from-credentials"));
        assert_eq!(s.webhook_secret.as_deref(), Some("webhook-secret-value"));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("from-credentials"), "{dbg}");
        assert_eq!(
            s.redactor()
                .redact("x from-credentials y webhook-secret-value"),
            "x [REDACTED] y [REDACTED]"
        );
    }

    #[test]
    fn missing_configured_file_and_short_secret_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = Secrets::load(None, Some(&dir.path().join("nope")), None).unwrap_err();
        assert!(err.to_string().contains("forge.token_file"), "{err}");
        let short = dir.path().join("short");
        std::fs::write(&short, "abc").unwrap();
        let err = Secrets::load(None, None, Some(&short)).unwrap_err();
        assert!(err.to_string().contains("fewer than 8"), "{err}");
        let none = Secrets::load(None, None, None).unwrap();
        assert!(none.token.is_none() && none.webhook_secret.is_none());
    }
}
