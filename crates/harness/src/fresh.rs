//! Is a result still true? A pure function of the inputs it was made of, the inputs now, and its
//! age (passed in: no clock here, no I/O). Any difference is a reason to run again: a reused
//! result never hides a change.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::inputs::{Inputs, ServiceImage};
use crate::lifecycle::Stage;

/// Which version of the recipe an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Head,
    Base,
}

/// Why a result no longer holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Stale {
    /// Another repository.
    SourceChanged {
        old: String,
        new: String,
    },
    RecipeChanged {
        old: String,
        new: String,
    },
    HeadMoved {
        old: String,
        new: String,
    },
    BaseReleaseChanged {
        old: Option<String>,
        new: Option<String>,
    },
    StagesChanged {
        old: Vec<Stage>,
        new: Vec<Stage>,
    },
    /// Same service, same `name:tag`, another digest: the image was re-pushed under its tag.
    ImageDigestChanged {
        side: Side,
        service: String,
        image: String,
        old: String,
        new: String,
    },
    /// A service was added or removed, or names another image.
    ImageChanged {
        side: Side,
        service: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// The registry could not be asked for a digest (then or now): the result cannot be vouched for.
    ImageUnresolved {
        side: Side,
        service: String,
        image: String,
    },
    AbraChanged {
        old: Option<String>,
        new: Option<String>,
    },
    CcCiChanged {
        old: String,
        new: String,
    },
    OverlayChanged,
    CheckConfigChanged,
    TooOld {
        age_secs: u64,
        max_age_secs: u64,
    },
    /// Every field agrees but the keys do not (a record made by another key derivation).
    KeyDiffers,
}

/// The verdict on a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reasons", rename_all = "lowercase")]
pub enum Freshness {
    Fresh,
    /// Never empty.
    Stale(Vec<Stale>),
}

impl Freshness {
    pub fn is_fresh(&self) -> bool {
        matches!(self, Freshness::Fresh)
    }

    /// The image digests that moved (what a drift sweep re-runs for).
    pub fn moved_images(&self) -> Vec<&Stale> {
        match self {
            Freshness::Fresh => Vec::new(),
            Freshness::Stale(r) => r
                .iter()
                .filter(|s| matches!(s, Stale::ImageDigestChanged { .. }))
                .collect(),
        }
    }

    /// One line per reason ("fresh" when there is none).
    pub fn describe(&self) -> String {
        match self {
            Freshness::Fresh => "fresh".into(),
            Freshness::Stale(r) => r
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("none")
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |s: &Side| match s {
            Side::Head => "",
            Side::Base => " (base release)",
        };
        match self {
            Stale::SourceChanged { old, new } => {
                write!(f, "repository changed from {old} to {new}")
            }
            Stale::RecipeChanged { old, new } => write!(f, "recipe changed from {old} to {new}"),
            Stale::HeadMoved { old, new } => write!(f, "head moved from {old} to {new}"),
            Stale::BaseReleaseChanged { old, new } => {
                write!(f, "base release changed from {} to {}", opt(old), opt(new))
            }
            Stale::StagesChanged { old, new } => {
                let names = |v: &[Stage]| v.iter().map(|s| s.name()).collect::<Vec<_>>().join(",");
                write!(f, "stages changed from {} to {}", names(old), names(new))
            }
            Stale::ImageDigestChanged {
                side: s,
                service,
                image,
                old,
                new,
            } => write!(f, "{service}: {image} moved from {old} to {new}{}", side(s)),
            Stale::ImageChanged {
                side: s,
                service,
                old,
                new,
            } => write!(
                f,
                "{service}: image changed from {} to {}{}",
                opt(old),
                opt(new),
                side(s)
            ),
            Stale::ImageUnresolved {
                side: s,
                service,
                image,
            } => write!(
                f,
                "{service}: the registry's digest of {image} is unknown{}",
                side(s)
            ),
            Stale::AbraChanged { old, new } => {
                write!(f, "abra changed from {} to {}", opt(old), opt(new))
            }
            Stale::CcCiChanged { old, new } => write!(f, "cc-ci changed from {old} to {new}"),
            Stale::OverlayChanged => write!(f, "the overlay changed"),
            Stale::CheckConfigChanged => write!(f, "the config of what is checked changed"),
            Stale::TooOld {
                age_secs,
                max_age_secs,
            } => write!(
                f,
                "the result is {age_secs} s old, older than the configured {max_age_secs} s"
            ),
            Stale::KeyDiffers => write!(f, "the inputs key differs"),
        }
    }
}

fn images(side: Side, old: &[ServiceImage], new: &[ServiceImage], out: &mut Vec<Stale>) {
    // An unknown digest anywhere (a duplicate entry included) cannot be vouched for.
    for i in old.iter().chain(new).filter(|i| i.digest.is_none()) {
        let s = Stale::ImageUnresolved {
            side,
            service: i.service.clone(),
            image: i.image.clone(),
        };
        if !out.contains(&s) {
            out.push(s);
        }
    }
    let old: BTreeMap<&str, &ServiceImage> = old.iter().map(|i| (i.service.as_str(), i)).collect();
    let new: BTreeMap<&str, &ServiceImage> = new.iter().map(|i| (i.service.as_str(), i)).collect();
    let mut services: Vec<&str> = old.keys().chain(new.keys()).copied().collect();
    services.sort_unstable();
    services.dedup();
    for service in services {
        match (old.get(service), new.get(service)) {
            (Some(o), Some(n)) if o.image == n.image => match (&o.digest, &n.digest) {
                (Some(od), Some(nd)) if od == nd => {}
                (Some(od), Some(nd)) => out.push(Stale::ImageDigestChanged {
                    side,
                    service: service.into(),
                    image: o.image.clone(),
                    old: od.clone(),
                    new: nd.clone(),
                }),
                // Pushed above.
                _ => {}
            },
            (o, n) => out.push(Stale::ImageChanged {
                side,
                service: service.into(),
                old: o.map(|i| i.image.clone()),
                new: n.map(|i| i.image.clone()),
            }),
        }
    }
}

/// `Fresh` when every input is the same now as when the result was made, every image digest was
/// known both times, and the result is at most `max_age` old (`None`: no age limit).
pub fn freshness(
    recorded: &Inputs,
    current: &Inputs,
    age: Duration,
    max_age: Option<Duration>,
) -> Freshness {
    let mut out = identity_changes(recorded, current);
    let before = out.len();
    images(
        Side::Head,
        &recorded.head_images,
        &current.head_images,
        &mut out,
    );
    images(
        Side::Base,
        &recorded.base_images,
        &current.base_images,
        &mut out,
    );
    if out.len() == before
        && (recorded.head_images != current.head_images
            || recorded.base_images != current.base_images)
    {
        // Only a duplicate service entry or an `unresolved` note differs: still a difference.
        out.push(Stale::KeyDiffers);
    }
    out.extend(tool_changes(recorded, current));
    if let Some(max) = max_age
        && age > max
    {
        out.push(Stale::TooOld {
            age_secs: age.as_secs(),
            max_age_secs: max.as_secs(),
        });
    }
    if out.is_empty() && recorded.key != current.key {
        out.push(Stale::KeyDiffers);
    }
    if out.is_empty() {
        Freshness::Fresh
    } else {
        out.dedup();
        Freshness::Stale(out)
    }
}

/// What the result is of: repository, recipe, head, base release, stages.
fn identity_changes(recorded: &Inputs, current: &Inputs) -> Vec<Stale> {
    let mut out = Vec::new();
    if recorded.source != current.source {
        out.push(Stale::SourceChanged {
            old: recorded.source.clone(),
            new: current.source.clone(),
        });
    }
    if recorded.recipe != current.recipe {
        out.push(Stale::RecipeChanged {
            old: recorded.recipe.clone(),
            new: current.recipe.clone(),
        });
    }
    if recorded.head_commit != current.head_commit {
        out.push(Stale::HeadMoved {
            old: recorded.head_commit.clone(),
            new: current.head_commit.clone(),
        });
    }
    if recorded.base_release != current.base_release || recorded.base_commit != current.base_commit
    {
        let show = |r: &Option<String>, c: &Option<String>| match (r, c) {
            (None, None) => None,
            (r, c) => Some(format!(
                "{} ({})",
                opt(r),
                c.as_deref()
                    .map(|c| c.get(..10).unwrap_or(c))
                    .unwrap_or("no commit")
            )),
        };
        out.push(Stale::BaseReleaseChanged {
            old: show(&recorded.base_release, &recorded.base_commit),
            new: show(&current.base_release, &current.base_commit),
        });
    }
    if recorded.stages != current.stages {
        out.push(Stale::StagesChanged {
            old: recorded.stages.clone(),
            new: current.stages.clone(),
        });
    }
    out
}

/// What made and checked the result: abra, cc-ci, the overlays, the check config.
fn tool_changes(recorded: &Inputs, current: &Inputs) -> Vec<Stale> {
    let mut out = Vec::new();
    if recorded.abra_version != current.abra_version {
        out.push(Stale::AbraChanged {
            old: recorded.abra_version.clone(),
            new: current.abra_version.clone(),
        });
    }
    if recorded.cc_ci_version != current.cc_ci_version {
        out.push(Stale::CcCiChanged {
            old: recorded.cc_ci_version.clone(),
            new: current.cc_ci_version.clone(),
        });
    }
    if recorded.overlay_digest != current.overlay_digest {
        out.push(Stale::OverlayChanged);
    }
    if recorded.config_digest != current.config_digest {
        out.push(Stale::CheckConfigChanged);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            "[a-z0-9:]{0,6}"
        ]
    }

    fn digest() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(Some("sha256:aa".to_string())),
            Just(Some("sha256:bb".to_string())),
            Just(None),
        ]
    }

    fn image() -> impl Strategy<Value = ServiceImage> {
        (small(), small(), digest()).prop_map(|(service, image, digest)| ServiceImage {
            service,
            image,
            digest,
            unresolved: None,
        })
    }

    fn stages() -> impl Strategy<Value = Vec<Stage>> {
        proptest::sample::subsequence(Stage::ALL.to_vec(), 0..=4)
    }

    prop_compose! {
        fn inputs()(
            source in small(),
            recipe in small(),
            head_commit in small(),
            base_release in proptest::option::of(small()),
            base_commit in proptest::option::of(small()),
            stages in stages(),
            head_images in proptest::collection::vec(image(), 0..4),
            base_images in proptest::collection::vec(image(), 0..4),
            abra_version in proptest::option::of(small()),
            cc_ci_version in small(),
            overlay_digest in small(),
            config_digest in small(),
            seal in any::<bool>(),
        ) -> Inputs {
            let i = Inputs {
                source, recipe, head_commit, base_release, base_commit, stages, head_images, base_images,
                abra_version, cc_ci_version, overlay_digest, config_digest, key: String::new(),
            };
            if seal { i.sealed() } else { i }
        }
    }

    fn all_resolved(i: &Inputs) -> bool {
        i.head_images
            .iter()
            .chain(&i.base_images)
            .all(|x| x.digest.is_some())
    }

    proptest! {
        /// Total: any two inputs and any age give a verdict; `Stale` always carries a reason, and
        /// `Fresh` means nothing differs.
        #[test]
        fn total_and_never_hides_a_change(
            a in inputs(), b in inputs(), age in any::<u64>(), max in proptest::option::of(any::<u64>()),
        ) {
            let f = freshness(&a, &b, Duration::from_secs(age), max.map(Duration::from_secs));
            match &f {
                Freshness::Fresh => {
                    prop_assert_eq!(&a, &b);
                    prop_assert!(all_resolved(&a));
                    prop_assert!(max.is_none_or(|m| age <= m));
                }
                Freshness::Stale(r) => prop_assert!(!r.is_empty()),
            }
            if a != b {
                prop_assert!(!f.is_fresh());
            }
            let _ = f.describe();
        }

        /// The same resolved inputs within the age limit are fresh.
        #[test]
        fn same_inputs_are_fresh(a in inputs(), age in 0u64..1000) {
            let f = freshness(&a, &a.clone(), Duration::from_secs(age), Some(Duration::from_secs(1000)));
            prop_assert_eq!(f.is_fresh(), all_resolved(&a));
        }

        /// A re-pushed tag is reported as that service's image moving between the two digests.
        #[test]
        fn repushed_image_names_both_digests(a in inputs()) {
            let mut a = a;
            a.head_images.push(ServiceImage {
                service: "zz-app".into(), image: "nginx:1.27".into(),
                digest: Some("sha256:old".into()), unresolved: None,
            });
            let mut b = a.clone();
            let i = b.head_images.len() - 1;
            b.head_images[i].digest = Some("sha256:new".into());
            let f = freshness(&a, &b.sealed(), Duration::ZERO, None);
            let want = Stale::ImageDigestChanged {
                side: Side::Head, service: "zz-app".into(), image: "nginx:1.27".into(),
                old: "sha256:old".into(), new: "sha256:new".into(),
            };
            prop_assert!(matches!(&f, Freshness::Stale(r) if r.contains(&want)), "{:?}", f);
        }

        /// Older than the limit is stale whatever else holds.
        #[test]
        fn too_old_is_stale(a in inputs(), max in 0u64..1000, extra in 1u64..1000) {
            let f = freshness(&a, &a.clone(), Duration::from_secs(max + extra), Some(Duration::from_secs(max)));
            let too_old = Stale::TooOld { age_secs: max + extra, max_age_secs: max };
            prop_assert!(matches!(&f, Freshness::Stale(r) if r.contains(&too_old)));
        }
    }

    #[test]
    fn moved_image_reads_as_the_report_says() {
        let s = Stale::ImageDigestChanged {
            side: Side::Head,
            service: "app".into(),
            image: "nginx:1.27".into(),
            old: "sha256:ab".into(),
            new: "sha256:cd".into(),
        };
        assert_eq!(
            s.to_string(),
            "app: nginx:1.27 moved from sha256:ab to sha256:cd"
        );
    }
}
