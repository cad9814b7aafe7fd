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

/// As [`expect_failure`], with the model run in a child process (this test
/// binary, running only `test`): for a broken design whose failing
/// execution may be a deadlock, which loom reports by aborting the process.
/// The child must fail with one of `any` in its output.
#[allow(dead_code)] // not every model file uses it
pub fn expect_failure_in_child(test: &str, model: impl FnOnce(), any: &[&str]) {
    const CHILD: &str = "CPULOCAL_LOOM_EXPECTED_FAILURE";
    if std::env::var_os(CHILD).is_some() {
        return model();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("spawn the model's child");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        !out.status.success() && !text.contains("1 passed"),
        "loom found no failing execution of a broken design"
    );
    assert!(any.iter().any(|m| text.contains(m)), "unexpected failure: {text}");
}
