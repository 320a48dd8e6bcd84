//! Where the stand-in keeps state, like abra: `$ABRA_DIR` (default `~/.abra`) with `servers/`,
//! `recipes/` and (stand-in only) `backups/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub struct AbraDir {
    root: PathBuf,
}

impl AbraDir {
    pub fn from_env() -> Result<AbraDir> {
        let root = match std::env::var_os("ABRA_DIR").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => {
                let home = std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .context("neither ABRA_DIR nor HOME is set: set ABRA_DIR")?;
                PathBuf::from(home).join(".abra")
            }
        };
        Ok(AbraDir { root })
    }

    pub fn servers(&self) -> PathBuf {
        self.root.join("servers")
    }

    pub fn recipe(&self, recipe: &str) -> Result<PathBuf> {
        check_name("recipe", recipe)?;
        Ok(self.root.join("recipes").join(recipe))
    }

    pub fn backups(&self, domain: &str) -> Result<PathBuf> {
        check_name("domain", domain)?;
        Ok(self.root.join("backups").join(domain))
    }

    pub fn env_file_for_new(&self, server: &str, domain: &str) -> Result<PathBuf> {
        check_name("server", server)?;
        check_name("domain", domain)?;
        let dir = self.servers().join(server);
        if !dir.is_dir() {
            bail!(
                "server `{server}` is unknown (no {}): add it first, e.g. `abra server add --local`",
                dir.display()
            );
        }
        Ok(dir.join(format!("{domain}.env")))
    }

    /// The env file of an existing app, on whichever server it was created.
    pub fn env_file(&self, domain: &str) -> Result<PathBuf> {
        check_name("domain", domain)?;
        let servers = self.servers();
        let entries = std::fs::read_dir(&servers).with_context(|| {
            format!(
                "app `{domain}` does not exist: cannot read {}",
                servers.display()
            )
        })?;
        for e in entries.flatten() {
            let p = e.path().join(format!("{domain}.env"));
            if p.is_file() {
                return Ok(p);
            }
        }
        bail!(
            "app `{domain}` does not exist: no {domain}.env under {}",
            servers.display()
        )
    }
}

/// Names become path segments: refuse anything that could leave the intended directory.
fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        bail!("invalid {what} `{name}`: use letters, digits, `.`, `-` and `_` only");
    }
    Ok(())
}

/// Stack name of an app: its domain with `.` replaced by `_`.
pub fn stack_name(domain: &str) -> String {
    domain.replace('.', "_")
}

pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_names_and_path_safety() {
        assert_eq!(stack_name("web-ab12cd.ci.test"), "web-ab12cd_ci_test");
        assert!(check_name("domain", "web-ab12cd.ci.test").is_ok());
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_name("domain", bad).is_err(), "{bad}");
        }
    }
}
