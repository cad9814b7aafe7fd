//! `Counter` totals are exact: with threads hopping CPUs, under a stream of
//! signals (each one aborts a restartable sequence in flight), across
//! `fork()`, through thread churn, and in thread-exit destructors (the spill
//! word), under every backend.
#![cfg(all(target_os = "linux", not(miri)))]

mod common;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread;

use cpulocal::cpu::{self, Backend};
use cpulocal::ops::PercpuU64;
use cpulocal::Counter;

#[test]
fn hopping_add_sub_is_exact() {
    if !common::is_child() {
        return common::under_every_path("hopping_add_sub_is_exact");
    }
    common::check_forced_backend();
    let cpus = common::allowed();
    let c = Counter::new();
    let n = common::scaled(100_000) as u64;
    thread::scope(|s| {
        for t in 0..4 {
            let (c, cpus) = (&c, &cpus);
            s.spawn(move || {
                for i in 0..n {
                    if i % 64 == 0 {
                        common::hop(cpus, t + (i / 64) as usize);
                    }
                    c.add(3);
                    c.sub(1);
                }
            });
        }
    });
    assert_eq!(c.sum(), 4 * 2 * n, "{c:?}");
}

#[test]
fn sub_on_another_cpu_cancels_add() {
    if !common::is_child() {
        return common::under_every_path("sub_on_another_cpu_cancels_add");
    }
    common::check_forced_backend();
    let cpus = common::allowed();
    let mut c = Counter::default();
    for step in 0..100 {
        common::hop(&cpus, step);
        c.add(1000 + step as u64);
        common::hop(&cpus, step + 1);
        c.sub(1000 + step as u64);
    }
    assert_eq!(c.sum(), 0, "{c:?}");
    c.inc();
    assert_eq!(format!("{c:?}"), "Counter { sum: 1 }");
    c.reset();
    assert_eq!(c.sum(), 0);
}

static SIGNALLED: OnceLock<Counter> = OnceLock::new();
static HANDLED: AtomicU64 = AtomicU64::new(0);

/// Signals a worker handles at least (it counts on until it has).
const MIN_SIGNALS: u64 = 3000;

extern "C" fn count_in_handler(_sig: libc::c_int) {
    // Runs on the counting thread, perhaps in the middle of its own
    // sequence (which the kernel has aborted): nested sequences.
    if let Some(c) = SIGNALLED.get() {
        c.inc();
    }
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn signal_stream_is_exact() {
    if !common::is_child() {
        return common::under_every_path("signal_stream_is_exact");
    }
    common::check_forced_backend();
    let cpus = common::allowed();
    let c = SIGNALLED.get_or_init(Counter::new);
    common::on_sigusr1(count_in_handler);
    let n = common::scaled(400_000) as u64;
    let (ready, started) = mpsc::channel();
    let done = AtomicBool::new(false);
    let counted = thread::scope(|s| {
        let worker = s.spawn(|| {
            // The first update (rseq registration) comes before any signal.
            c.inc();
            // SAFETY: pthread_self has no preconditions.
            ready.send(unsafe { libc::pthread_self() }).unwrap();
            let mut i = 0;
            while i < n || HANDLED.load(Ordering::Relaxed) < MIN_SIGNALS {
                if i % 4096 == 0 {
                    common::hop(&cpus, (i / 4096) as usize);
                }
                c.inc();
                i += 1;
            }
            // Signals sent before this are handled before it returns; later
            // ones stay pending until the thread exits. (Scoped threads count
            // as finished before they exit: without this a late handler
            // could count after the totals are read.)
            common::block_sigusr1();
            done.store(true, Ordering::Release);
            i
        });
        let target = started.recv().unwrap();
        common::signal_until(target, &done, &HANDLED);
        worker.join().unwrap()
    });
    let handled = HANDLED.load(Ordering::Relaxed);
    assert_eq!(c.sum(), counted + 1 + handled, "{handled} signals");
}

#[test]
fn fork_mid_count_child_keeps_counting() {
    if !common::is_child() {
        return common::under_every_path("fork_mid_count_child_keeps_counting");
    }
    common::check_forced_backend();
    let cpus = common::allowed();
    let c = Counter::new();
    let k = common::scaled(50_000) as u64;
    let stop = AtomicBool::new(false);
    let helpers_total = thread::scope(|s| {
        let helpers: Vec<_> = (0..2)
            .map(|t| {
                let (c, cpus, stop) = (&c, &cpus, &stop);
                s.spawn(move || {
                    let mut mine = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if mine.is_multiple_of(256) {
                            common::hop(cpus, t + (mine / 256) as usize);
                        }
                        c.inc();
                        mine += 1;
                    }
                    mine
                })
            })
            .collect();
        for i in 0..k {
            if i % 256 == 0 {
                common::hop(&cpus, (i / 256) as usize);
            }
            c.add(2);
        }
        // SAFETY: the child only counts, spawns a thread and exits with
        // `_exit`; glibc makes malloc usable in the child of a threaded fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = std::panic::catch_unwind(|| child_counts(&c, &cpus, k)).unwrap_or(3);
            // SAFETY: ends the child without unwinding into the parent's
            // copy of the test harness.
            unsafe { libc::_exit(code) };
        }
        for i in 0..k {
            if i % 256 == 0 {
                common::hop(&cpus, (i / 256) as usize + 1);
            }
            c.add(2);
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "forked child failed (status {status:#x})"
        );
        stop.store(true, Ordering::Relaxed);
        helpers.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    assert_eq!(c.sum(), 4 * k + helpers_total);
}

/// The forked child: this thread is the only one; the counter holds the
/// parent's counts at the moment of the fork.
fn child_counts(c: &Counter, cpus: &[usize], k: u64) -> i32 {
    let at_fork = c.sum();
    if at_fork < 2 * k {
        eprintln!("child: {at_fork} at fork, below the parent's own {}", 2 * k);
        return 1;
    }
    let m = common::scaled(20_000) as u64;
    for i in 0..m {
        if i % 128 == 0 {
            common::hop(cpus, (i / 128) as usize);
        }
        c.add(5);
        c.sub(2);
    }
    thread::scope(|s| {
        s.spawn(|| (0..m).for_each(|_| c.inc()));
    });
    let want = at_fork + 4 * m;
    if c.sum() != want {
        eprintln!("child: sum {} != {want}", c.sum());
        return 2;
    }
    0
}

#[test]
fn thread_churn_is_exact() {
    if !common::is_child() {
        return common::under_every_path("thread_churn_is_exact");
    }
    common::check_forced_backend();
    let cpus = common::allowed();
    let c = Counter::new();
    let rounds = common::scaled(40);
    let per = 500u64;
    for round in 0..rounds {
        thread::scope(|s| {
            for t in 0..4 {
                let (c, cpus) = (&c, &cpus);
                s.spawn(move || {
                    for i in 0..per {
                        if i % 100 == 0 {
                            common::hop(cpus, round + t + i as usize);
                        }
                        c.add(2);
                        c.sub(1);
                    }
                });
            }
        });
    }
    assert_eq!(c.sum(), rounds as u64 * 4 * per);
}

/// Counts `n` into both counters when the thread's locals are destroyed.
struct CountAtExit<'a> {
    counter: &'a Counter,
    words: &'a PercpuU64,
    n: u64,
}

impl Drop for CountAtExit<'_> {
    fn drop(&mut self) {
        for _ in 0..self.n {
            self.counter.inc();
            self.words.add(1);
        }
    }
}

thread_local! {
    static AT_EXIT: Cell<Option<CountAtExit<'static>>> = const { Cell::new(None) };
}

#[test]
fn thread_exit_destructors_are_counted() {
    if !common::is_child() {
        return common::under_every_path("thread_exit_destructors_are_counted");
    }
    common::check_forced_backend();
    if common::own_rseq() {
        assert_eq!(cpu::backend(), Backend::Rseq, "own rseq registration not used");
    }
    let cpus = common::allowed();
    let counter: &'static Counter = Box::leak(Box::new(Counter::new()));
    let words: &'static PercpuU64 = Box::leak(Box::new(PercpuU64::new()));
    let (threads, per, at_exit) = (common::scaled(100) as u64, 200u64, 300u64);
    let stop = AtomicBool::new(false);
    let hammered = thread::scope(|s| {
        // Two threads keep the CPUs' words busy with restartable sequences
        // while exiting threads count from their destructors.
        let hammers: Vec<_> = (0..2)
            .map(|t| {
                let (cpus, stop) = (&cpus, &stop);
                s.spawn(move || {
                    let mut mine = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if mine.is_multiple_of(1024) {
                            common::hop(cpus, t + (mine / 1024) as usize);
                        }
                        counter.inc();
                        words.add(1);
                        mine += 1;
                    }
                    mine
                })
            })
            .collect();
        for i in 0..threads {
            thread::spawn(move || {
                // Destroyed after the thread's last ordinary count: the rseq
                // area (glibc's, or the library's own, which has no
                // destructor) is still registered, so the destructor still
                // counts with restartable sequences.
                AT_EXIT.with(|a| a.set(Some(CountAtExit { counter, words, n: at_exit })));
                common::hop(&common::allowed(), i as usize);
                for _ in 0..per {
                    counter.inc();
                    words.add(1);
                }
            })
            .join()
            .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        hammers.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    let want = hammered + threads * (per + at_exit);
    assert_eq!(counter.sum(), want, "{counter:?}");
    assert_eq!(words.sum(), want, "{words:?}");
    // Every thread here, exiting ones included, has a usable rseq area
    // (under rseq) or a CPU id below count() (under getcpu and fallback):
    // nothing may have gone to the spill word, on any path, glibc's
    // registration included.
    let spill = words.load_on(cpu::count()).unwrap();
    assert_eq!(spill, 0, "destructors must count in CPU words, not the spill word");
}

/// A `static` counter, allocated on first use by racing threads, is exact.
#[test]
fn static_counter_first_use_races_are_exact() {
    static RACED: Counter = Counter::new();
    let start = std::sync::Barrier::new(4);
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                start.wait();
                for _ in 0..10_000 {
                    RACED.inc();
                }
            });
        }
    });
    assert_eq!(RACED.sum(), 40_000);
    assert!(!RACED.alloc_failed());
}

/// `take` while other threads add: every add is either in some `take` or
/// still in the counter, never lost or counted twice.
#[test]
fn take_under_concurrent_adds_loses_nothing() {
    let c = Counter::new();
    let done = AtomicBool::new(false);
    let n = common::scaled(200_000) as u64;
    let taken = thread::scope(|s| {
        let adders: Vec<_> = (0..2)
            .map(|t| {
                let (c, cpus) = (&c, common::allowed());
                s.spawn(move || {
                    for i in 0..n {
                        if i % 4096 == 0 {
                            common::hop(&cpus, t + (i / 4096) as usize);
                        }
                        c.add(1);
                    }
                })
            })
            .collect();
        let taker = s.spawn(|| {
            let mut taken = 0u64;
            while !done.load(Ordering::Relaxed) {
                taken += c.take();
            }
            taken + c.take()
        });
        adders.into_iter().for_each(|a| a.join().unwrap());
        done.store(true, Ordering::Relaxed);
        taker.join().unwrap()
    });
    assert_eq!(taken + c.sum(), 2 * n, "take lost or doubled updates");
}

/// `set` and `swap` from several threads at once: each swap returns what
/// the previous one (in lock order) set, so the returned values and the
/// final value account for every set exactly once.
#[test]
fn concurrent_swaps_are_serialized() {
    let c = Counter::from(0);
    let returned = thread::scope(|s| {
        let hs: Vec<_> = (1..=4u64)
            .map(|t| {
                let c = &c;
                s.spawn(move || (0..2_000).map(|_| c.swap(t)).collect::<Vec<u64>>())
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect::<Vec<u64>>()
    });
    // 8,000 swaps each stored one of 1..=4 and returned the value before:
    // the stored values are the returned ones after the first (0), plus
    // the final value.
    let stored: u64 = (1..=4u64).map(|t| t * 2_000).sum();
    let got: u64 = returned.iter().sum::<u64>() + c.sum();
    assert_eq!(got, stored, "a swap overlapped another");
    assert!(returned.iter().all(|&v| v <= 4), "a swap saw a torn sum");
}

#[test]
fn per_cpu_shares_sum_to_the_total_and_sit_on_the_right_cpu() {
    let c = Counter::new();
    let cpus = common::allowed();
    for (step, &cpu) in cpus.iter().enumerate() {
        common::hop(&cpus, step);
        c.add(1000 + cpu as u64);
    }
    cpu::set_affinity(&cpus).unwrap();
    let shares: Vec<(usize, u64)> = c.per_cpu().collect();
    assert_eq!(shares.len(), cpu::count() + 1);
    assert_eq!(shares.iter().fold(0u64, |a, &(_, v)| a.wrapping_add(v)), c.sum());
    if cpu::backend() != Backend::Fallback {
        for &cpu in &cpus {
            assert_eq!(shares[cpu], (cpu, 1000 + cpu as u64), "CPU {cpu}'s share");
        }
    }
}

/// When the per-CPU regions are full, a counter's first use does not fail:
/// it counts in its fallback word, says so, and moves to per-CPU words once
/// memory is free again.
#[test]
fn counter_without_per_cpu_memory_counts_in_its_fallback() {
    if !common::is_child() {
        // Alone in a process: it fills the regions.
        return common::in_child("counter_without_per_cpu_memory_counts_in_its_fallback", &[]);
    }
    use cpulocal::percpu::{self, Percpu};
    static LATE: Counter = Counter::new();
    static LATE_EVENT: cpulocal::evcnt::EventCounter =
        cpulocal::evcnt::EventCounter::new("fallback-test", "late");
    let mut hogs = Vec::new();
    let mut size = percpu::stats().reserved / 2;
    while size >= 8 {
        match Percpu::alloc(size) {
            Ok(p) => hogs.push(p),
            Err(_) => size /= 2,
        }
    }
    assert!(Percpu::alloc(8).is_err(), "the regions are not full");
    LATE.add(5);
    LATE_EVENT.add(3);
    assert!(LATE.alloc_failed());
    assert!(LATE.try_init().is_err());
    assert_eq!(LATE.sum(), 5);
    assert_eq!(LATE.per_cpu().last(), Some((cpu::count(), 5)));
    assert_eq!(LATE_EVENT.value(), 3);
    let listed = cpulocal::evcnt::snapshot();
    let e = listed.events.iter().find(|e| e.group == "fallback-test").unwrap();
    assert!(e.alloc_failed && e.value == 3, "{e:?}");
    let mut table = Vec::new();
    listed.write_table(&mut table, None).unwrap();
    assert!(String::from_utf8(table).unwrap().contains("misc (no per-CPU memory)"));

    drop(hogs);
    LATE.add(2);
    LATE_EVENT.add(1);
    assert!(LATE.try_init().is_ok());
    assert_eq!(LATE.sum(), 7);
    assert_eq!(LATE_EVENT.value(), 4);
    assert_eq!(
        cpulocal::evcnt::snapshot()
            .events
            .iter()
            .find(|e| e.group == "fallback-test")
            .unwrap()
            .value,
        4
    );
}
