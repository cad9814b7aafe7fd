//! CpuLocal: exact totals under migration, traversal during growth,
//! construction and destruction.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use cpulocal::percpu::Percpu;
use cpulocal::{cpu, CpuLocal, CpuLocalGuard};

const THREADS: usize = 4;

/// Threads hop between CPUs every few operations while incrementing through
/// `lock()`. The increment is a read, a migration, then a write: if the
/// guard were not exclusive across migration, updates would be lost.
#[test]
fn lock_is_exclusive_across_migration() {
    let cpus = cpu::allowed().unwrap();
    let rounds = common::scaled(20_000);
    let c = CpuLocal::<u64>::new();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (c, cpus) = (&c, &cpus);
            s.spawn(move || {
                for i in 0..rounds {
                    let mut g = c.lock();
                    let seen = *g;
                    if i % 64 == 0 {
                        // Migrate while holding the guard.
                        common::hop(cpus, t + i / 64);
                    } else if i % 7 == 0 {
                        std::thread::yield_now();
                    }
                    *g = seen + 1;
                    assert!(CpuLocalGuard::cpu(&g) < cpu::count());
                }
            });
        }
    });
    let total: u64 = (0..cpu::count()).map(|cpu| *c.lock_on(cpu).unwrap()).sum();
    assert_eq!(total, (THREADS * rounds) as u64);
}

/// Threads hop between CPUs every few operations while incrementing atomics
/// reached through `get()`; the totals walked with `iter()` are exact.
#[test]
fn get_with_atomics_is_exact_across_migration() {
    let cpus = cpu::allowed().unwrap();
    let rounds = common::scaled(100_000);
    let c = CpuLocal::<AtomicU64>::new();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (c, cpus) = (&c, &cpus);
            s.spawn(move || {
                for i in 0..rounds {
                    if i % 500 == 0 {
                        common::hop(cpus, t + i / 500);
                    }
                    c.get().fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let total: u64 = c.iter().map(|(_, v)| v.load(Ordering::Relaxed)).sum();
    assert_eq!(total, (THREADS * rounds) as u64);
}

/// `get()` hands out the current CPU's value.
#[test]
fn get_follows_the_thread() {
    let cpus = cpu::allowed().unwrap();
    let c = CpuLocal::with_init(|cpu| cpu);
    for step in 0..cpus.len() * 2 {
        common::hop(&cpus, step);
        assert_eq!(*c.get(), cpus[step % cpus.len()]);
    }
    cpu::set_affinity(&cpus).unwrap();
}

/// `iter()` keeps reading correct values while other threads allocate
/// enough per-CPU memory to make the regions grow, and values written before
/// the growth are still there after it.
#[test]
fn iter_runs_while_storage_grows() {
    if !common::is_child() {
        return common::in_child("iter_runs_while_storage_grows", &[]);
    }
    let c = CpuLocal::with_init(|cpu| AtomicU64::new(cpu as u64 * 1000));
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let held: Vec<CpuLocal<[u64; 64]>> =
                (0..20_000).map(|_| CpuLocal::with_init(|_| [0; 64])).collect();
            done.store(true, Ordering::Release);
            drop(held);
        });
        let mut walks = 0;
        while !done.load(Ordering::Acquire) || walks == 0 {
            for (cpu, v) in c.iter() {
                assert_eq!(v.load(Ordering::Relaxed), cpu as u64 * 1000);
            }
            walks += 1;
        }
    });
    assert!(cpulocal::percpu::stats().committed >= 20_000 * 512);
}

/// A value that counts its drops.
struct Tracked(Arc<AtomicUsize>);
impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn drop_runs_every_cpus_destructor_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let made = AtomicUsize::new(0);
    let c = CpuLocal::with_init(|_| {
        made.fetch_add(1, Ordering::Relaxed);
        Tracked(drops.clone())
    });
    assert_eq!(made.load(Ordering::Relaxed), cpu::count(), "constructor is eager");
    assert_eq!(drops.load(Ordering::Relaxed), 0);
    drop(c);
    assert_eq!(drops.load(Ordering::Relaxed), cpu::count());
}

#[test]
fn panicking_constructor_drops_what_it_made() {
    let drops = Arc::new(AtomicUsize::new(0));
    let d = drops.clone();
    let r = std::panic::catch_unwind(move || {
        CpuLocal::with_init(|cpu| {
            assert!(cpu + 1 < cpu::count(), "constructor fails on the last CPU");
            Tracked(d.clone())
        })
    });
    assert!(r.is_err());
    assert_eq!(drops.load(Ordering::Relaxed), cpu::count() - 1);
}

#[test]
fn iter_mut_and_get_on() {
    let mut c = CpuLocal::<u32>::new();
    for (cpu, v) in c.iter_mut() {
        *v = cpu as u32 + 1;
    }
    assert_eq!(c.iter().len(), cpu::count());
    assert_eq!(c.get_on(0), Some(&1));
    assert_eq!(c.get_on(cpu::count()), None);
    assert!(format!("{c:?}").contains("CpuLocal"));
}

#[test]
fn lock_on_out_of_range_is_none() {
    let c = CpuLocal::<Vec<u8>>::new();
    assert!(c.lock_on(cpu::count()).is_none());
    assert!(c.lock_on(usize::MAX).is_none());
    c.lock().push(1);
    assert_eq!((0..cpu::count()).map(|i| c.lock_on(i).unwrap().len()).sum::<usize>(), 1);
}

/// `&T` from get() and `&mut T` from lock() must never meet.
#[test]
#[should_panic(expected = "used with lock()")]
fn get_after_lock_panics() {
    let c = CpuLocal::<AtomicU64>::new();
    let _g = c.lock();
    let _ = c.get();
}

#[test]
#[should_panic(expected = "used with get")]
fn lock_after_get_panics() {
    let c = CpuLocal::<AtomicU64>::new();
    let _r = c.get();
    let _ = c.lock();
}

#[test]
fn huge_alignment_is_an_error() {
    #[repr(align(8192))]
    #[derive(Default)]
    struct Huge(#[allow(dead_code)] u8);
    let r = CpuLocal::<Huge>::try_with_init(|_| Huge::default());
    assert!(matches!(r, Err(cpulocal::AllocError::BadAlign { .. })), "{r:?}");
    // Nothing was lost: allocation still works.
    assert!(Percpu::alloc(8).is_ok());
}

#[test]
fn zero_sized_values() {
    let c = CpuLocal::<()>::new();
    assert_eq!(c.iter().count(), cpu::count());
}

#[test]
fn send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CpuLocal<AtomicU64>>();
    assert_send_sync::<CpuLocal<std::cell::Cell<u64>>>();
    assert_send_sync::<Percpu>();
}
