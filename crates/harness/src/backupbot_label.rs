//! How abra finds backup-bot-two on a server: a running service carrying this label. The spelling
//! is *unconfirmed* (shared/reference/coop-cloud.md, "What real abra does"), so it lives here once;
//! the stand-in includes this very file, and `scripts/setup-swarm` and the NixOS module put the
//! same label on the backup-bot stack they deploy (keep them in step).

/// Label key on the backup-bot-two service.
pub const BACKUPBOT_LABEL: &str = "coop-cloud.backupbot.enabled";
/// Its value.
pub const BACKUPBOT_LABEL_VALUE: &str = "true";
/// What an operator does when it is missing.
pub const BACKUPBOT_HOW_TO: &str = "deploy backup-bot-two on the swarm as its own stack (e.g. `abra app new backup-bot-two` \
then `abra app deploy`; on NixOS the cc-ci module's backup-bot option does it), with its service labelled \
coop-cloud.backupbot.enabled=true";
