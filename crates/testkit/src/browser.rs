//! A browser session for page tests: a minimal W3C WebDriver client (the handful of commands
//! the page tests use) over reqwest, driving Debian's `chromedriver` and headless `chromium`
//! (installed by scripts/setup-swarm).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cmd::free_port;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The flags the browser always runs with: headless, no sandbox (tests run as root), and none
/// of the background traffic a fresh profile would otherwise send out.
const FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=1100,900",
];

/// A chromedriver process and one browser session; both killed on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Self {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: run scripts/setup-swarm (installs chromium and chromium-driver)"
            );
        }
        let port = free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so that the browser it starts can be killed with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd.spawn().expect("cannot start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver on port {port} did not report ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let v = b.call(reqwest::Method::POST, "/session", Some(caps)).await;
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session from chromedriver: {v}"))
            .to_string();
        b
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("webdriver {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "webdriver {path}: HTTP {status}: {v}");
        v.get("value").cloned().unwrap_or(Value::Null)
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub async fn goto(&self, url: &str) {
        self.call(
            reqwest::Method::POST,
            &self.s("/url"),
            Some(json!({ "url": url })),
        )
        .await;
    }

    /// Run `script` (a function body; `arguments` are the args) in the page, return its value.
    pub async fn js(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    pub async fn text(&self, css: &str) -> String {
        let script = format!(
            "var e = document.querySelector({}); return e ? e.textContent : null;",
            serde_json::to_string(css).unwrap()
        );
        self.js(&script).await.as_str().unwrap_or("").to_string()
    }

    /// Wait until `script` returns true, or fail naming `what` and what the page showed.
    pub async fn wait_for(&self, what: &str, secs: u64, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.text("body").await;
                panic!("timed out after {secs} s waiting for {what}; the page showed:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Make the window as tall as the page (at most `max` pixels), so one screenshot shows it.
    pub async fn fit_height(&self, max: u64) {
        let h = self
            .js("return document.body.scrollHeight")
            .await
            .as_u64()
            .unwrap_or(900);
        self.call(
            reqwest::Method::POST,
            &self.s("/window/rect"),
            Some(json!({"width": 1100, "height": (h + 140).min(max)})),
        )
        .await;
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        let v = self
            .call(reqwest::Method::GET, &self.s("/screenshot"), None)
            .await;
        base64_decode(v.as_str().expect("screenshot is not a string"))
    }

    pub async fn close(mut self) {
        let path = self.s("");
        self.call(reqwest::Method::DELETE, &path, None).await;
        self.kill();
    }

    fn kill(&mut self) {
        // The driver leads its own process group: the browser it started goes with it.
        if let Some(group) = i32::try_from(self.driver.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64_round_trip() {
        assert_eq!(base64_decode("aGVsbG8="), b"hello");
        assert_eq!(base64_decode("aGk="), b"hi");
        assert_eq!(base64_decode("YWJj"), b"abc");
    }
}
