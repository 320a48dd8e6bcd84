//! cc-ci's daemon (`cc-ci serve`).
