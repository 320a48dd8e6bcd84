//! `cc-ci serve` refuses what it could never bind before touching anything.

use std::path::PathBuf;
use std::process::Command;

fn cc_ci() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cc-ci"))
}

/// `--listen` gets the same check as `daemon.listen` in the config (systemd's rule: no host
/// names, port 1–65535): exit 2 naming the flag, no daemon started.
#[test]
fn serve_refuses_a_listen_flag_systemd_would_refuse() {
    for bad in ["localhost:8088", "0.0.0.0:99999", "::1:8088"] {
        let out = Command::new(cc_ci())
            .args(["serve", "--listen", bad])
            .env(
                "STATE_DIRECTORY",
                std::env::temp_dir().join("cc-ci-serve-args-unused"),
            )
            .output()
            .expect("run cc-ci serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--listen"), "{bad}: {stderr}");
    }
}
