//! Fault injection: CPU ids the per-CPU arrays do not cover, an rseq area
//! unregistered behind the library's back, signal handlers that make a
//! thread's first per-CPU update, unloading a shared library that used the
//! restartable sequences, `RLIMIT_AS` too small for the full reservation,
//! the allowed CPU set changing under running threads, and `fork()` with
//! locks held. Each runs in a child process of its own.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use cpulocal::cpu::{self, Backend};
use cpulocal::ops::{Node, PercpuStack, PercpuU64};
use cpulocal::{xcall, Counter, LockedCpuLocal, RwLock};

/// Kills this (child) process with SIGALRM after `secs`, so that a hang
/// fails the test instead of stalling the suite.
fn die_after(secs: u32) {
    // SAFETY: alarm has no preconditions.
    unsafe { libc::alarm(secs) };
}

/// Runs `body` in a forked copy of this process and returns its exit status
/// (`Ok(code)`) or the signal that killed it (`Err(signal)`). `body` returns
/// the exit code; the copy never returns into the test harness.
fn in_fork(body: impl FnOnce() -> i32) -> Result<i32, i32> {
    // SAFETY: the child only runs `body` and `_exit`s; the library under
    // test is what must cope with the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        die_after(60);
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(99);
        // SAFETY: ends the forked copy without running the parent's atexit
        // handlers or the harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Err(libc::WTERMSIG(status))
    }
}

/// The CPUs the calling thread may run on, from the system (not limited to
/// ids below `cpu::count()`, unlike `cpu::allowed`).
fn raw_allowed() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t filled in by sched_getaffinity.
    unsafe {
        let mut mask: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut mask), 0);
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &mask)).collect()
    }
}

/// Restricts thread `tid` (0: the calling thread) to `cpus`.
fn set_raw_affinity(tid: libc::pid_t, cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t filled with CPU_SET; `tid` is 0 or a live
    // thread of ours.
    unsafe {
        let mut mask: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut mask);
        }
        assert_eq!(libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &mask), 0);
    }
}

/// Moves the calling thread to `cpus[step % len]`.
fn hop(cpus: &[usize], step: usize) {
    set_raw_affinity(0, &[cpus[step % cpus.len()]]);
}

/// The allowed CPUs, requiring at least two: the tests that need CPU ids
/// beyond a lowered count, or migration, fail loudly without them.
fn two_cpus() -> Vec<usize> {
    let cpus = raw_allowed();
    assert!(
        cpus.len() >= 2,
        "this test needs two allowed CPUs to run threads on an id beyond the lowered count \
         or to migrate; only {cpus:?} allowed"
    );
    cpus
}

/// Counters, compare-and-store, the per-CPU stack, the lock and the
/// read-write lock, with threads hopping over every allowed CPU; exact
/// totals, and no stack node popped twice or lost.
fn mixed_workload(cpus: &[usize], rounds: usize) {
    let counter = Counter::new();
    let words = PercpuU64::new();
    let stack: PercpuStack<u64> = PercpuStack::new();
    let locked = LockedCpuLocal::<u64>::new();
    let rw = RwLock::new(0u64);
    let popped = Mutex::new(Vec::new());
    let threads = 4;
    thread::scope(|s| {
        for t in 0..threads {
            let (counter, words, stack, locked, rw, popped) =
                (&counter, &words, &stack, &locked, &rw, &popped);
            s.spawn(move || {
                let mut mine = Vec::new();
                for i in 0..rounds {
                    if i % 64 == 0 {
                        hop(cpus, t + i / 64);
                    }
                    counter.inc();
                    let mut seen = words.load_on(cpu::current()).unwrap();
                    while let Err(actual) = words.compare_store(seen, seen + 1) {
                        seen = actual;
                    }
                    stack.push(Box::new(Node::new((t * rounds + i) as u64)));
                    if let Some(node) = stack.pop() {
                        mine.push(node.into_inner());
                    }
                    *locked.lock() += 1;
                    if i % 8 == 0 {
                        *rw.write() += 1;
                    } else {
                        assert!(*rw.read() <= (threads * rounds) as u64);
                    }
                }
                popped.lock().unwrap().extend(mine);
            });
        }
    });
    let n = (threads * rounds) as u64;
    assert_eq!(counter.sum(), n, "counter lost or invented updates");
    assert_eq!(words.sum(), n, "compare-and-store lost or invented updates");
    assert_eq!((0..cpu::count()).map(|c| *locked.lock_on(c).unwrap()).sum::<u64>(), n);
    assert_eq!(*rw.read(), (threads * rounds.div_ceil(8)) as u64);
    let mut popped = popped.into_inner().unwrap();
    let mut stack = stack;
    popped.extend(stack.drain().map(|node| node.into_inner()));
    let unique: HashSet<u64> = popped.iter().copied().collect();
    assert_eq!(unique.len(), popped.len(), "a node was popped twice");
    assert_eq!(popped.len() as u64, n, "nodes were lost");
}

/// A CPU id at or beyond `cpu::count()`: with the count lowered to one on a
/// machine with more CPUs, threads on CPU 1 and up run the restartable
/// sequences with an id out of range. They must update the spill slot
/// atomically, never write past the arrays or plainly into the spill slot.
#[test]
fn cpu_ids_beyond_the_count() {
    if !common::is_child() {
        return common::in_child(
            "cpu_ids_beyond_the_count",
            &[("CPULOCAL_POSSIBLE_CPUS", "1"), ("CPULOCAL_BACKEND", "rseq")],
        );
    }
    die_after(120);
    assert_eq!(cpu::count(), 1);
    assert_eq!(cpu::backend(), Backend::Rseq);
    let cpus = two_cpus();
    assert_eq!(cpu::current(), 0, "current() must stay below count()");
    mixed_workload(&cpus, common::scaled(20_000));
    stack_across_the_count(cpus[0], *cpus.last().unwrap());
    // The same under the library's own registration is covered by
    // `cpu_ids_beyond_the_count_own_area`.
}

/// Threads on a CPU id beyond the count push and pop while threads on CPU
/// `low` find their own list empty and pop from the spill list, which the
/// others' out-of-range ids also reach: every node must come out exactly
/// once (a plain restartable pop racing a locked atomic one pops a node
/// twice).
fn stack_across_the_count(low: usize, high: usize) {
    assert!(high >= cpu::count(), "CPU {high} is not beyond count() = {}", cpu::count());
    let stack: PercpuStack<u64> = PercpuStack::new();
    let popped = Mutex::new(Vec::new());
    let done = AtomicUsize::new(0);
    let per = common::scaled(50_000) as u64;
    thread::scope(|s| {
        for t in 0..2u64 {
            let (stack, popped, done) = (&stack, &popped, &done);
            s.spawn(move || {
                hop(&[high], 0);
                let mut mine = Vec::new();
                for i in 0..per {
                    stack.push(Box::new(Node::new(t * per + i)));
                    if i % 2 == 0 {
                        if let Some(node) = stack.pop() {
                            mine.push(node.into_inner());
                        }
                    }
                }
                done.fetch_add(1, Ordering::Release);
                popped.lock().unwrap().extend(mine);
            });
        }
        for _ in 0..2 {
            let (stack, popped, done) = (&stack, &popped, &done);
            s.spawn(move || {
                hop(&[low], 0);
                let mut mine = Vec::new();
                while done.load(Ordering::Acquire) < 2 {
                    if let Some(node) = stack.pop() {
                        mine.push(node.into_inner());
                    }
                }
                popped.lock().unwrap().extend(mine);
            });
        }
    });
    let mut popped = popped.into_inner().unwrap();
    let mut stack = stack;
    popped.extend(stack.drain().map(|node| node.into_inner()));
    let unique: HashSet<u64> = popped.iter().copied().collect();
    assert_eq!(unique.len(), popped.len(), "a node was popped twice");
    assert_eq!(popped.len() as u64, 2 * per, "nodes were lost");
}

#[test]
fn cpu_ids_beyond_the_count_own_area() {
    if !common::is_child() {
        common::in_child(
            "cpu_ids_beyond_the_count",
            &[("CPULOCAL_POSSIBLE_CPUS", "1"), ("CPULOCAL_BACKEND", "rseq"), common::OWN_RSEQ],
        );
    }
}

/// The rseq area unregistered behind the library's back (as a foreign
/// `rseq(..., RSEQ_FLAG_UNREGISTER)` on glibc's area does): the kernel stops
/// updating it, `cpu_id` reads `u32::MAX`, and every update must take the
/// atomic spill path, exactly.
#[test]
fn rseq_area_unregistered_behind_our_back() {
    if !common::is_child() {
        return common::in_child(
            "rseq_area_unregistered_behind_our_back",
            &[("CPULOCAL_BACKEND", "rseq")],
        );
    }
    die_after(120);
    if glibc_rseq_offset().is_none() {
        eprintln!("skipped: glibc does not register rseq here (or not x86_64)");
        return;
    }
    let counter = Counter::new();
    let stack: PercpuStack<u32> = PercpuStack::new();
    let rounds = common::scaled(100_000) as u64;
    let others = AtomicBool::new(true);
    thread::scope(|s| {
        // Other threads keep counting normally meanwhile.
        for _ in 0..2 {
            s.spawn(|| {
                while others.load(Ordering::Relaxed) {
                    counter.inc();
                    counter.sub(1);
                }
            });
        }
        s.spawn(|| {
            // Use the area first, so that the library holds on to it.
            counter.inc();
            unregister_glibc_area();
            for i in 0..rounds {
                counter.inc();
                stack.push(Box::new(Node::new(i as u32)));
                assert!(stack.pop().is_some(), "a pushed node must come back");
                assert!(cpu::current() < cpu::count());
            }
        });
        thread::sleep(Duration::from_millis(100));
        others.store(false, Ordering::Relaxed);
    });
    assert_eq!(counter.sum(), rounds + 1);
}

/// glibc's `__rseq_offset` where glibc registered rseq areas and this test
/// can find them (x86_64: the thread pointer is `fs:0`).
fn glibc_rseq_offset() -> Option<isize> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    // SAFETY: dlsym only looks symbols up; glibc defines both as const data.
    unsafe {
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        let offset = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        if size.is_null() || offset.is_null() || size.cast::<u32>().read() < 20 {
            return None;
        }
        Some(offset.cast::<isize>().read())
    }
}

/// Unregisters glibc's rseq area for the calling thread behind the
/// library's back (as a foreign `rseq(..., RSEQ_FLAG_UNREGISTER)` does). The
/// caller checked [`glibc_rseq_offset`].
fn unregister_glibc_area() {
    let offset = glibc_rseq_offset().expect("glibc registers rseq here");
    #[cfg(target_arch = "x86_64")]
    {
        let tp: *mut u8;
        // SAFETY: reads the x86_64 thread pointer (fs:0), no side effects.
        unsafe {
            std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly));
        }
        let area = tp.wrapping_offset(offset);
        // SAFETY: unregisters glibc's area for this thread with the
        // arguments glibc registered it with (32 bytes, its signature);
        // glibc only reads the area afterwards.
        let rc = unsafe { libc::syscall(libc::SYS_rseq, area, 32u32, 1, 0x5305_3053u32) };
        assert_eq!(rc, 0, "unregistering glibc's area: {}", std::io::Error::last_os_error());
        // SAFETY: the area's `cpu_id` (offset 4) is a plain u32.
        let id = unsafe { area.add(4).cast::<u32>().read_volatile() };
        assert_eq!(id, u32::MAX, "the kernel leaves -1 in an unregistered area");
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = offset;
}

/// The spill slot is shared by CPU ids beyond the count and by threads
/// without an rseq area, so every update of it must be atomic: one thread on
/// a CPU id beyond the count (`CPULOCAL_POSSIBLE_CPUS=1`) and one whose area
/// was unregistered count and read-lock at once, on two CPUs. A plain
/// restartable `add` on the spill slot (a fast path that trusts one id too
/// many) loses updates against the other's locked one.
#[test]
fn spill_slot_updates_stay_atomic() {
    if !common::is_child() {
        return common::in_child(
            "spill_slot_updates_stay_atomic",
            &[("CPULOCAL_POSSIBLE_CPUS", "1"), ("CPULOCAL_BACKEND", "rseq")],
        );
    }
    die_after(120);
    if glibc_rseq_offset().is_none() {
        eprintln!("skipped: glibc does not register rseq here (or not x86_64)");
        return;
    }
    let cpus = two_cpus();
    let (low, high) = (cpus[0], *cpus.last().unwrap());
    let counter = Counter::new();
    let lock = RwLock::new(());
    let rounds = common::scaled(2_000_000) as u64;
    thread::scope(|s| {
        s.spawn(|| {
            hop(&[high], 0);
            for _ in 0..rounds {
                counter.inc();
                drop(lock.read());
            }
        });
        s.spawn(|| {
            hop(&[low], 0);
            counter.inc();
            unregister_glibc_area();
            for _ in 1..rounds {
                counter.inc();
                drop(lock.read());
            }
        });
    });
    assert_eq!(counter.sum(), 2 * rounds, "updates of the spill slot were lost");
    assert!(lock.try_write().is_some(), "read-lock counts were lost: the lock looks held");
}

/// Makes the `rseq` system call fail with ENOSYS for the calling thread and
/// the threads it starts from now on (a seccomp filter, as a sandbox might
/// install).
fn refuse_rseq() {
    common::refuse_syscalls(&[libc::SYS_rseq]);
}

/// rseq refused by the kernel from the start (a seccomp filter), with
/// glibc's registration off (with it on, glibc itself aborts threads whose
/// registration fails): the library must pick `sched_getcpu`, exactly.
#[test]
fn rseq_refused_by_the_kernel() {
    if !common::is_child() {
        if cfg!(target_env = "gnu") {
            common::in_child("rseq_refused_by_the_kernel", &[common::OWN_RSEQ]);
        }
        return;
    }
    die_after(120);
    refuse_rseq();
    let cpus = two_cpus();
    assert_eq!(cpu::backend(), Backend::Getcpu, "rseq refused, so sched_getcpu");
    mixed_workload(&cpus, common::scaled(10_000));
}

static SIGNAL_COUNTER: OnceLock<Counter> = OnceLock::new();
static HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_in_handler(_: libc::c_int) {
    if let Some(c) = SIGNAL_COUNTER.get() {
        c.inc();
    }
    HANDLED.fetch_add(1, Ordering::Release);
}

/// A thread's first per-CPU update made from a signal handler that
/// interrupted the thread inside `malloc`, with the library registering its
/// own rseq area: registration must not allocate (it would deadlock on the
/// allocator's lock), and every count must arrive.
#[test]
fn first_use_in_a_signal_handler_with_own_rseq() {
    if !common::is_child() {
        if cfg!(target_env = "gnu") {
            common::in_child(
                "first_use_in_a_signal_handler_with_own_rseq",
                &[("CPULOCAL_BACKEND", "rseq"), common::OWN_RSEQ],
            );
        }
        // And with glibc's area, found without allocating either.
        common::in_child(
            "first_use_in_a_signal_handler_with_own_rseq",
            &[("CPULOCAL_BACKEND", "rseq")],
        );
        return;
    }
    die_after(120);
    assert_eq!(cpu::backend(), Backend::Rseq);
    let counter = SIGNAL_COUNTER.get_or_init(Counter::new);
    counter.inc(); // the process is set up; the threads below are not
    common::on_sigusr1(count_in_handler);
    let rounds = common::scaled(50);
    for _ in 0..rounds {
        let done = AtomicBool::new(false);
        let started = Mutex::new(None);
        thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: pthread_self has no preconditions.
                *started.lock().unwrap() = Some(unsafe { libc::pthread_self() });
                // Allocate and free all the time: signals land in malloc.
                let mut keep = Vec::new();
                while !done.load(Ordering::Acquire) {
                    keep.push(vec![0u8; 64 + keep.len() % 512]);
                    if keep.len() > 64 {
                        keep.clear();
                    }
                }
            });
            let target = loop {
                if let Some(t) = *started.lock().unwrap() {
                    break t;
                }
                thread::yield_now();
            };
            // A handful of signals each round, each once the previous one
            // was handled: the first is the thread's first per-CPU update.
            for _ in 0..5 {
                let before = HANDLED.load(Ordering::Acquire);
                // SAFETY: the worker has not been joined, so `target` is valid.
                assert_eq!(unsafe { libc::pthread_kill(target, libc::SIGUSR1) }, 0);
                while HANDLED.load(Ordering::Acquire) == before {
                    std::hint::spin_loop();
                }
            }
            done.store(true, Ordering::Release);
        });
    }
    assert_eq!(counter.sum(), 1 + HANDLED.load(Ordering::Acquire));
}

/// Unloading a shared library that ran restartable sequences, while the
/// threads that ran them live on and get preempted: the kernel must never
/// find `rseq_cs` pointing into unmapped code (it kills the thread). The
/// library is a cdylib built from this workspace (`fixtures/unload`).
#[test]
fn dlclose_after_restartable_sequences() {
    if !common::is_child() {
        return common::in_child(
            "dlclose_after_restartable_sequences",
            &[("CPULOCAL_BACKEND", "rseq")],
        );
    }
    die_after(120);
    let exe = std::env::current_exe().unwrap();
    let lib = exe.parent().unwrap().join("libcpulocal_unload_fixture.so");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/unload/Cargo.toml");
    if !std::path::Path::new(fixture).exists() {
        // A packaged copy of the crate, outside its workspace: the fixture
        // (a path dev-dependency) is not part of it.
        eprintln!("skipped: the fixtures/unload library is not part of this build");
        return;
    }
    assert!(lib.exists(), "{} not built (a dev-dependency of cpulocal)", lib.display());
    let path = std::ffi::CString::new(lib.into_os_string().into_encoded_bytes()).unwrap();
    for _round in 0..10 {
        // SAFETY: loads our fixture library, which has no initialisers of
        // its own beyond Rust's.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen failed");
        // SAFETY: looks up the fixture's exported function.
        let sym = unsafe { libc::dlsym(handle, c"cpulocal_fixture_count".as_ptr()) };
        assert!(!sym.is_null());
        // SAFETY: the fixture defines it as `extern "C" fn(u64) -> u64`.
        let count: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(sym) };
        let threads = 4;
        let ready = AtomicUsize::new(0);
        let closed = AtomicBool::new(false);
        thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    assert_eq!(count(1000), 1000);
                    ready.fetch_add(1, Ordering::Release);
                    // Spin, then get preempted many times, with `rseq_cs`
                    // perhaps still pointing into the library.
                    while !closed.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    for _ in 0..200 {
                        thread::yield_now();
                        let t = std::time::Instant::now();
                        while t.elapsed() < Duration::from_micros(50) {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
            while ready.load(Ordering::Acquire) < threads {
                std::hint::spin_loop();
            }
            // SAFETY: nothing of the library is used after this (the
            // threads only spin).
            assert_eq!(unsafe { libc::dlclose(handle) }, 0);
            closed.store(true, Ordering::Release);
        });
    }
}

/// The address space limited (`RLIMIT_AS`) below what the full 1 GiB-per-CPU
/// reservation needs: allocation must retry with smaller regions; a refusal
/// is repeated at once for the next 100 ms (each try is a dozen `mmap`
/// calls), and not remembered after that.
#[test]
fn rlimit_as_too_small_for_the_full_reservation() {
    if !common::is_child() {
        return common::in_child("rlimit_as_too_small_for_the_full_reservation", &[]);
    }
    die_after(120);
    let vm_now = {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().next().unwrap().parse().unwrap();
        // SAFETY: sysconf has no preconditions.
        pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
    };
    let slots = cpu::count() + 1;
    let set_limit = |bytes: usize| {
        let lim = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: sets this process's own soft limit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
    };
    // First: no room for even the smallest regions. The failure is an
    // error, not a panic or an abort.
    set_limit(vm_now + (slots << 20) / 2);
    let err = Counter::try_new().expect_err("allocation must fail with no address space");
    let refused = Instant::now();
    assert!(err.to_string().contains("address space"), "{err}");
    // Then: room for half-sized regions but not full ones. Right after the
    // refusal, it stands (with the same message) without a new try.
    set_limit(vm_now + slots * (1 << 29) + (64 << 20));
    let again = Counter::try_new();
    if refused.elapsed() < Duration::from_millis(50) {
        assert_eq!(again.err(), Some(err), "a refusal 100 ms old is not tried again");
    }
    thread::sleep(Duration::from_millis(150));
    let c = Counter::try_new().expect("retry with smaller regions, not the cached error");
    let reserved = cpulocal::percpu::stats().reserved;
    assert!((1 << 20..1 << 30).contains(&reserved), "reserved {reserved} per CPU");
    let cpus = common::allowed();
    thread::scope(|s| {
        for t in 0..2 {
            let (c, cpus) = (&c, &cpus);
            s.spawn(move || {
                for i in 0..10_000 {
                    if i % 500 == 0 {
                        common::hop(cpus, t + i / 500);
                    }
                    c.inc();
                }
            });
        }
    });
    assert_eq!(c.sum(), 20_000);
    // Each CPU's adds land in that CPU's own word, found at the region size
    // actually reserved (not the largest one the fast path is built for).
    for (step, &cpu) in cpus.iter().enumerate() {
        common::hop(&cpus, step);
        let before = c.per_cpu().nth(cpu).unwrap().1;
        c.add(7);
        let after = c.per_cpu().nth(cpu).unwrap().1;
        assert_eq!(after.wrapping_sub(before), 7, "an add on CPU {cpu} missed its word");
    }
    // An object as large as a region still fits; one byte more does not.
    let big = cpulocal::percpu::Percpu::alloc(reserved / 2).expect("half a region");
    drop(big);
    assert!(cpulocal::percpu::Percpu::alloc(reserved + 1).is_err());
}

/// The allowed CPU set shrinking to one CPU and growing back, imposed on
/// running threads from outside (as a cpuset change does), while they count,
/// lock and take read and write locks: exact totals.
#[test]
fn allowed_cpus_shrink_and_grow_under_load() {
    if !common::is_child() {
        return common::under_every_path("allowed_cpus_shrink_and_grow_under_load");
    }
    die_after(120);
    let cpus = two_cpus();
    let counter = Counter::new();
    let locked = LockedCpuLocal::<u64>::new();
    let rw = RwLock::new(0u64);
    let tids = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    let threads = 3;
    let per = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (counter, locked, rw, tids, stop) = (&counter, &locked, &rw, &tids, &stop);
                s.spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    tids.lock().unwrap().push(unsafe { libc::gettid() });
                    let mut mine = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        counter.inc();
                        *locked.lock() += 1;
                        if mine.is_multiple_of(16) {
                            *rw.write() += 1;
                        } else {
                            drop(rw.read());
                        }
                        mine += 1;
                    }
                    mine
                })
            })
            .collect();
        while tids.lock().unwrap().len() < threads {
            thread::yield_now();
        }
        // Shrink to each CPU alone, then grow back to all, many times.
        for step in 0..common::scaled(400) {
            let set: Vec<usize> =
                if step % 2 == 0 { vec![cpus[(step / 2) % cpus.len()]] } else { cpus.clone() };
            for &tid in tids.lock().unwrap().iter() {
                set_raw_affinity(tid, &set);
            }
            rounds.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_micros(500));
        }
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().map(|w| w.join().unwrap()).collect::<Vec<_>>()
    });
    let n: u64 = per.iter().sum();
    assert!(per.iter().all(|&p| p > 0), "a worker never ran: {per:?}");
    assert_eq!(counter.sum(), n);
    assert_eq!((0..cpu::count()).map(|c| *locked.lock_on(c).unwrap()).sum::<u64>(), n);
    let writes: u64 = per.iter().map(|&p| p.div_ceil(16)).sum();
    assert_eq!(*rw.read(), writes);
}

/// Cross-calls in a forked child: the parent's service threads do not exist
/// there; the call must still run (the child starts its own).
#[test]
fn xcall_in_a_forked_child() {
    if !common::is_child() {
        return common::in_child("xcall_in_a_forked_child", &[]);
    }
    die_after(120);
    let cpu0 = common::allowed()[0];
    xcall::unicast(cpu0, || ()).unwrap().wait().unwrap(); // parent's service threads
    let status = in_fork(|| {
        let ran = std::sync::Arc::new(AtomicBool::new(false));
        let r = std::sync::Arc::clone(&ran);
        let ticket = match xcall::unicast(cpu0, move || r.store(true, Ordering::Release)) {
            Ok(t) => t,
            Err(_) => return 2,
        };
        match ticket.wait_timeout(Duration::from_secs(20)) {
            Ok(true) if ran.load(Ordering::Acquire) => {}
            _ => return 3,
        }
        let visits = std::sync::Arc::new(AtomicUsize::new(0));
        let v = std::sync::Arc::clone(&visits);
        let Ok(t) = xcall::broadcast(move |_| {
            v.fetch_add(1, Ordering::Relaxed);
        }) else {
            return 4;
        };
        if t.wait_timeout(Duration::from_secs(20)) != Ok(true) {
            return 5;
        }
        if visits.load(Ordering::Relaxed) != common::allowed().len() {
            return 6;
        }
        0
    });
    assert_eq!(status, Ok(0), "cross-call in the forked child (exit code or signal)");
    // The parent's services still work.
    xcall::unicast(cpu0, || ()).unwrap().wait().unwrap();
}

/// `fork()` while other threads hold a `CpuLocal` lock guard, a read lock
/// and a write lock. The child has none of those threads: what they held
/// stays held there (as with any mutex), but everything else works: counting,
/// new objects, the other CPUs' locks, and more readers on the read-held
/// lock.
#[test]
fn fork_while_locks_are_held() {
    if !common::is_child() {
        return common::in_child("fork_while_locks_are_held", &[]);
    }
    die_after(120);
    let cpus = two_cpus();
    let counter = Counter::new();
    let locked = LockedCpuLocal::<u64>::new();
    let read_held = RwLock::new(7u64);
    let write_held = RwLock::new(0u64);
    let holding = AtomicUsize::new(0);
    let release = AtomicBool::new(false);
    let status = thread::scope(|s| {
        let (locked, read_held, write_held, holding, release, counter) =
            (&locked, &read_held, &write_held, &holding, &release, &counter);
        let held_cpu = cpus[0];
        s.spawn(move || {
            let mut g = locked.lock_on(held_cpu).unwrap();
            *g += 1;
            holding.fetch_add(1, Ordering::Release);
            while !release.load(Ordering::Acquire) {
                counter.inc();
                std::hint::spin_loop();
            }
            drop(g);
        });
        s.spawn(move || {
            let g = read_held.read();
            holding.fetch_add(1, Ordering::Release);
            while !release.load(Ordering::Acquire) {
                thread::yield_now();
            }
            drop(g);
        });
        s.spawn(move || {
            let mut g = write_held.write();
            *g += 1;
            holding.fetch_add(1, Ordering::Release);
            while !release.load(Ordering::Acquire) {
                thread::yield_now();
            }
            drop(g);
        });
        while holding.load(Ordering::Acquire) < 3 {
            thread::yield_now();
        }
        let status = in_fork(|| {
            let before = counter.sum();
            for _ in 0..1000 {
                counter.inc();
            }
            if counter.sum() != before + 1000 {
                return 2;
            }
            // Other CPUs' locks are free.
            for &c in &cpus[1..] {
                *locked.lock_on(c).unwrap() += 1;
            }
            // More readers on a read-held lock get in.
            if *read_held.read() != 7 || read_held.try_read().is_none() {
                return 3;
            }
            // The held ones stay held, and say so without blocking.
            if read_held.try_write().is_some() || write_held.try_read().is_some() {
                return 4;
            }
            // New objects work in full.
            let fresh = RwLock::new(0u64);
            *fresh.write() += 1;
            let fresh_local = LockedCpuLocal::<u64>::new();
            *fresh_local.lock() += 1;
            if *fresh.read() != 1 || *fresh_local.lock() != 1 {
                return 5;
            }
            mixed_workload(&cpus, 2_000);
            0
        });
        release.store(true, Ordering::Release);
        status
    });
    assert_eq!(status, Ok(0), "forked child (exit code or signal)");
    assert_eq!(*write_held.read(), 1);
    assert_eq!(*locked.lock_on(cpus[0]).unwrap(), 1);
}

/// Children forked while another thread makes and drops counters (so
/// allocates and frees per-CPU memory, under the allocator's lock) find
/// the allocator unlocked: each makes a counter and counts. Before the
/// allocator's fork handlers, a child forked while that thread held the
/// lock waited forever at its first allocation.
#[test]
fn forked_children_allocate_while_another_thread_churns() {
    if !common::is_child() {
        return common::in_child("forked_children_allocate_while_another_thread_churns", &[]);
    }
    die_after(300);
    let stop = AtomicBool::new(false);
    let (mut ok, mut bad) = (0, Vec::new());
    thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let c = Counter::new();
                c.inc();
            }
        });
        for _ in 0..common::scaled(200) {
            // SAFETY: the child only counts and ends with `_exit`; the
            // parent waits for it.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let c = Counter::new();
                c.add(3);
                let code = if c.sum() == 3 && !c.alloc_failed() { 0 } else { 1 };
                // SAFETY: ends the forked child.
                unsafe { libc::_exit(code) };
            }
            let started = Instant::now();
            let mut status = 0;
            loop {
                // SAFETY: polls the child forked above.
                if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                        ok += 1;
                    } else {
                        bad.push(format!("exit status {status:#x}"));
                    }
                    break;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    // SAFETY: kills and reaps the child forked above.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, &mut status, 0);
                    }
                    bad.push("hung".into());
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
            if !bad.is_empty() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(bad.is_empty(), "after {ok} good children: {bad:?}");
}
