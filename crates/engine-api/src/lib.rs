//! The Docker Engine API as cc-ci reads it, shared by the harness (over the engine's socket) and
//! the abra stand-in (`docker inspect`), so the two cannot disagree on a shape or a label.
//!
//! - the models: bollard's generated ones (`bollard-stubs`, API 1.41, what Debian 12's
//!   docker.io 20.10 speaks), re-exported below;
//! - [`decode`]: every answer is decoded through it, leniently: a value this API version's model
//!   cannot hold (an enum value a newer engine added) is left out instead of failing the answer;
//!   The enum fields cc-ci compares are read as text by methods on `Decoded<Task>`,
//!   `Decoded<Service>`, ... (`text.rs`), the one place both sides read them;
//! - [`labels`]: the label names both sides read.
//!
//! Requests carry no `/v1.41` prefix: a newer engine answers an unversioned request in its own
//! version, and refuses versions below its minimum (1.44 from Engine 29 on) outright, so pinning
//! the version would turn a newer engine into a failed run; leniency is what copes instead.

pub mod decode;
pub mod labels;
mod text;

pub use decode::{DecodeError, Decoded, Skipped, decode, decode_list, decode_value};

/// The container-create body is the container's config with its host config beside it.
pub use bollard_stubs::models::ContainerConfig;

/// The models' timestamps.
pub use chrono::{DateTime, Utc};

/// A timestamp as text that orders as the time does (RFC 3339, always nine fraction digits: the
/// engine trims trailing zeros, which would make text order differ from time order).
pub fn timestamp_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}
/// The models cc-ci reads or sends.
pub use bollard_stubs::models::{
    Config, ConfigSpec, ContainerCreateResponse, ContainerInspectResponse, ContainerState,
    ContainerSummaryInner as ContainerSummary, ContainerWaitResponse, CreateImageInfo,
    DistributionInspectResponse, EndpointPortConfig, ErrorResponse, ExecConfig,
    ExecInspectResponse, ExecStartConfig, Health, HealthConfig, HealthStatusEnum,
    HealthcheckResult, HostConfig, IdResponse, LocalNodeState, Mount, MountTypeEnum, Network, Port,
    Secret, SecretSpec, Service, ServiceEndpoint, ServiceSpec, ServiceSpecMode,
    ServiceUpdateStatus, ServiceUpdateStatusStateEnum, SwarmInfo, SystemInfo, Task, TaskSpec,
    TaskSpecContainerSpec, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
    TaskStatus, Volume, VolumeListResponse,
};
