//! Label names read on both sides: by the harness through the Engine API, by the abra stand-in
//! through `docker`.

/// Label swarm (`docker stack deploy`, abra) puts on every object of a stack; its value is the
/// stack's name.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// Label swarm puts on the containers of a service's tasks (a plain container has none).
pub const SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";

/// Label swarm puts on the containers of a service's tasks: the service's name.
pub const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";

pub mod backupbot {
    //! How abra finds backup-bot-two on a server: a running service carrying this label. The
    //! spelling is *unconfirmed* (shared/reference/coop-cloud.md, "What real abra does"), so it
    //! lives here once, for the harness and the stand-in; `scripts/setup-swarm` and the NixOS
    //! module put the same label on the backup-bot stack they deploy (keep them in step).
    // The spelling, once: the constants below are built from it.
    macro_rules! label_key {
        () => {
            "coop-cloud.backupbot.enabled"
        };
    }
    macro_rules! label_value {
        () => {
            "true"
        };
    }

    /// Label key on the backup-bot-two service.
    pub const BACKUPBOT_LABEL: &str = label_key!();
    /// Its value.
    pub const BACKUPBOT_LABEL_VALUE: &str = label_value!();
    /// What an operator does when it is missing.
    pub const BACKUPBOT_HOW_TO: &str = concat!(
        "deploy backup-bot-two on the swarm as its own stack (e.g. `abra app new backup-bot-two` ",
        "then `abra app deploy`; on NixOS the cc-ci module's backup-bot option does it), with its ",
        "service labelled ",
        label_key!(),
        "=",
        label_value!()
    );

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
}
