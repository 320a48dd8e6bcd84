//! The listen addresses cc-ci accepts for `daemon.listen`: `IPv4:port`, `[IPv6]:port` (port
//! 1–65535) or an absolute unix-socket path. The NixOS module's socket unit takes the same value,
//! and systemd refuses at activation what its own parser does not know (`localhost:8088`, port
//! 99999), so `check-config` refuses it first. `nixos/listen.nix` is the module's copy of this
//! rule; both are held to `tests/listen-cases.json` (crates/daemon/tests/nix_agreement.rs and
//! scripts/check-nix).

use std::net::{Ipv4Addr, Ipv6Addr};

/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_UNIX_PATH_BYTES: usize = 107;

/// Why `s` is not a listen address cc-ci accepts, or `Ok` when it is one.
pub fn check(s: &str) -> Result<(), String> {
    let shape = "use `IPv4:port` (e.g. `127.0.0.1:8088`), `[IPv6]:port` (e.g. `[::1]:8088`) or an absolute unix-socket path";
    if s.starts_with('/') {
        return check_unix_path(s);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, port)) = rest.split_once("]:") else {
            return Err(format!("`{s}` is not a listen address: {shape}"));
        };
        // Rust's parser rejects zone ids (`%eth0`), which the daemon could not bind either.
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`{addr}` in `{s}` is not an IPv6 address"));
        }
        (addr, port)
    } else {
        let Some((addr, port)) = s.split_once(':') else {
            return Err(format!("`{s}` is not a listen address: {shape}"));
        };
        if !is_ipv4(addr) {
            return Err(format!(
                "`{addr}` in `{s}` is not an IPv4 address (host names are not accepted): {shape}"
            ));
        }
        (addr, port)
    };
    if !is_port(port) {
        return Err(format!(
            "the port of `{s}` (after `{host}`) must be a number from 1 to 65535 without leading zeros"
        ));
    }
    Ok(())
}

/// Dotted decimal without leading zeros (as systemd's `inet_pton` reads it).
fn is_ipv4(s: &str) -> bool {
    s.split('.')
        .all(|octet| octet.len() == 1 || !octet.starts_with('0'))
        && s.parse::<Ipv4Addr>().is_ok()
}

/// Digits only: `u16::from_str` alone would also take `+80` and `080`.
fn is_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && !p.starts_with('0')
        && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
}

fn check_unix_path(s: &str) -> Result<(), String> {
    if s.len() < 2 {
        return Err(format!(
            "`{s}` names no socket file: give a path such as `/run/cc-ci/http.sock`"
        ));
    }
    if s.len() > MAX_UNIX_PATH_BYTES {
        return Err(format!(
            "the unix-socket path `{s}` is {} bytes long; at most {MAX_UNIX_PATH_BYTES} fit in a socket address",
            s.len()
        ));
    }
    if s.bytes().any(|b| b == b' ' || b.is_ascii_control()) {
        return Err(format!(
            "the unix-socket path {s:?} contains a space or a control character"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_shapes() {
        for ok in [
            "127.0.0.1:8088",
            "0.0.0.0:1",
            "10.0.0.5:65535",
            "[::]:8088",
            "[::1]:8088",
            "[::ffff:192.0.2.1]:80",
            "[1:2:3:4:5:6:7:8]:80",
            "/run/cc-ci/http.sock",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_what_systemd_or_the_daemon_would_refuse() {
        for bad in [
            "",
            "localhost:8088",
            "0.0.0.0:99999",
            "::1:8088",
            "127.0.0.1:0",
            "127.0.0.1:080",
            "127.0.0.1:+80",
            "01.2.3.4:80",
            "8088",
            "[::1]",
            "[fe80::1%eth0]:80",
            "[127.0.0.1]:80",
            "[1::2::3]:80",
            "/",
            "/a b",
            "relative.sock",
            "@abstract",
        ] {
            assert!(check(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn unix_path_length_is_bounded_by_sun_path() {
        let longest = format!("/{}", "a".repeat(MAX_UNIX_PATH_BYTES - 1));
        assert_eq!(check(&longest), Ok(()));
        let too_long = format!("{longest}a");
        let err = check(&too_long).unwrap_err();
        assert!(err.contains("108 bytes"), "{err}");
    }

    #[test]
    fn check_config_refuses_a_bad_listen_naming_the_key() {
        let path = std::path::Path::new("c.toml");
        let err = crate::config::Config::parse("[daemon]\nlisten = \"localhost:8088\"\n", path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("daemon.listen") && err.contains("localhost"),
            "{err}"
        );
        let ok = crate::config::Config::parse("[daemon]\nlisten = \"[::]:8088\"\n", path);
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn errors_say_what_to_write() {
        let err = check("localhost:8088").unwrap_err();
        assert!(
            err.contains("localhost") && err.contains("127.0.0.1:8088"),
            "{err}"
        );
        let err = check("0.0.0.0:99999").unwrap_err();
        assert!(err.contains("1 to 65535"), "{err}");
    }
}
