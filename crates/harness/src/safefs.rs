//! Reading files a pull request controls, safely: only regular files inside the checkout, never
//! through a symlink, never a FIFO or a device, and never more than a size cap (a compose file
//! that is `/dev/zero` must be a clear refusal, not an out-of-memory abort or a hang).

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path};

/// Largest file cc-ci reads from a recipe (compose files, env files, overlays, scripts).
pub const RECIPE_FILE_CAP: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SafeError {
    #[error("{path}: {problem}")]
    Refused { path: String, problem: String },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn refused(path: &str, problem: impl Into<String>) -> SafeError {
    SafeError::Refused {
        path: path.into(),
        problem: problem.into(),
    }
}

/// What kind of thing a path is, in words, for errors.
fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Checks that `rel` names a regular file inside `root` reached without any symlink. `Ok(false)`
/// when it does not exist (the caller decides whether that is an error).
pub fn check_inside(root: &Path, rel: &str) -> Result<bool, SafeError> {
    let p = Path::new(rel);
    if rel.is_empty()
        || p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(refused(rel, "points outside the recipe's checkout"));
    }
    let mut at = root.to_path_buf();
    let parts: Vec<_> = p
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    for (i, c) in parts.iter().enumerate() {
        at.push(c);
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(SafeError::Io {
                    path: rel.into(),
                    source: e,
                });
            }
        };
        let ft = meta.file_type();
        let last = i + 1 == parts.len();
        if ft.is_symlink() {
            return Err(refused(
                rel,
                "is reached through a symbolic link: cc-ci reads only regular files inside the checkout",
            ));
        }
        if last && !ft.is_file() {
            return Err(refused(
                rel,
                format!("is {}, not a regular file", kind_of(&ft)),
            ));
        }
        if !last && !ft.is_dir() {
            return Err(refused(rel, format!("{} is not a directory", at.display())));
        }
    }
    Ok(true)
}

/// Most entries [`escaping_links`] looks at: a checkout larger than this is refused rather than
/// walked for ever.
pub const TREE_ENTRY_CAP: usize = 100_000;

/// Symbolic links anywhere in the checkout (outside `.git`) that point out of it, and entries
/// that are neither files, directories nor symlinks (git creates none): abra reads the checkout
/// too (`abra.sh`, release notes, files the compose file names), so none may lead off it.
/// Returns `path: why` for each, relative to `root`.
pub fn escaping_links(root: &Path) -> Result<Vec<String>, SafeError> {
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut dirs = vec![std::path::PathBuf::new()];
    while let Some(rel_dir) = dirs.pop() {
        let entries = std::fs::read_dir(root.join(&rel_dir)).map_err(|e| SafeError::Io {
            path: rel_dir.display().to_string(),
            source: e,
        })?;
        for entry in entries.flatten() {
            seen += 1;
            if seen > TREE_ENTRY_CAP {
                return Err(refused(
                    ".",
                    format!("the checkout has more than {TREE_ENTRY_CAP} files and directories"),
                ));
            }
            let rel = rel_dir.join(entry.file_name());
            if rel == Path::new(".git") {
                continue;
            }
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                dirs.push(rel);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(root.join(&rel)).unwrap_or_default();
                if !stays_inside(&rel, &target) {
                    out.push(format!(
                        "{}: is a symbolic link to `{}`, outside the checkout",
                        rel.display(),
                        target.display()
                    ));
                }
            } else if !ft.is_file() {
                out.push(format!("{}: is {}", rel.display(), kind_of(&ft)));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a link at `link` (relative to the root) to `target` resolves, lexically, inside the
/// root. Absolute targets never do (the checkout's own absolute path is not stable).
fn stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: Vec<&std::ffi::OsStr> = link
        .parent()
        .into_iter()
        .flat_map(|p| p.components())
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    for c in target.components() {
        match c {
            Component::Normal(n) => depth.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Reads `rel` inside `root` (see [`check_inside`]) up to `cap` bytes; `Ok(None)` when missing.
pub fn read_inside(root: &Path, rel: &str, cap: u64) -> Result<Option<String>, SafeError> {
    if !check_inside(root, rel)? {
        return Ok(None);
    }
    read_regular(&root.join(rel), rel, cap, false).map(Some)
}

/// Reads a regular file of at most `cap` bytes. With `follow` false the last component must not
/// be a symlink (`O_NOFOLLOW`); the file is opened non-blocking so a FIFO swapped in after a
/// check cannot hang the run, then checked again on the open descriptor.
pub fn read_regular(path: &Path, shown: &str, cap: u64, follow: bool) -> Result<String, SafeError> {
    let io = |e: std::io::Error| SafeError::Io {
        path: shown.into(),
        source: e,
    };
    let mut flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC;
    if !follow {
        flags |= rustix::fs::OFlags::NOFOLLOW;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                refused(shown, "is a symbolic link: cc-ci reads only regular files")
            } else {
                io(e)
            }
        })?;
    let meta = f.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(refused(
            shown,
            format!("is {}, not a regular file", kind_of(&meta.file_type())),
        ));
    }
    read_capped(f, shown, cap)
}

/// Reads at most `cap` bytes from `r`; more is an error that says what the cap is.
pub fn read_capped(r: impl Read, shown: &str, cap: u64) -> Result<String, SafeError> {
    let mut buf = Vec::new();
    r.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| SafeError::Io {
            path: shown.into(),
            source: e,
        })?;
    if buf.len() as u64 > cap {
        return Err(refused(
            shown,
            format!(
                "is larger than cc-ci's limit of {} for this kind of file",
                human(cap)
            ),
        ));
    }
    String::from_utf8(buf).map_err(|_| refused(shown, "is not UTF-8 text"))
}

/// `1 MiB`, `64 KiB`, `100 bytes`.
pub fn human(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A FIFO at `path` (a file that would block a reader forever).
    pub(crate) fn mkfifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
    }

    #[test]
    fn only_regular_files_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("recipe");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("compose.yml"), "services: {}\n").unwrap();
        std::fs::write(root.join("sub/x.yml"), "a").unwrap();
        std::fs::write(d.path().join("outside.yml"), "secret").unwrap();
        symlink(d.path().join("outside.yml"), root.join("link.yml")).unwrap();
        symlink("compose.yml", root.join("inner-link.yml")).unwrap();
        symlink(d.path(), root.join("dirlink")).unwrap();
        let fifo = root.join("fifo.yml");
        mkfifo(&fifo);
        symlink("/dev/zero", root.join("zero.yml")).unwrap();

        assert_eq!(
            read_inside(&root, "compose.yml", 100).unwrap().as_deref(),
            Some("services: {}\n")
        );
        assert_eq!(
            read_inside(&root, "./sub/x.yml", 100).unwrap().as_deref(),
            Some("a")
        );
        assert_eq!(read_inside(&root, "missing.yml", 100).unwrap(), None);
        for (rel, why) in [
            ("link.yml", "symbolic link"),
            ("inner-link.yml", "symbolic link"),
            ("dirlink/outside.yml", "symbolic link"),
            ("fifo.yml", "FIFO"),
            ("zero.yml", "symbolic link"),
            ("sub", "directory"),
            ("../outside.yml", "outside"),
            ("/etc/passwd", "outside"),
            ("compose.yml/x", "not a directory"),
        ] {
            let e = read_inside(&root, rel, 100).unwrap_err().to_string();
            assert!(e.contains(why) && e.starts_with(rel), "{rel}: {e}");
        }
    }

    #[test]
    fn links_leaving_the_checkout_are_found_anywhere_in_it() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("recipe");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("abra.sh"), "x").unwrap();
        symlink("/etc/shadow", root.join("a/b/abs")).unwrap();
        symlink("../../../outside", root.join("a/b/up")).unwrap();
        symlink("../../abra.sh", root.join("a/b/inner")).unwrap();
        symlink("./x/../../abra.sh", root.join("a/ok")).unwrap();
        symlink("/etc/passwd", root.join(".git/ignored")).unwrap();
        let found = escaping_links(&root).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("a/b/abs: is a symbolic link to `/etc/shadow`"));
        assert!(found[1].starts_with("a/b/up:"));
        assert!(stays_inside(
            Path::new("a/ok"),
            Path::new("./x/../../abra.sh")
        ));
        assert!(!stays_inside(Path::new("top"), Path::new("..")));
    }

    #[test]
    fn size_caps_are_errors_not_allocations() {
        let e = read_regular(Path::new("/dev/zero"), "/dev/zero", 10, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("device"), "{e}");
        let e = read_capped(std::io::repeat(b'x'), "stream", 1 << 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than") && e.contains("1 KiB"), "{e}");
        assert_eq!(read_capped(&b"abc"[..], "s", 3).unwrap(), "abc");
        let e = read_capped(&[0xffu8, 0xfe][..], "s", 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("UTF-8"), "{e}");
    }
}
