//! A bounded, stable-toolchain fuzz run of every cc-ci fuzz target: no coverage feedback (that
//! needs libFuzzer and nightly), but a seeded mutator over the seed corpus (`seeds/<target>/`)
//! and a per-target dictionary of tokens, for a fixed time per target. A panic is a finding: the
//! input is written to `artifacts/<target>/smoke-crash-<hash>` and the run exits 1.
//!
//!   cargo run --release --no-default-features --features smoke --bin fuzz-smoke -- \
//!       [--secs N] [--seed S] [--execs N] [target ...]
//!
//! The same seed and `--execs` give the same inputs, so a crash that aborts the process (a stack
//! overflow cannot be caught) is reproducible from the seed and the last progress line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: small, fast, and the same sequence for the same seed everywhere.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn dictionary(target: &str) -> Vec<&'static [u8]> {
    let common: [&[u8]; 16] = [
        b"\n",
        b"\r\n",
        b" ",
        b"\t",
        b"\"",
        b"'",
        b"\\",
        b"#",
        b"=",
        b":",
        b",",
        b"\0",
        b"\xff",
        b"\xe2\x94\x82",
        b"-1",
        b"18446744073709551616",
    ];
    let specific: &[&[u8]] = match target {
        "webhook" => &[
            b"{",
            b"}",
            b"[",
            b"]",
            b"null",
            b"true",
            b"\"action\":\"created\"",
            b"\"is_pull\":true",
            b"\"pull_request\":{}",
            b"\"full_name\":\"a/b\"",
            b"\"login\":\"alice\"",
            b"\"body\":\"!testme\"",
            b"\"number\":1",
            b"\"id\":7",
            b"\"sha\":\"0123456789abcdef\"",
            b"\"action\":\"synchronized\"",
            b"\\u0000",
            b"\\ud800",
            b"1e999",
            b"9223372036854775808",
        ],
        "trigger_command" => &[
            b"!testme",
            b"!testme ",
            b"install",
            b"upgrade",
            b"backup",
            b"restore",
            b",",
            b"> ",
            b"\xc2\xa0",
            b"\xe2\x80\x83",
            b"!testmexyz",
        ],
        "overlay" => &[
            b"[[check]]",
            b"[[data]]",
            b"name = \"x\"",
            b"tiers = [\"install\"]",
            b"service = \"app\"",
            b"kind = \"http\"",
            b"kind = \"exec\"",
            b"port = 80",
            b"port = 70000",
            b"path = \"/\"",
            b"command = [\"true\"]",
            b"seed = [\"a\"]",
            b"verify = [\"b\"]",
            b"expect = \"\"",
            b"skip_tiers = [\"upgrade\"]",
            b"canaries = false",
            b"[",
            b"]",
            b"{",
            b"}",
            b"'''",
            b"\"\"\"",
        ],
        "config" => &[
            b"[harness]",
            b"[daemon]",
            b"[forge]",
            b"domain_suffix = \"ci.local\"",
            b"poll_interval_ms = 0",
            b"concurrency = 0",
            b"max_body_bytes = 1023",
            b"url = \"http://x\"",
            b"token_file = \"/nix/store/x\"",
            b"work_dir = \"\"",
            b"repo_allowlist = [\"a/b\"]",
            b"9223372036854775807",
            b"-9223372036854775808",
            b"[",
            b"]",
            b"{",
            b"}",
            b"'''",
            b"\"\"\"",
            b"1979-05-27T07:32:00Z",
            b"inf",
            b"nan",
        ],
        "compose_env" => &[
            b"services:",
            b"volumes:",
            b"  app:",
            b"    image: x",
            b"- ",
            b"&a ",
            b"*a",
            b"<<: *a",
            b"!!binary",
            b"!!str",
            b"---",
            b"...",
            b"{",
            b"}",
            b"[",
            b"]",
            b"? ",
            b"COMPOSE_FILE=",
            b"compose.yml:compose.x.yml",
            b"export ",
            b"SECRET_X_VERSION=v1",
            b" # length=",
            b"TYPE=web",
            b"$COMPOSE_FILE",
            b"${",
            b":-",
            b"\\$",
            b"\"a # b\"",
            b" # generate=false",
            b"TYPE=web:v1.2.3+4",
        ],
        _ => &[],
    };
    common
        .iter()
        .copied()
        .chain(specific.iter().copied())
        .collect()
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], dict: &[&[u8]]) {
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 | 3 => {
                let tok = dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, tok.iter().copied());
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            5 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = input[a..b].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, chunk);
            }
            6 if !corpus.is_empty() => {
                // Splice: a head of this input with a tail of another.
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            7 => {
                // Deep nesting and long runs: what recursive parsers choke on.
                let tok = dict[rng.below(dict.len())];
                let cap = if rng.below(4) == 0 { 5000 } else { 64 };
                let times = 1 + rng.below(cap);
                let at = rng.below(len + 1);
                let run: Vec<u8> = tok
                    .iter()
                    .copied()
                    .cycle()
                    .take(tok.len() * times)
                    .collect();
                input.splice(at..at, run);
            }
            8 if len > 0 => {
                input.truncate(rng.below(len));
            }
            _ => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
        }
        // Bounded like the daemon bounds bodies: larger inputs test nothing new.
        input.truncate(256 * 1024);
    }
}

fn load_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn usage() -> ! {
    eprintln!("usage: fuzz-smoke [--secs N] [--seed S] [--execs N] [target ...]");
    eprintln!("targets: {}", cc_ci_fuzz::TARGETS.join(" "));
    std::process::exit(2)
}

fn main() {
    let mut secs = 10u64;
    let mut seed = 0x5eed_ccc1_u64;
    let mut max_execs = u64::MAX;
    let mut targets = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--secs" => secs = num(),
            "--seed" => seed = num(),
            "--execs" => max_execs = num(),
            t if cc_ci_fuzz::TARGETS.contains(&t) => targets.push(t.to_string()),
            _ => usage(),
        }
    }
    if targets.is_empty() {
        targets = cc_ci_fuzz::TARGETS.iter().map(|t| t.to_string()).collect();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Panics are reported once, with the input saved; the default hook would print each one.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for target in &targets {
        let seeds = load_seeds(&root.join("seeds").join(target));
        let dict = dictionary(target);
        let mut corpus = seeds.clone();
        if corpus.is_empty() {
            corpus.push(Vec::new());
        }
        let mut rng = Rng(seed ^ fnv(target.as_bytes()) | 1);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        let mut execs = 0u64;
        // The seeds themselves first, unmutated.
        let mut pending: Vec<Vec<u8>> = corpus.clone();
        while execs < max_execs && (Instant::now() < deadline || !pending.is_empty()) {
            let input = pending.pop().unwrap_or_else(|| {
                let mut i = corpus[rng.below(corpus.len())].clone();
                mutate(&mut rng, &mut i, &corpus, &dict);
                i
            });
            execs += 1;
            let result = std::panic::catch_unwind(|| cc_ci_fuzz::run(target, &input));
            if let Err(panic) = result {
                let msg = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(non-string panic)");
                let dir = root.join("artifacts").join(target);
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("smoke-crash-{:016x}", fnv(&input)));
                let _ = std::fs::write(&file, &input);
                eprintln!(
                    "{target}: CRASH after {execs} execs (seed {seed}): {msg}\n  input saved to {}\n  reproduce: cargo fuzz run {target} {}  (or: fuzz-smoke --seed {seed} --execs {execs} {target})",
                    file.display(),
                    file.display()
                );
                failed = true;
                break;
            }
            // Keep some mutants as bases, so mutations stack up over the run.
            if rng.below(64) == 0 {
                if corpus.len() < 4096 {
                    corpus.push(input);
                } else {
                    let i = rng.below(corpus.len() - seeds.len()) + seeds.len();
                    corpus[i] = input;
                }
            }
            if execs.is_multiple_of(1_000_000) {
                eprintln!(
                    "{target}: {execs} execs, {:.0} s",
                    start.elapsed().as_secs_f64()
                );
            }
        }
        let el = start.elapsed().as_secs_f64();
        println!(
            "{target}: {execs} execs in {el:.1} s ({:.0}/s), {} seeds, seed {seed}: {}",
            execs as f64 / el.max(1e-9),
            seeds.len(),
            if failed { "CRASH" } else { "ok" }
        );
        if failed {
            break;
        }
    }
    std::process::exit(if failed { 1 } else { 0 });
}
