//! Scale: ten thousand live threads counting and taking read locks, and a
//! million live per-CPU objects, all with exact totals.
//!
//! The threads run on small stacks so that all of them are alive at once
//! (they meet at a barrier before they start and again before they exit);
//! on a machine with few CPUs most of them share a CPU, so the per-CPU
//! words see heavy interleaving of restartable sequences, preemption and
//! migration.

mod common;

use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use cpulocal::percpu::{self, Percpu};
use cpulocal::{cpu, Counter, CpuLocal, LockedCpuLocal, RwLock};

/// Threads alive at once in the thread tests.
const THREADS: usize = 10_000;

/// Stack size for the many-thread tests: enough for the test bodies and
/// the panic machinery, small enough for ten thousand of them.
const STACK: usize = 64 << 10;

/// In a child, checks that the backend and the possible-CPU count it was
/// started with are in force.
fn check_overrides() {
    common::check_forced_backend();
    if let Ok(n) = std::env::var("CPULOCAL_POSSIBLE_CPUS") {
        assert_eq!(cpu::count().to_string(), n, "possible-CPU count not overridden");
    }
}

/// A barrier that can be called off: [`wait`](Gate::wait) returns `true`
/// once `n` threads have arrived, or `false` at once if the gate was
/// [`abandon`](Gate::abandon)ed (a thread failed to start, or panicked),
/// so that a failure ends the test instead of hanging it.
struct Gate {
    state: Mutex<(usize, bool)>,
    moved: Condvar,
    n: usize,
}

impl Gate {
    fn new(n: usize) -> Gate {
        Gate { state: Mutex::new((0, false)), moved: Condvar::new(), n }
    }

    fn wait(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.0 += 1;
        if st.0 == self.n {
            self.moved.notify_all();
        }
        while st.0 < self.n && !st.1 {
            st = self.moved.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        !st.1
    }

    fn abandon(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.moved.notify_all();
    }
}

/// Held while a crowd of threads is alive, in this process or in a child
/// (a crowd also takes a third of Linux's default 32,768 process ids).
fn one_crowd() -> MutexGuard<'static, ()> {
    static ONE_CROWD: Mutex<()> = Mutex::new(());
    ONE_CROWD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spawns `n` threads running `body(index)` on small stacks, all alive at
/// once: each waits at a gate before `body` and at another after it, so no
/// thread exits before every thread has run. Joins them all and panics if
/// any of them did (after letting the others finish).
///
/// One such crowd at a time: each thread costs the process about four
/// memory mappings (stack, guard page, signal stack and its guard), and
/// two crowds at once would pass Linux's default limit of 65,530.
fn many_threads(n: usize, body: impl Fn(usize) + Sync) {
    let _crowd = one_crowd();
    let (start, end) = (Gate::new(n), Gate::new(n));
    let alive = AtomicUsize::new(0);
    let most = AtomicUsize::new(0);
    let failed = thread::scope(|s| {
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (start, end, alive, most, body) = (&start, &end, &alive, &most, &body);
            let spawned = thread::Builder::new().stack_size(STACK).spawn_scoped(s, move || {
                let now = alive.fetch_add(1, Ordering::Relaxed) + 1;
                most.fetch_max(now, Ordering::Relaxed);
                if !start.wait() {
                    return;
                }
                let ran = panic::catch_unwind(AssertUnwindSafe(|| body(i)));
                if ran.is_err() {
                    end.abandon();
                }
                end.wait();
                alive.fetch_sub(1, Ordering::Relaxed);
                if let Err(payload) = ran {
                    panic::resume_unwind(payload);
                }
            });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    start.abandon();
                    for h in handles {
                        let _ = h.join();
                    }
                    panic!("cannot start thread {i} of {n}: {e}");
                }
            }
        }
        handles.into_iter().map(|h| h.join()).filter(Result::is_err).count()
    });
    assert_eq!(failed, 0, "{failed} of {n} threads panicked");
    assert_eq!(most.load(Ordering::Relaxed), n, "not every thread was alive at once");
}

/// Ten thousand threads alive at once each add to a `Counter`, a
/// `CpuLocal<AtomicU64>` and a locked `CpuLocal<u64>`, some hopping CPUs
/// between updates; every total is exact.
#[test]
fn ten_thousand_threads_count_exactly() {
    check_overrides();
    let cpus = common::allowed();
    let per = common::scaled(200) as u64;
    let counter = Counter::new();
    let shared = CpuLocal::<AtomicU64>::new();
    let locked = LockedCpuLocal::<u64>::new();
    many_threads(THREADS, |i| {
        for k in 0..per {
            if i % 16 == 0 && k % 50 == 0 {
                common::hop(&cpus, i + k as usize);
            }
            counter.add(2);
            counter.sub(1);
            shared.get().fetch_add(1, Ordering::Relaxed);
            *locked.lock() += 1;
        }
    });
    let n = THREADS as u64 * per;
    assert_eq!(counter.sum(), n, "Counter lost or gained updates");
    assert_eq!(shared.iter().map(|(_, v)| v.load(Ordering::Relaxed)).sum::<u64>(), n);
    assert_eq!((0..cpu::count()).map(|c| *locked.lock_on(c).unwrap()).sum::<u64>(), n);
}

/// The same crowd under the `getcpu` and `fallback` backends (atomic
/// updates on the CPU's word, or on a per-thread stripe), each in a child.
#[test]
fn ten_thousand_threads_count_exactly_without_rseq() {
    if common::is_child() {
        return;
    }
    let _crowd = one_crowd();
    for backend in ["getcpu", "fallback"] {
        common::in_child("ten_thousand_threads_count_exactly", &[("CPULOCAL_BACKEND", backend)]);
    }
}

/// Both crowds again on a simulated machine with 1,024 possible CPU ids
/// (`CPULOCAL_POSSIBLE_CPUS`): every sum, walk and write visits 1,025
/// copies, all but the real CPUs' still zero.
#[test]
fn ten_thousand_threads_with_1024_possible_cpus() {
    if common::is_child() {
        return;
    }
    let _crowd = one_crowd();
    for test in ["ten_thousand_threads_count_exactly", "ten_thousand_threads_take_read_locks"] {
        common::in_child(test, &[("CPULOCAL_POSSIBLE_CPUS", "1024")]);
    }
}

/// Ten thousand threads alive at once take read locks while a writer keeps
/// writing: no reader is ever inside together with the writer (the writer
/// updates a pair of words one after the other, and checks that no reader
/// has counted itself in), each reader sees the value only grow, the count of read sections (a `Counter`
/// bumped inside each) is exact, and afterwards the lock's per-CPU counts
/// balance (a write lock is free at once).
#[test]
fn ten_thousand_threads_take_read_locks() {
    check_overrides();
    let cpus = common::allowed();
    let per = common::scaled(50) as u64;
    let lock = RwLock::new((0u64, 0u64));
    // Readers inside, as they count themselves in and out; the writer checks
    // it is zero while it holds the lock.
    let inside = AtomicU64::new(0);
    let sections = Counter::new();
    let done = AtomicBool::new(false);
    let writes = thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut writes = 0u64;
            while !done.load(Ordering::Acquire) {
                let mut w = lock.write();
                assert_eq!(inside.load(Ordering::SeqCst), 0, "a reader is inside with the writer");
                // Half an update, visible to any reader inside now.
                // SAFETY: writes through a valid `&mut`.
                unsafe { ptr::write_volatile(&mut w.0, w.0 + 1) };
                pause(200);
                assert_eq!(inside.load(Ordering::SeqCst), 0, "a reader came in beside the writer");
                // SAFETY: as above.
                unsafe { ptr::write_volatile(&mut w.1, w.1 + 1) };
                writes += 1;
                drop(w);
                thread::yield_now();
            }
            writes
        });
        // Whatever happens to the readers, the writer stops.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let stop = Stop(&done);
        many_threads(THREADS, |i| {
            let mut last = 0;
            for k in 0..per {
                if i % 16 == 0 && k % 10 == 0 {
                    common::hop(&cpus, i + k as usize);
                }
                let r = if k % 4 == 3 {
                    match lock.try_read() {
                        Some(r) => r,
                        None => lock.read(),
                    }
                } else {
                    lock.read()
                };
                inside.fetch_add(1, Ordering::SeqCst);
                // SAFETY: reads of plain fields through a valid reference.
                let a = unsafe { ptr::read_volatile(&r.0) };
                pause(20);
                // SAFETY: as above.
                let b = unsafe { ptr::read_volatile(&r.1) };
                assert_eq!(a, b, "a reader saw a writer's half-done update");
                assert!(a >= last, "a reader saw the value go back");
                last = a;
                sections.inc();
                inside.fetch_sub(1, Ordering::SeqCst);
                drop(r);
            }
        });
        drop(stop);
        writer.join().unwrap()
    });
    assert_eq!(sections.sum(), THREADS as u64 * per, "read sections miscounted");
    assert!(writes > 0, "the writer never got in");
    // Every read lock was counted out: the write lock is free.
    let w = lock.try_write().expect("read counts do not balance after every reader left");
    assert_eq!(*w, (writes, writes));
}

/// Spins for a while without a system call.
fn pause(n: u32) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

/// The objects of [`a_million_live_objects_exact_totals`].
const OBJECTS: usize = 1_000_000;

/// A million live `Percpu` allocations of mixed sizes, each counted into
/// by threads that hop CPUs, then walked with `foreach`: every object's
/// total is exact (an overlap between two objects, or a copy landing in
/// the wrong object, would show). Then half are freed and reallocated, and
/// every reallocated object reads zero on every CPU while the survivors
/// keep their totals.
#[test]
fn a_million_live_objects_exact_totals() {
    let n = common::scaled(OBJECTS);
    let cpus = common::allowed();
    let before = percpu::stats();
    // Sizes 8, 16 and 24: the counted word is the object's last.
    let size = |i: usize| 8 * (1 + i % 3);
    let word = |p: &Percpu, at: *mut u8| {
        // SAFETY: `at` is one CPU's copy of `p`, `p.size()` bytes aligned to
        // 8; the last 8 bytes are only used through atomics.
        unsafe { AtomicU64::from_ptr(at.add(p.size() - 8).cast()) }
    };
    let mut objects: Vec<Percpu> = (0..n).map(|i| Percpu::alloc(size(i)).unwrap()).collect();
    let in_use = percpu::stats().in_use - before.in_use;
    assert!(in_use >= (0..n).map(size).sum::<usize>(), "in use {in_use} for {n} objects");
    // Object i gets i % 5 + 1 from each of 4 threads, which hop CPUs.
    let threads = 4;
    let count = |objects: &[Percpu], range: std::ops::Range<usize>| {
        thread::scope(|s| {
            for t in 0..threads {
                let (objects, cpus, range) = (objects, &cpus, range.clone());
                s.spawn(move || {
                    for i in range {
                        if i % 4096 == 0 {
                            common::hop(cpus, t + i / 4096);
                        }
                        let p = &objects[i];
                        let r = p.getref();
                        word(p, r.as_ptr()).fetch_add(i as u64 % 5 + 1, Ordering::Relaxed);
                    }
                });
            }
        });
    };
    let total = |p: &Percpu| {
        let mut sum = 0;
        p.foreach(|_, at| sum += word(p, at).load(Ordering::Relaxed));
        sum
    };
    count(&objects, 0..n);
    for (i, p) in objects.iter().enumerate() {
        assert_eq!(total(p), threads as u64 * (i as u64 % 5 + 1), "object {i} of {n}");
    }
    // Free every other object and allocate in its place (reusing its space,
    // still dirty on the CPUs that counted into it).
    for i in (0..n).step_by(2) {
        objects[i] = Percpu::alloc(size(i)).unwrap();
    }
    for i in (0..n).step_by(2) {
        let p = &objects[i];
        p.foreach(|c, at| {
            // SAFETY: `size()` bytes of this object's copy on CPU `c`.
            let bytes = unsafe { std::slice::from_raw_parts(at, p.size()) };
            assert!(bytes.iter().all(|&b| b == 0), "reallocated object {i} not zero on CPU {c}");
        });
    }
    count(&objects, 0..n);
    for (i, p) in objects.iter().enumerate() {
        let rounds = if i % 2 == 0 { 1 } else { 2 };
        assert_eq!(total(p), rounds * threads as u64 * (i as u64 % 5 + 1), "object {i} of {n}");
    }
}
