//! cc-ci's harness: everything `cc-ci run` does to carry one recipe commit through its tiers on
//! a Docker Swarm node, and the pure decisions behind it.
//!
//! I/O lives in [`engine`] (the Docker Engine API), [`abra`] (the abra CLI) and [`recipe`] (git);
//! what to check and what a result means lives in pure modules ([`checks`], [`report`], [`names`],
//! [`overlay`]); [`lifecycle`] puts them together for one run.

pub mod abra;
pub mod abra_cli;
pub mod appconfig;
pub mod checks;
pub mod config;
pub mod contract;
pub mod doctor;
pub mod drift;
pub mod engine;
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
pub mod fresh;
pub mod hostenv;
pub mod inputs;
pub mod lifecycle;
pub mod names;
pub mod overlay;
pub mod policy;
pub mod ports;
mod pty;
pub mod recipe;
pub mod redact;
pub mod report;
pub mod safefs;
pub mod swarm;
pub mod teardown;
pub mod wait;
