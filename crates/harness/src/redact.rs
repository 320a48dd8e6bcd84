//! Secret values and their removal from every text that leaves the process (progress lines,
//! abra output, reports, diagnostics). Values are learnt as they appear (generated app secrets)
//! or registered up front (forge token, webhook secret).

use std::sync::{Arc, RwLock};

/// What a secret value is replaced with, everywhere (the daemon uses this redactor too).
pub const MASK: &str = "[REDACTED]";

/// Names of the systemd credentials holding the forge token and the webhook secret (the daemon
/// reads the same names).
pub const FORGE_TOKEN_CREDENTIAL: &str = "forge-token";
pub const WEBHOOK_SECRET_CREDENTIAL: &str = "webhook-secret";

/// The environment variable naming the descriptor on which the daemon hands a run the values
/// it must mask (the run's environment itself never holds them).
pub const SECRETS_FD_ENV: &str = "CC_CI_SECRETS_FD";

/// Shared, cheap to clone; every clone sees every value registered anywhere.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    values: Arc<RwLock<Vec<String>>>,
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a secret value. Very short values are ignored: masking every `a` would make
    /// reports unreadable and protects nothing.
    pub fn add(&self, value: &str) {
        let v = value.trim();
        if v.len() < 4 {
            return;
        }
        if let Ok(mut values) = self.values.write()
            && !values.iter().any(|x| x == v)
        {
            values.push(v.to_string());
            // Longest first, so a secret containing another is masked whole.
            values.sort_by_key(|x| std::cmp::Reverse(x.len()));
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let Ok(values) = self.values.read() else {
            return text.to_string();
        };
        let mut out = text.to_string();
        for v in values.iter() {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        out
    }

    /// Learns the forge token and the webhook secret the way the daemon reads them: the
    /// systemd credentials (`$CREDENTIALS_DIRECTORY/forge-token`, `webhook-secret`) and
    /// `files`, the secret files the config names (`forge.token_file`, `forge.webhook_secret_file`:
    /// the config's `[forge]` belongs to the daemon, so its edge hands over only these paths). A
    /// run never needs the values, but a recipe can echo whatever reaches it, and every file a
    /// run writes is served to the pull request. Unreadable files teach nothing (the daemon
    /// refuses to start without them; a run by hand may not have them).
    pub fn learn_forge_secrets(
        &self,
        files: &[std::path::PathBuf],
        credentials_directory: Option<&std::path::Path>,
    ) {
        let creds = credentials_directory
            .into_iter()
            .flat_map(|d| [FORGE_TOKEN_CREDENTIAL, WEBHOOK_SECRET_CREDENTIAL].map(|n| d.join(n)));
        for f in creds.chain(files.iter().cloned()) {
            if let Ok(v) = crate::safefs::read_regular(&f, &f.display().to_string(), 64 << 10, true)
            {
                self.add(&v);
            }
        }
    }

    /// Learns the values the daemon hands a run on an inherited pipe (one per line): under
    /// systemd the run's environment has no `CREDENTIALS_DIRECTORY`, so this is how it knows
    /// what to mask. `fd` is the value of [`SECRETS_FD_ENV`]; the descriptor is closed after.
    pub fn learn_from_fd(&self, fd: Option<&str>) {
        use std::os::fd::FromRawFd;
        let Some(fd) = fd.and_then(|v| v.trim().parse::<i32>().ok()) else {
            return;
        };
        // Never stdin/stdout/stderr; and only a descriptor that is open.
        if fd < 3 || !std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists() {
            return;
        }
        // SAFETY: taking ownership of an inherited descriptor by number cannot be done safely;
        // the daemon passed this one for us alone, and it is read once and closed.
        #[allow(unsafe_code)]
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        if let Ok(text) = crate::safefs::read_capped(f, "the secrets pipe", 64 << 10) {
            for line in text.lines() {
                self.add(line);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.values.read().map(|v| v.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes ANSI escape sequences (colours, cursor movement) and carriage returns from terminal output.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    // CSI: parameters and intermediates up to a final byte in @..~
                    for n in chars.by_ref() {
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    chars.next();
                    // OSC: up to BEL or ST (ESC \)
                    while let Some(n) = chars.next() {
                        if n == '\u{7}' {
                            break;
                        }
                        if n == '\u{1b}' {
                            chars.next();
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn masks_every_registered_value_in_every_clone() {
        let r = Redactor::new();
        let r2 = r.clone();
        r.add("s3cret-value");
        r.add("abc"); // too short, ignored
        r2.add("s3cret-value-longer");
        assert_eq!(
            r.redact("x s3cret-value-longer y s3cret-value"),
            format!("x {MASK} y {MASK}")
        );
        assert_eq!(r.redact("abc"), "abc");
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn learns_the_forge_secrets_from_the_configured_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("token"), "tok-3f9a8b7c6d\n").unwrap();
        std::fs::write(d.path().join("hook"), "  hook-secret-xyz  ").unwrap();
        let files = [d.path().join("token"), d.path().join("hook")];
        let r = Redactor::new();
        r.learn_forge_secrets(&files, None);
        assert_eq!(
            r.redact("a tok-3f9a8b7c6d b hook-secret-xyz"),
            format!("a {MASK} b {MASK}")
        );
        // Missing files teach nothing and do not fail.
        let r = Redactor::new();
        r.learn_forge_secrets(&[d.path().join("missing")], None);
        assert!(r.is_empty());
        // The systemd credentials are read too.
        let creds = d.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join(FORGE_TOKEN_CREDENTIAL), "cred-token-1234\n").unwrap();
        let r = Redactor::new();
        r.learn_forge_secrets(&[], Some(&creds));
        assert_eq!(r.redact("x cred-token-1234"), format!("x {MASK}"));
    }

    #[test]
    fn learns_values_from_an_inherited_pipe_and_closes_it() {
        use std::io::Write;
        use std::os::fd::IntoRawFd;
        let (r, mut w) = std::io::pipe().unwrap();
        w.write_all(b"pipe-token-123\npipe-hook-456\n").unwrap();
        drop(w);
        let fd = r.into_raw_fd();
        let red = Redactor::new();
        red.learn_from_fd(Some(&fd.to_string()));
        assert_eq!(
            red.redact("pipe-token-123 pipe-hook-456"),
            format!("{MASK} {MASK}")
        );
        // The descriptor is closed now: /proc no longer lists it.
        assert!(!Path::new(&format!("/proc/self/fd/{fd}")).exists());
        // Nothing, garbage, or a standard descriptor: nothing learnt, nothing closed.
        for v in [None, Some("x"), Some("1")] {
            let r = Redactor::new();
            r.learn_from_fd(v);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn strips_colours_and_cursor_codes() {
        assert_eq!(strip_ansi("\u{1b}[1;32mok\u{1b}[0m\r\n"), "ok\n");
        assert_eq!(strip_ansi("\u{1b}]0;title\u{7}x"), "x");
        assert_eq!(strip_ansi("\u{1b}[?25ldone"), "done");
        assert_eq!(strip_ansi("tail\u{1b}"), "tail");
    }
}
