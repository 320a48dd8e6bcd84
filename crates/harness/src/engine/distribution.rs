//! The digest a registry serves for an image reference, asked through the engine
//! (`GET /distribution/{name}/json`): one registry request, nothing pulled, the engine's own
//! registry credentials and insecure-registry settings apply.

use cc_ci_engine_api::DistributionInspectResponse;

use super::{Engine, EngineError};

/// The path of the distribution endpoint for `image`. The engine routes `{name:.*}`, so the
/// slashes of a repository stay; anything outside a reference's alphabet is escaped.
fn distribution_path(image: &str) -> String {
    let mut out = String::from("/distribution/");
    for b in image.bytes() {
        if b.is_ascii_alphanumeric() || b"-._:/@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str("/json");
    out
}

impl Engine {
    /// The digest the registry serves for `image` now (`sha256:…`). An image already pinned by
    /// digest is that digest, without asking.
    pub async fn distribution_digest(&self, image: &str) -> Result<String, EngineError> {
        if let Some((_, d)) = image.split_once('@') {
            return Ok(d.to_string());
        }
        let path = distribution_path(image);
        let inspect: DistributionInspectResponse = self.get(&path).await?.value;
        inspect.descriptor.digest.ok_or(EngineError::Decode {
            path,
            reason: "the answer names no digest".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_keeps_repository_slashes() {
        assert_eq!(
            distribution_path("127.0.0.1:5000/cc-ci-fixture/web:1"),
            "/distribution/127.0.0.1:5000/cc-ci-fixture/web:1/json"
        );
        assert_eq!(distribution_path("a b?"), "/distribution/a%20b%3F/json");
    }
}
