//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::process::Command;

/// Every `CPULOCAL_BACKEND` value, in order.
pub const BACKENDS: [&str; 3] = ["rseq", "getcpu", "fallback"];

/// Whether this process is a child started by [`in_child`].
pub fn is_child() -> bool {
    std::env::var_os("CPULOCAL_TEST_CHILD").is_some()
}

/// Runs the test `name` (its full path, e.g. `backends::counts`) of this
/// test binary in a child process with the extra environment `env`, and
/// panics with its output unless it passes. The child sees
/// `CPULOCAL_TEST_CHILD=1`.
pub fn in_child(name: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"]);
    cmd.env("CPULOCAL_TEST_CHILD", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn test child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child {name} with {env:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// Runs test `name` once under each backend, checking the child really got
/// the backend it asked for when that backend exists here.
pub fn under_each_backend(name: &str) {
    for b in BACKENDS {
        in_child(name, &[("CPULOCAL_BACKEND", b)]);
    }
}

/// Asserts that the backend forced by the environment is the one in use
/// (rseq and getcpu are available on the Linux machines CI runs on).
pub fn check_forced_backend() {
    if let Ok(want) = std::env::var("CPULOCAL_BACKEND") {
        if cfg!(target_os = "linux") {
            assert_eq!(cpulocal::cpu::backend().name(), want, "backend not forced");
        }
    }
}

/// Moves the calling thread to the next allowed CPU (round-robin over
/// `cpus`), so that tests exercise migration. `step` picks the CPU.
pub fn hop(cpus: &[usize], step: usize) {
    let cpu = cpus[step % cpus.len()];
    cpulocal::cpu::set_affinity(&[cpu]).expect("sched_setaffinity");
}

/// Test sizes: smaller under Miri and sanitizers, as in seize's tests.
pub fn scaled(n: usize) -> usize {
    if cfg!(miri) || std::env::var_os("CPULOCAL_SMALL_TESTS").is_some() {
        (n / 50).max(1)
    } else {
        n
    }
}
