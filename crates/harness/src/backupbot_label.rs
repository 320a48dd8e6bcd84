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

/// Environment variable that overrides the label (`key=value`), for a server whose backup-bot-two
/// is found otherwise: the spelling above is unconfirmed, and an operator must be able to correct
/// it without a rebuild. abra (and the stand-in) inherit it from cc-ci.
pub const BACKUPBOT_LABEL_ENV: &str = "CC_CI_BACKUPBOT_LABEL";

/// The label (key, value) to look for: `override_label` (the value of [`BACKUPBOT_LABEL_ENV`])
/// when set and well-formed, else the default.
pub fn backupbot_label(override_label: Option<&str>) -> (String, String) {
    override_label
        .and_then(|v| {
            let (k, val) = v.split_once('=')?;
            (!k.trim().is_empty()).then(|| (k.trim().to_string(), val.trim().to_string()))
        })
        .unwrap_or_else(|| {
            (
                BACKUPBOT_LABEL.to_string(),
                BACKUPBOT_LABEL_VALUE.to_string(),
            )
        })
}
