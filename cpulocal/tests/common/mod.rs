//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    // Each child names the environment it needs; a backend forced on the
    // whole run must not override the one a child test is about.
    cmd.env_remove("CPULOCAL_BACKEND");
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
///
/// Fails loudly where it cannot migrate: with fewer than two allowed CPUs
/// (a test would silently stop testing migration), or if the thread is not
/// on the chosen CPU afterwards.
pub fn hop(cpus: &[usize], step: usize) {
    assert!(
        cpus.len() >= 2,
        "this migration test needs at least two allowed CPUs, but only {cpus:?} are allowed \
         (run it where two or more are)"
    );
    let cpu = cpus[step % cpus.len()];
    cpulocal::cpu::set_affinity(&[cpu]).expect("sched_setaffinity");
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sched_getcpu has no preconditions.
        let now = unsafe { libc::sched_getcpu() };
        assert_eq!(now, cpu as i32, "pinned to CPU {cpu}, but running on {now}");
    }
}

/// Test sizes: smaller under Miri and sanitizers, as in seize's tests.
pub fn scaled(n: usize) -> usize {
    if cfg!(miri) || std::env::var_os("CPULOCAL_SMALL_TESTS").is_some() {
        (n / 50).max(1)
    } else {
        n
    }
}

/// Disables glibc's rseq registration, so this library registers its own
/// area per thread (a static thread-local, never unregistered).
pub const OWN_RSEQ: (&str, &str) = ("GLIBC_TUNABLES", "glibc.pthread.rseq=0");

/// Runs test `name` in a child under every backend, then under rseq with
/// the library's own registration.
pub fn under_every_path(name: &str) {
    under_each_backend(name);
    in_child(name, &[("CPULOCAL_BACKEND", "rseq"), OWN_RSEQ]);
}

/// Whether this child runs with the library's own rseq registration.
pub fn own_rseq() -> bool {
    std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.pthread.rseq=0"))
}

pub fn allowed() -> Vec<usize> {
    cpulocal::cpu::allowed().expect("sched_getaffinity")
}

/// Blocks SIGUSR1 for the calling thread.
pub fn block_sigusr1() {
    // SAFETY: the set is initialized by sigemptyset before use; changing the
    // calling thread's own mask has no other preconditions.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()), 0);
    }
}

/// Installs `handler` for SIGUSR1 (in a test child: process-wide).
pub fn on_sigusr1(handler: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction with an empty mask and a handler that only
    // touches atomics and per-CPU counters (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

/// Sends SIGUSR1 to `target` until `done`, each signal once the previous one
/// has been handled
/// (`handled` went up): the target gets to run between two signals (a flood
/// could keep it in its handler), and each lands at a random point.
pub fn signal_until(target: libc::pthread_t, done: &AtomicBool, handled: &AtomicU64) {
    while !done.load(Ordering::Acquire) {
        let before = handled.load(Ordering::Relaxed);
        // SAFETY: the target thread is not joined yet, so `target` is valid.
        assert_eq!(unsafe { libc::pthread_kill(target, libc::SIGUSR1) }, 0);
        let mut spins = 0u32;
        while handled.load(Ordering::Relaxed) == before && !done.load(Ordering::Acquire) {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Makes the system calls `nrs` fail with ENOSYS for the calling thread and
/// the threads it starts from now on (a seccomp filter, as a sandbox might
/// install).
pub fn refuse_syscalls(nrs: &[libc::c_long]) {
    #[repr(C)]
    struct Insn {
        code: u16,
        jt: u8,
        jf: u8,
        k: u32,
    }
    #[repr(C)]
    struct Prog {
        len: u16,
        filter: *const Insn,
    }
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const PR_SET_NO_NEW_PRIVS: libc::c_int = 38;
    const PR_SET_SECCOMP: libc::c_int = 22;
    // Load the call number; for each refused one, a match jumps to the
    // ENOSYS return just past the list; no match falls through to ALLOW.
    let n = nrs.len();
    let mut filter = vec![Insn { code: LD_W_ABS, jt: 0, jf: 0, k: 0 }]; // seccomp_data.nr
    for (i, &nr) in nrs.iter().enumerate() {
        let to_refuse = (n - i) as u8; // skips the rest and the ALLOW
        filter.push(Insn { code: JEQ_K, jt: to_refuse, jf: 0, k: nr as u32 });
    }
    filter.push(Insn { code: RET_K, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW });
    filter.push(Insn {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
    });
    let prog = Prog { len: filter.len() as u16, filter: filter.as_ptr() };
    // SAFETY: prctl with a valid, live filter program; it only restricts
    // this thread (and the threads it starts later).
    unsafe {
        assert_eq!(libc::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const Prog),
            0,
            "installing the seccomp filter: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Two counters that writers keep equal, breaking the equality for a while
/// inside their critical section: only a thread that overlaps a writer can
/// see them differ, and a lost update shows in the totals.
#[derive(Debug, Default)]
pub struct Pair {
    pub a: u64,
    pub b: u64,
}

/// A burst of `n` spin-loop hints.
pub fn pause(n: u32) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

/// Reads both halves from memory (not from registers), some time apart,
/// checks they agree, and returns them.
pub fn check(pair: &Pair, who: &str) -> u64 {
    // SAFETY: a read of a plain `u64` through a valid reference.
    let a = unsafe { std::ptr::read_volatile(&pair.a) };
    pause(16);
    // SAFETY: as above.
    let b = unsafe { std::ptr::read_volatile(&pair.b) };
    assert_eq!(a, b, "{who} saw a writer's half-done update");
    a
}

/// Checks the pair, then bumps both halves, the second a while after the
/// first.
pub fn bump(pair: &mut Pair, who: &str) {
    check(pair, who);
    // SAFETY: writes of plain fields through a valid `&mut`.
    unsafe { std::ptr::write_volatile(&mut pair.a, pair.a + 1) };
    pause(32);
    // SAFETY: as above.
    unsafe { std::ptr::write_volatile(&mut pair.b, pair.b + 1) };
}

/// A reader on this thread holds a lock (`read` takes it, and it reads 0)
/// while another thread runs `upgrade_and_add_one` (an upgradable read,
/// upgraded, adding 1): the upgrade must not write while the reader is
/// inside, and must complete once it leaves. The caller checks the 1.
pub fn upgrade_waits_for_reader<G: std::ops::Deref<Target = i32>>(
    read: impl FnOnce() -> G,
    upgrade_and_add_one: impl FnOnce() + Send,
) {
    let upgraded = AtomicBool::new(false);
    std::thread::scope(|s| {
        let r = read();
        let upgrader = s.spawn(|| {
            upgrade_and_add_one();
            upgraded.store(true, Ordering::SeqCst);
        });
        // Give an upgrade that did not wait every chance to show.
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(1));
            assert_eq!(*r, 0, "the upgrade wrote while a reader was inside");
            assert!(!upgraded.load(Ordering::SeqCst), "the upgrade did not wait for the reader");
        }
        drop(r);
        upgrader.join().unwrap();
    });
    assert!(upgraded.load(Ordering::SeqCst));
}
