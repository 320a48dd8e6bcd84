//! Decoding the engine's answers into the models, leniently.
//!
//! bollard's models are generated from one API version (1.41) and their enums accept only that
//! version's values: a newer engine's task state, mount type or update state (the API has added
//! each kind before) would fail the whole answer, and with it a run that only needed to see the
//! value was not `running`. So a value the model cannot hold is left out (the field becomes
//! absent, `None` in every model field cc-ci reads) and kept in [`Decoded::skipped`] with its
//! path and the engine's text; [`Decoded::text`] gives that text back where a check compares
//! states. A field the model requires but the engine left out is tried as `null` (the models
//! read `null` as empty or absent where the field can be); a field that cannot be absent, or an
//! answer that is not JSON, stays an error: that is not a newer engine but a different API.
//!
//! Before that, the few fields the generated models spell otherwise than the engine sends them
//! are renamed to the models' spelling ([`RESPELLED`]); without it they would decode as absent.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// An answer decoded into a model, with the values the model could not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T> {
    pub value: T,
    pub skipped: Vec<Skipped>,
}

/// A value left out of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// Where it was, relative to the decoded value: `Status.State`, `Spec.Mounts[1].Type`.
    pub path: String,
    /// What the engine sent.
    pub value: Value,
    /// Why the model could not hold it.
    pub reason: String,
}

impl<T> Decoded<T> {
    /// The engine's text at `path` when the model could not hold it.
    pub fn raw(&self, path: &str) -> Option<&str> {
        self.skipped
            .iter()
            .find(|s| s.path == path)
            .and_then(|s| s.value.as_str())
    }

    /// The text of an enum field: the model's value when it knew it, else what the engine sent
    /// at `path`; `None` when the field is absent either way.
    pub fn text<E: std::fmt::Display>(&self, known: Option<E>, path: &str) -> Option<String> {
        known
            .map(|k| k.to_string())
            .or_else(|| self.raw(path).map(String::from))
    }
}

/// An answer that does not have the model's shape even leniently.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{reason}", if path.is_empty() { String::new() } else { format!("at {path}: ") })]
pub struct DecodeError {
    /// Where, relative to the decoded value (empty for the value itself).
    pub path: String,
    pub reason: String,
}

/// Values one answer (or one element of a list) may lose before it counts as not the model's
/// shape at all; each costs a decode, so this also bounds the work.
const MAX_SKIPPED: usize = 32;

/// Decodes one JSON answer into `T`, leniently (module docs).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Decoded<T>, DecodeError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError {
        path: String::new(),
        reason: e.to_string(),
    })?;
    decode_value(value)
}

/// Decodes a JSON array answer element by element, each leniently, so what one element loses
/// is told apart from the others' (paths relative to the element).
pub fn decode_list<T: DeserializeOwned>(bytes: &[u8]) -> Result<Vec<Decoded<T>>, DecodeError> {
    let items: Vec<Value> = serde_json::from_slice(bytes).map_err(|e| DecodeError {
        path: String::new(),
        reason: e.to_string(),
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            decode_value(v).map_err(|e| DecodeError {
                path: join(&format!("[{i}]"), &e.path),
                reason: e.reason,
            })
        })
        .collect()
}

/// Fields bollard's generated models spell otherwise than the engine sends them (the API's
/// swagger file and the engine's Go types disagree there), found by decoding this machine's
/// answers (tests/fixtures): (the object's key in its parent, the engine's spelling, the
/// model's). A service's healthcheck would otherwise look absent, and a registry digest empty.
pub const RESPELLED: &[(&str, &str, &str)] = &[
    ("ContainerSpec", "Healthcheck", "HealthCheck"),
    ("Descriptor", "mediaType", "MediaType"),
    ("Descriptor", "digest", "Digest"),
    ("Descriptor", "size", "Size"),
    ("Descriptor", "urls", "URLs"),
];

fn respell(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if let Value::Object(fields) = child {
                    for (_, engine, model) in RESPELLED.iter().filter(|(p, ..)| p == key) {
                        if !fields.contains_key(*model)
                            && let Some(v) = fields.remove(*engine)
                        {
                            fields.insert((*model).to_string(), v);
                        }
                    }
                }
                respell(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(respell),
        _ => {}
    }
}

/// Decodes a JSON value into `T`, leniently (module docs).
pub fn decode_value<T: DeserializeOwned>(mut value: Value) -> Result<Decoded<T>, DecodeError> {
    respell(&mut value);
    let mut skipped: Vec<Skipped> = Vec::new();
    loop {
        let err = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(v) => return Ok(Decoded { value: v, skipped }),
            Err(e) => e,
        };
        let segments = segments(err.path());
        let path = render(&segments);
        let reason = err.into_inner().to_string();
        if skipped.len() >= MAX_SKIPPED {
            return Err(DecodeError { path, reason });
        }
        let Some(slot) = slot(&mut value, &segments) else {
            return Err(DecodeError { path, reason });
        };
        // A missing field is reported at the object that lacks it: the field is tried as null
        // (leaving the object out would lose what is there).
        if let Some(field) = missing_field(&reason)
            && let Some(object) = slot.as_object_mut()
            && !object.contains_key(field)
        {
            object.insert(field.to_string(), Value::Null);
            skipped.push(Skipped {
                path: join(&path, field),
                value: Value::Null,
                reason,
            });
            continue;
        }
        if slot.is_null() {
            // Already left out and still refused: the model requires a value here. The first
            // reason is the one that says what the engine sent.
            let reason = match skipped.iter().find(|s| s.path == path) {
                Some(first) => first.reason.clone(),
                None => reason,
            };
            return Err(DecodeError { path, reason });
        }
        skipped.push(Skipped {
            path,
            value: slot.take(),
            reason,
        });
    }
}

/// The field a "missing field `X`" error names.
fn missing_field(reason: &str) -> Option<&str> {
    reason.strip_prefix("missing field `")?.split('`').next()
}

/// One step of a path into a JSON value.
enum Segment {
    Index(usize),
    Key(String),
}

fn segments(path: &serde_path_to_error::Path) -> Vec<Segment> {
    use serde_path_to_error::Segment as S;
    path.iter()
        .filter_map(|s| match s {
            S::Seq { index } => Some(Segment::Index(*index)),
            S::Map { key } => Some(Segment::Key(key.clone())),
            // Externally tagged enums and opaque steps: none in the models' JSON paths.
            S::Enum { .. } | S::Unknown => None,
        })
        .collect()
}

fn render(segments: &[Segment]) -> String {
    segments.iter().fold(String::new(), |acc, s| match s {
        Segment::Index(i) => format!("{acc}[{i}]"),
        Segment::Key(k) => join(&acc, k),
    })
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ if b.starts_with('[') => format!("{a}{b}"),
        _ => format!("{a}.{b}"),
    }
}

fn slot<'a>(value: &'a mut Value, segments: &[Segment]) -> Option<&'a mut Value> {
    segments.iter().try_fold(value, |v, s| match s {
        Segment::Index(i) => v.get_mut(*i),
        Segment::Key(k) => v.get_mut(k.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mount, MountTypeEnum, Task, TaskState};

    #[test]
    fn an_unknown_enum_value_is_left_out_and_kept() {
        let json = br#"[{"ID":"t1","DesiredState":"running","Status":{"State":"frobnicating","Message":"m"}},
                        {"ID":"t2","DesiredState":"running","Status":{"State":"running"}}]"#;
        let tasks: Vec<Decoded<Task>> = decode_list(json).unwrap();
        let t1 = &tasks[0];
        let status = t1.value.status.as_ref().unwrap();
        assert_eq!(status.state, None);
        assert_eq!(status.message.as_deref(), Some("m"));
        assert_eq!(t1.raw("Status.State"), Some("frobnicating"));
        assert_eq!(
            t1.text(status.state, "Status.State").as_deref(),
            Some("frobnicating")
        );
        assert!(t1.skipped[0].reason.contains("unknown variant"));
        // The other element is untouched.
        assert_eq!(
            tasks[1].value.status.as_ref().unwrap().state,
            Some(TaskState::RUNNING)
        );
        assert!(tasks[1].skipped.is_empty());
    }

    #[test]
    fn paths_name_list_elements() {
        let json = br#"{"Target":"/d","Type":"cluster"}"#;
        let m: Decoded<Mount> = decode(json).unwrap();
        assert_eq!(m.value.typ, None);
        assert_eq!(m.raw("Type"), Some("cluster"));
        let json = br#"[{"Type":"volume"},{"Type":"image"}]"#;
        let m: Decoded<Vec<Mount>> = decode(json).unwrap();
        assert_eq!(m.value[0].typ, Some(MountTypeEnum::VOLUME));
        assert_eq!(m.raw("[1].Type"), Some("image"));
    }

    #[test]
    fn a_missing_optional_field_is_absent() {
        // `Port.Type` is required by the model's shape but may be null; the engine always sends
        // it, an answer without it still decodes. `Volume.Labels` null or missing is empty.
        let p: Decoded<crate::Port> = decode(br#"{"PrivatePort": 9}"#).unwrap();
        assert_eq!(p.value.typ, None);
        assert_eq!(p.skipped[0].path, "Type");
        let v: Decoded<crate::Volume> =
            decode(br#"{"Name":"v","Driver":"local","Mountpoint":"/m","Options":null}"#).unwrap();
        assert!(v.value.labels.is_empty() && v.value.options.is_empty());
    }

    #[test]
    fn a_missing_required_field_or_non_json_is_an_error_naming_where() {
        // `Volume.Name` is required by the model.
        let e = decode::<crate::VolumeListResponse>(br#"{"Volumes":[{"Driver":"local"}]}"#)
            .unwrap_err();
        assert_eq!(e.path, "Volumes[0].Name");
        assert!(e.reason.contains("missing field `Name`"), "{e}");
        let e = decode_list::<Task>(br#"[{"ID":"a"}, 7]"#).unwrap_err();
        assert_eq!(e.path, "[1]");
        assert!(decode::<Task>(b"<html>").is_err());
    }

    #[test]
    fn a_required_field_of_the_wrong_kind_is_an_error() {
        // `ContainerWaitResponse.StatusCode` is required: leaving it out cannot help.
        let e = decode::<crate::ContainerWaitResponse>(br#"{"StatusCode":"zero"}"#).unwrap_err();
        assert_eq!(e.path, "StatusCode");
    }
}
