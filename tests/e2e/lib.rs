//! The end-to-end tests are `tests/e2e/main.rs`; this crate has no library code.
