//! What a result was made of: the inputs of a run (commit, base release, image digests, abra,
//! cc-ci, overlay and the config that changes what is checked), recorded in `run.json` and
//! resolved again later without deploying, so [`crate::fresh`] can tell whether the result still
//! holds.
//!
//! One function ([`resolve_at`]) computes the inputs both for a run (recorded) and for reuse and
//! drift (current), so the two can only differ when the world did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::appconfig::{interpolate, parse_env};
use crate::config::HarnessConfig;
use crate::contract::Stage;
use crate::engine::Engine;
use crate::overlay;
use crate::recipe::{self, Checkout};
use crate::swarm::Swarm;

// The recorded inputs are part of `run.json`, so their types live with the report's; they are
// re-exported here, where they are resolved.
pub use crate::report::{Inputs, ServiceImage};

/// This build of cc-ci: the crate version, and the source revision when the build was given one
/// (`CC_CI_REVISION`, set by the Nix build), so a new build of the same version is told apart.
pub fn cc_ci_version() -> String {
    match option_env!("CC_CI_REVISION") {
        Some(rev) if !rev.is_empty() => format!("{} ({rev})", env!("CARGO_PKG_VERSION")),
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// The config that changes what a run of `recipe` from `source` checks (not where or how fast it
/// runs): generic checks on or off, repo-local tests allowed, compose-policy allowances, the
/// convergence and stability windows, the HTTP probe image. As canonical JSON.
pub fn checked_config(config: &HarnessConfig, recipe: &str, source: &str) -> String {
    let h = config;
    let repo = overlay::repo_of_source(source);
    let allow = repo
        .as_ref()
        .and_then(|r| h.compose_allow.get(r))
        .cloned()
        .unwrap_or_default();
    serde_json::json!({
        "skip_generic": h.skip_generic.iter().any(|r| r == recipe),
        "repo_local_allowed": overlay::repo_local_allowed(&h.repo_local_allowlist, source),
        "compose_allow": allow,
        "converge_timeout_secs": h.converge_timeout_secs,
        "stability_window_secs": h.stability_window_secs,
        "http_probe_image": h.http_probe_image,
    })
    .to_string()
}

/// `source` without the `user:password@` of a URL (it is recorded in run.json).
pub fn public_source(source: &str) -> String {
    match source.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if path.is_empty() && !rest.contains('/') {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{path}")
            }
        }
        None => source.to_string(),
    }
}

/// Overlays shipped with cc-ci: `CC_CI_OVERLAYS`, else `overlays/` beside the binary's share
/// directory (packaged), else the source tree's `overlays/` (development). The one definition:
/// a run and the daemon's reuse must read the same overlays.
pub fn shipped_overlays(host: &crate::hostenv::HostEnv) -> Option<PathBuf> {
    if let Some(d) = &host.overlays {
        return Some(d.clone());
    }
    let exe = host.current_exe.as_deref()?;
    let packaged = exe.parent()?.parent()?.join("share/cc-ci/overlays");
    if packaged.is_dir() {
        return Some(packaged);
    }
    let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../overlays");
    dev.is_dir().then_some(dev)
}

/// What `abra --version` says for the abra a run would use (`--abra`, `CC_CI_ABRA`,
/// `harness.abra`, else `abra` on PATH); `None` when it cannot be run.
pub async fn abra_version(
    flag: Option<&str>,
    config: &HarnessConfig,
    scratch: &Path,
    host: &crate::hostenv::HostEnv,
) -> Option<String> {
    let bin = crate::abra::resolve_binary(flag, config.abra.as_deref(), host).ok()?;
    let abra = crate::abra::Abra::new(
        bin,
        scratch.join("abra-version"),
        std::time::Duration::from_secs(config.abra_timeout_secs.min(60)),
        crate::redact::Redactor::new(),
    );
    abra.version().await.ok().filter(|v| !v.is_empty())
}

fn sha256(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    #[error("{0}")]
    Recipe(#[from] recipe::RecipeError),
    #[error("overlay error: {0}")]
    Overlay(#[from] overlay::OverlayError),
    #[error("{0}")]
    Io(String),
}

/// What to resolve: a recipe at a commit, for these stages, under this config.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub source: &'a str,
    pub head: &'a str,
    /// `--base` when given; else the newest release older than the head (as a run picks it).
    pub base: Option<&'a str>,
    pub stages: &'a [Stage],
    pub config: &'a HarnessConfig,
    pub shipped_overlays: Option<&'a Path>,
    pub abra_version: Option<String>,
}

/// Service → image for the checkout's current tree, interpolated from its `.env.sample` and
/// `abra.sh` as a deploy of it would be (the per-run values `DOMAIN`/`STACK_NAME` replaced by
/// fixed placeholders, so the result does not depend on the run).
pub fn service_images(checkout: &Checkout) -> Result<BTreeMap<String, String>, InputsError> {
    let sample = checkout.read_file(".env.sample")?.unwrap_or_default();
    let env = parse_env(&sample);
    let mut vars = env.vars();
    if let Some(sh) = checkout.read_file("abra.sh")? {
        vars.extend(parse_env(&sh).vars());
    }
    vars.insert("STACK_NAME".into(), "cc-ci-inputs".into());
    vars.insert("DOMAIN".into(), "cc-ci-inputs.invalid".into());
    let mut out = BTreeMap::new();
    for file in recipe::compose_files(&env) {
        let Some(text) = checkout.read_file(&file)? else {
            continue;
        };
        let Ok(doc) = serde_norway::from_str::<serde_norway::Value>(&text) else {
            continue;
        };
        let Some(services) = doc.get("services").and_then(|s| s.as_mapping()) else {
            continue;
        };
        for (name, svc) in services {
            let (Some(name), Some(image)) =
                (name.as_str(), svc.get("image").and_then(|i| i.as_str()))
            else {
                continue;
            };
            let image = interpolate(image, &vars).trim().to_string();
            if !image.is_empty() {
                // A later compose file overrides an earlier one, as in compose.
                out.insert(name.to_string(), image);
            }
        }
    }
    Ok(out)
}

/// One registry request per image (the Engine API's distribution endpoint: no pull).
async fn digests(engine: &dyn Swarm, images: BTreeMap<String, String>) -> Vec<ServiceImage> {
    let mut out = Vec::new();
    for (service, image) in images {
        let (digest, unresolved) = match engine.distribution_digest(&image).await {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(ServiceImage {
            service,
            image,
            digest,
            unresolved,
        });
    }
    out
}

/// The inputs of `req` read from `checkout` (a clone of the recipe; its work tree is left at the
/// head). Checks out the base and the head in turn.
pub async fn resolve_at(
    checkout: &Checkout,
    req: &Request<'_>,
    engine: &dyn Swarm,
) -> Result<Inputs, InputsError> {
    let wants_upgrade = req.stages.contains(&Stage::Upgrade);
    let tags = checkout.tags().await?;
    let base_release = match (wants_upgrade, req.base) {
        (false, _) => None,
        (true, Some(b)) => Some(b.to_string()),
        (true, None) => checkout.base_release(req.head).await?,
    };
    let base_commit = base_release
        .as_ref()
        .and_then(|b| tags.iter().find(|(t, _)| t == b).map(|(_, c)| c.clone()));
    let base_images = match &base_release {
        Some(b) => {
            checkout.checkout(b).await?;
            digests(engine, service_images(checkout)?).await
        }
        None => Vec::new(),
    };
    checkout.checkout(req.head).await?;
    let tree = recipe::validate_recipe_tree(checkout)?;
    let head_images = digests(engine, service_images(checkout)?).await;
    let overlay_digest = overlay_digest(checkout, &tree.recipe, req)?;
    Ok(Inputs {
        config_digest: sha256(&checked_config(req.config, &tree.recipe, req.source)),
        source: public_source(req.source),
        recipe: tree.recipe,
        head_commit: req.head.to_string(),
        base_release,
        base_commit,
        stages: req.stages.to_vec(),
        head_images,
        base_images,
        abra_version: req.abra_version.clone(),
        cc_ci_version: cc_ci_version(),
        overlay_digest,
        key: String::new(),
    }
    .sealed())
}

/// The overlay a run at the head would load, digested (paths of the checkout left out: the same
/// overlay read from another clone digests the same).
fn overlay_digest(
    checkout: &Checkout,
    recipe: &str,
    req: &Request<'_>,
) -> Result<String, InputsError> {
    let h = req.config;
    let mut dirs: Vec<PathBuf> = req
        .shipped_overlays
        .map(Path::to_path_buf)
        .into_iter()
        .collect();
    dirs.extend(h.overlay_dirs.iter().cloned());
    let local = checkout.dir.join(".cc-ci/overlay.toml");
    let repo_local = (local.is_file()
        && overlay::repo_local_allowed(&h.repo_local_allowlist, req.source))
    .then_some(local.as_path());
    let mut loaded = overlay::load(recipe, &dirs, repo_local)?;
    loaded.files.clear();
    let text = format!("{loaded:?}").replace(&checkout.dir.display().to_string(), "<checkout>");
    Ok(sha256(&text))
}

/// A recipe at a ref to resolve without a run (`cc-ci inputs`, reuse, drift).
#[derive(Debug, Clone)]
pub struct Want {
    pub source: String,
    pub git_ref: String,
    pub base: Option<String>,
    pub stages: Vec<Stage>,
    pub config: HarnessConfig,
    pub shipped_overlays: Option<PathBuf>,
    pub abra_version: Option<String>,
}

/// Resolves the current inputs of `want` without deploying: clones the recipe under `scratch`
/// (removed afterwards), reads the compose files and `.env.sample` of the head and the base, asks
/// the registry once per image.
pub async fn resolve(want: &Want, scratch: &Path, engine: &Engine) -> Result<Inputs, InputsError> {
    std::fs::create_dir_all(scratch)
        .map_err(|e| InputsError::Io(format!("cannot create {}: {e}", scratch.display())))?;
    let dir = scratch.join(format!("inputs-{:016x}", rand::random::<u64>()));
    let result = async {
        let checkout = Checkout::clone_from(&want.source, &dir).await?;
        let head = checkout.resolve(&want.git_ref).await?;
        let req = Request {
            source: &want.source,
            head: &head,
            base: want.base.as_deref(),
            stages: &want.stages,
            config: &want.config,
            shipped_overlays: want.shipped_overlays.as_deref(),
            abra_version: want.abra_version.clone(),
        };
        resolve_at(&checkout, &req, engine).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Inputs {
        Inputs {
            source: "https://git.example/r/web.git".into(),
            recipe: "web".into(),
            head_commit: "a".repeat(40),
            base_release: Some("1.0.0+1.27".into()),
            base_commit: Some("b".repeat(40)),
            stages: Stage::ALL.to_vec(),
            head_images: vec![ServiceImage {
                service: "app".into(),
                image: "nginx:1.27".into(),
                digest: Some("sha256:ab".into()),
                unresolved: None,
            }],
            base_images: vec![],
            abra_version: Some("abra 0.10".into()),
            cc_ci_version: cc_ci_version(),
            overlay_digest: sha256(""),
            config_digest: sha256("{}"),
            key: String::new(),
        }
        .sealed()
    }

    #[test]
    fn key_changes_with_every_field() {
        let a = sample();
        let mut b = a.clone();
        b.head_images[0].digest = Some("sha256:cd".into());
        assert_ne!(a.key, b.sealed().key);
        let mut c = a.clone();
        c.abra_version = None;
        assert_ne!(a.key, c.sealed().key);
        let mut d = a.clone();
        // Moving an image from head to base is a different input, not the same bytes.
        d.base_images = std::mem::take(&mut d.head_images);
        assert_ne!(a.key, d.sealed().key);
        assert_eq!(a.key, a.clone().sealed().key);
    }

    #[test]
    fn service_images_follow_compose_file_and_interpolate() {
        let d = tempfile::tempdir().expect("tempdir");
        let w = |name: &str, text: &str| std::fs::write(d.path().join(name), text).expect("write");
        w(
            ".env.sample",
            "TYPE=web\nCOMPOSE_FILE=\"compose.yml:compose.extra.yml\"\nTAG=1.27\n",
        );
        w("abra.sh", "export DB_TAG=16\n");
        w(
            "compose.yml",
            "services:\n  app:\n    image: nginx:${TAG}\n  db:\n    image: postgres:${DB_TAG}\n  built:\n    build: .\n",
        );
        // A later file overrides an earlier one's image, as compose does.
        w(
            "compose.extra.yml",
            "services:\n  db:\n    image: postgres:${DB_TAG}-alpine\n  cache:\n    image: redis:7\n",
        );
        let checkout = Checkout {
            dir: d.path().to_path_buf(),
            source: "/x".into(),
        };
        let images = service_images(&checkout).expect("images");
        let got: Vec<(&str, &str)> = images
            .iter()
            .map(|(s, i)| (s.as_str(), i.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("app", "nginx:1.27"),
                ("cache", "redis:7"),
                ("db", "postgres:16-alpine")
            ]
        );
    }

    #[test]
    fn source_loses_credentials() {
        assert_eq!(
            public_source("https://bot:tok@git.example/r/web.git"),
            "https://git.example/r/web.git"
        );
        assert_eq!(public_source("/srv/web"), "/srv/web");
        assert_eq!(public_source("https://h"), "https://h");
    }

    #[test]
    fn pinned_form() {
        let i = &sample().head_images[0];
        assert_eq!(i.pinned(), "nginx:1.27@sha256:ab");
    }

    #[test]
    fn roundtrips_through_json() {
        let a = sample();
        let text = serde_json::to_string(&a).expect("serialises");
        let b: Inputs = serde_json::from_str(&text).expect("parses");
        assert_eq!(a, b);
    }
}
