//! Helpers shared by the loom models (`tests/loom_*.rs`).

use std::panic::{self, AssertUnwindSafe};

/// Runs `model`, which must fail with a message containing one of `any`:
/// how a model shows that it finds a bug put in on purpose.
pub fn expect_failure(model: impl FnOnce(), any: &[&str]) {
    let found = panic::catch_unwind(AssertUnwindSafe(model));
    let Err(payload) = found else {
        panic!("loom found no failing execution of a broken design");
    };
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    assert!(any.iter().any(|m| message.contains(m)), "unexpected failure: {message}");
}
