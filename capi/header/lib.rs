//! Nothing to link: this crate only holds `tests/header.rs`, the check that include/plumb.h is
//! up to date (`cargo test -p plumb-capi-header`).
