//! In-memory fakes of the swarm and abra (test support: `cfg(test)` or the `fakes` feature),
//! so the tier logic is unit-tested without Docker and without an abra binary. They behave as
//! shared/reference/coop-cloud.md and the real adapters describe, not as a test would like:
//! [`FakeAbra`] deploys the recipe checked out in its `ABRA_DIR` onto a [`FakeSwarm`] (services,
//! tasks, health, update state, abra's labels, named volumes holding files), backs up and
//! restores those volumes' files, and fails with abra-like output and exit codes; scripted
//! failures stand for what the world does (an engine that goes away, an update swarm rolls back,
//! a task that never gets healthy, a backup that leaves a file out).

mod abra;
mod swarm;

pub use abra::{AbraState, FakeAbra, Script, Snapshot};
pub use swarm::{FakeService, FakeSwarm, Outage, ServiceSpec, SwarmState};
