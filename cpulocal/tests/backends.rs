//! Every CPU-identity backend, forced in turn, and rseq registered by the
//! library itself when glibc did not.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use cpulocal::cpu::{self, Backend};
use cpulocal::percpu::Percpu;
use cpulocal::{Counter, CpuLocal, LockedCpuLocal};

/// The library's per-CPU paths with CPU hopping and exact totals; run in the
/// normal suite and, forced to each backend, in child processes.
#[test]
fn workload() {
    common::check_forced_backend();
    let cpus = cpu::allowed().unwrap();
    let rounds = common::scaled(20_000);
    let counter = Counter::new();
    let shared = CpuLocal::<AtomicU64>::new();
    let locked = LockedCpuLocal::<u64>::new();
    let raw = Percpu::alloc(8).unwrap();
    std::thread::scope(|s| {
        for t in 0..3 {
            let (counter, shared, locked, raw, cpus) = (&counter, &shared, &locked, &raw, &cpus);
            s.spawn(move || {
                for i in 0..rounds {
                    if i % 256 == 0 {
                        common::hop(cpus, t + i / 256);
                    }
                    let c = cpu::current();
                    assert!(c < cpu::count());
                    counter.add(3);
                    counter.sub(1);
                    shared.get().fetch_add(1, Ordering::Relaxed);
                    *locked.lock() += 1;
                    let r = raw.getref();
                    // SAFETY: 8 zeroed aligned bytes, only used atomically.
                    unsafe { AtomicU64::from_ptr(r.as_ptr().cast()) }
                        .fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let n = 3 * rounds as u64;
    assert_eq!(counter.sum(), 2 * n);
    assert_eq!(shared.iter().map(|(_, v)| v.load(Ordering::Relaxed)).sum::<u64>(), n);
    assert_eq!((0..cpu::count()).map(|c| *locked.lock_on(c).unwrap()).sum::<u64>(), n);
    let mut sum = 0;
    // SAFETY: as above.
    raw.foreach(|_, p| sum += unsafe { AtomicU64::from_ptr(p.cast()) }.load(Ordering::Relaxed));
    assert_eq!(sum, n);
}

#[test]
fn each_backend_forced_in_turn() {
    common::under_each_backend("workload");
}

/// Pinned to each allowed CPU in turn, `current()` names it exactly.
#[test]
fn current_is_exact_when_pinned() {
    common::check_forced_backend();
    if cpu::backend() == Backend::Fallback {
        return; // stripes are not CPUs
    }
    let cpus = cpu::allowed().unwrap();
    for &c in &cpus {
        cpu::set_affinity(&[c]).unwrap();
        assert_eq!(cpu::current(), c);
    }
    cpu::set_affinity(&cpus).unwrap();
}

#[test]
fn current_is_exact_under_rseq_and_getcpu() {
    for b in ["rseq", "getcpu"] {
        common::in_child("current_is_exact_when_pinned", &[("CPULOCAL_BACKEND", b)]);
    }
}

/// With glibc's rseq registration turned off, the library registers an area
/// per thread itself (which the kernel forgets at thread exit), many
/// threads over.
#[test]
fn own_registration_workload() {
    if !common::is_child() {
        return;
    }
    // SAFETY: dlsym only looks the symbol up; glibc defines it as an u32.
    let glibc_size = unsafe {
        let p = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if p.is_null() {
            0
        } else {
            p.cast::<u32>().read()
        }
    };
    assert_eq!(glibc_size, 0, "glibc still registered rseq");
    assert_eq!(cpu::backend(), Backend::Rseq, "own registration failed");
    // Thread churn: each thread registers, counts and exits.
    let counter = Counter::new();
    for _ in 0..common::scaled(50) {
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        counter.inc();
                    }
                    assert!(cpu::current() < cpu::count());
                });
            }
        });
    }
    assert_eq!(counter.sum(), common::scaled(50) as u64 * 400);
    workload();
}

#[test]
fn own_registration_when_glibc_does_not_register() {
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        common::in_child(
            "own_registration_workload",
            &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0"), ("CPULOCAL_BACKEND", "rseq")],
        );
    }
}

#[test]
fn unknown_backend_name_falls_back_to_automatic() {
    if common::is_child() {
        assert_ne!(cpu::backend(), Backend::Fallback);
        return;
    }
    common::in_child(
        "unknown_backend_name_falls_back_to_automatic",
        &[("CPULOCAL_BACKEND", "bogus")],
    );
}

/// Backend names are read in any case: `FALLBACK` forces the fallback.
#[test]
fn backend_names_are_read_in_any_case() {
    if common::is_child() {
        assert_eq!(cpu::backend(), Backend::Fallback);
        return;
    }
    common::in_child("backend_names_are_read_in_any_case", &[("CPULOCAL_BACKEND", " FallBack ")]);
}
