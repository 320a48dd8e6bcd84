//! How abra finds backup-bot-two: the label's one definition is in the crate shared with the
//! abra stand-in (`cc_ci_engine_api::labels::backupbot`, its spelling is *unconfirmed*).

pub use cc_ci_engine_api::labels::backupbot::*;
