//! cc-ci's harness: everything `cc-ci run` does to carry one recipe commit through its tiers on
//! a Docker Swarm node, and the pure decisions behind it.
//!
//! I/O lives in [`engine`] (the Docker Engine API), [`abra`] (the abra CLI) and [`recipe`] (git);
//! what to check and what a result means lives in pure modules ([`checks`], [`report`], [`names`]).

pub mod config;
pub mod names;
pub mod report;
