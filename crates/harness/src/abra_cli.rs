//! abra as a run sees it: the [`AbraCli`] trait holds the abra commands the lifecycle runs,
//! implemented here for the real adapter [`Abra`] (crate::abra, the only place abra is run) by
//! delegation, and in memory by `fakes::FakeAbra` (feature `fakes`) for the tier unit tests.
//!
//! Boxed futures for the same reason as [`crate::swarm::Swarm`]: a run holds `Arc<dyn AbraCli>`.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use crate::abra::{Abra, AbraError, AbraOutput};

/// What an abra call returns.
pub type AbraFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, AbraError>> + Send + 'a>>;

/// The abra commands of a run, each under the run's own `ABRA_DIR`.
pub trait AbraCli: Send + Sync {
    /// The run's `ABRA_DIR` (recipes, server env files).
    fn abra_dir(&self) -> &Path;
    /// Why `abra.log` could not be written, if it could not.
    fn log_error(&self) -> Option<String>;
    /// `abra --version`, first line.
    fn version(&self) -> AbraFuture<'_, String>;
    /// `abra server add --local`.
    fn server_add_local(&self) -> AbraFuture<'_, AbraOutput>;
    /// `abra app new <recipe> --server <server> --domain <domain>`.
    fn app_new<'a>(
        &'a self,
        recipe: &'a str,
        server: &'a str,
        domain: &'a str,
    ) -> AbraFuture<'a, AbraOutput>;
    /// `abra app secret insert <domain> <name> <version> <value>`; the value never shows.
    fn secret_insert<'a>(
        &'a self,
        domain: &'a str,
        name: &'a str,
        version: &'a str,
        value: &'a str,
    ) -> AbraFuture<'a, AbraOutput>;
    /// `abra app deploy <domain> [version] [--chaos]`, without domain and converge checks.
    fn deploy<'a>(
        &'a self,
        domain: &'a str,
        version: Option<&'a str>,
        chaos: bool,
    ) -> AbraFuture<'a, AbraOutput>;
    /// `abra app undeploy <domain>`.
    fn undeploy<'a>(&'a self, domain: &'a str) -> AbraFuture<'a, AbraOutput>;
    /// `abra app backup create <domain>`.
    fn backup_create<'a>(&'a self, domain: &'a str) -> AbraFuture<'a, AbraOutput>;
    /// Snapshot ids, oldest first.
    fn backup_list<'a>(&'a self, domain: &'a str) -> AbraFuture<'a, Vec<String>>;
    /// Files of a snapshot, `<volume>/<path>` each.
    fn backup_files<'a>(
        &'a self,
        domain: &'a str,
        snapshot: &'a str,
    ) -> AbraFuture<'a, Vec<String>>;
    /// `abra app restore <domain>` (the newest snapshot).
    fn restore<'a>(&'a self, domain: &'a str) -> AbraFuture<'a, AbraOutput>;
}

impl AbraCli for Abra {
    fn abra_dir(&self) -> &Path {
        Abra::abra_dir(self)
    }
    fn log_error(&self) -> Option<String> {
        Abra::log_error(self)
    }
    fn version(&self) -> AbraFuture<'_, String> {
        Box::pin(Abra::version(self))
    }
    fn server_add_local(&self) -> AbraFuture<'_, AbraOutput> {
        Box::pin(Abra::server_add_local(self))
    }
    fn app_new<'a>(
        &'a self,
        recipe: &'a str,
        server: &'a str,
        domain: &'a str,
    ) -> AbraFuture<'a, AbraOutput> {
        Box::pin(Abra::app_new(self, recipe, server, domain))
    }
    fn secret_insert<'a>(
        &'a self,
        domain: &'a str,
        name: &'a str,
        version: &'a str,
        value: &'a str,
    ) -> AbraFuture<'a, AbraOutput> {
        Box::pin(Abra::secret_insert(self, domain, name, version, value))
    }
    fn deploy<'a>(
        &'a self,
        domain: &'a str,
        version: Option<&'a str>,
        chaos: bool,
    ) -> AbraFuture<'a, AbraOutput> {
        Box::pin(Abra::deploy(self, domain, version, chaos))
    }
    fn undeploy<'a>(&'a self, domain: &'a str) -> AbraFuture<'a, AbraOutput> {
        Box::pin(Abra::undeploy(self, domain))
    }
    fn backup_create<'a>(&'a self, domain: &'a str) -> AbraFuture<'a, AbraOutput> {
        Box::pin(Abra::backup_create(self, domain))
    }
    fn backup_list<'a>(&'a self, domain: &'a str) -> AbraFuture<'a, Vec<String>> {
        Box::pin(Abra::backup_list(self, domain))
    }
    fn backup_files<'a>(
        &'a self,
        domain: &'a str,
        snapshot: &'a str,
    ) -> AbraFuture<'a, Vec<String>> {
        Box::pin(Abra::backup_files(self, domain, snapshot))
    }
    fn restore<'a>(&'a self, domain: &'a str) -> AbraFuture<'a, AbraOutput> {
        Box::pin(Abra::restore(self, domain))
    }
}
