//! CpuLocal and LockedCpuLocal: exact totals under migration, traversal
//! during growth, construction (eager, lazy and in place) and destruction.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use cpulocal::percpu::Percpu;
use cpulocal::{cpu, CpuLocal, CpuLocalGuard, LockedCpuLocal};

const THREADS: usize = 4;

/// Threads hop between CPUs every few operations while incrementing through
/// `lock()`. The increment is a read, a migration, then a write: if the
/// guard were not exclusive across migration, updates would be lost.
#[test]
fn lock_is_exclusive_across_migration() {
    let cpus = cpu::allowed().unwrap();
    let rounds = common::scaled(20_000);
    let c = LockedCpuLocal::<u64>::new();
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

/// A drainer takes every CPU's counts with `lock_each()` while threads add
/// to them through `lock()` with a read, a yield and a write: if
/// `lock_each` did not lock, additions made between the read and the write
/// would be overwritten or taken twice, and the drained total plus what is
/// left would not be exact.
#[test]
fn lock_each_drains_exactly_while_others_add() {
    let rounds = common::scaled(20_000);
    let c = LockedCpuLocal::<u64>::new();
    let done = AtomicUsize::new(0);
    let drained = std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (c, done) = (&c, &done);
            s.spawn(move || {
                for i in 0..rounds {
                    let mut g = c.lock();
                    let seen = *g;
                    if i % 16 == 0 {
                        std::thread::yield_now();
                    }
                    *g = seen + 1;
                }
                done.fetch_add(1, Ordering::Release);
            });
        }
        let mut drained = 0u64;
        while done.load(Ordering::Acquire) < THREADS {
            for mut g in c.lock_each() {
                let seen = std::mem::take(&mut *g);
                std::thread::yield_now();
                // An addition made meanwhile (without the lock) would be
                // lost here.
                assert_eq!(*g, 0, "CPU {}'s value changed under lock_each", CpuLocalGuard::cpu(&g));
                drained += seen;
            }
        }
        drained
    });
    assert_eq!(c.lock_each().len(), cpu::count());
    let left: u64 = c.lock_each().map(|g| *g).sum();
    assert_eq!(drained + left, (THREADS * rounds) as u64);
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
    let c = LockedCpuLocal::<Vec<u8>>::new();
    assert!(c.lock_on(cpu::count()).is_none());
    assert!(c.lock_on(usize::MAX).is_none());
    c.lock().push(1);
    assert_eq!((0..cpu::count()).map(|i| c.lock_on(i).unwrap().len()).sum::<usize>(), 1);
}

#[test]
fn huge_alignment_is_an_error() {
    #[repr(align(8192))]
    #[derive(Default, Debug)]
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
    assert_send_sync::<LockedCpuLocal<std::cell::Cell<u64>>>();
    assert_send_sync::<LockedCpuLocal<std::cell::RefCell<Vec<u8>>>>();
    fn assert_send<T: Send>() {}
    // Not shareable (Cell is not Sync), but it can move between threads.
    assert_send::<CpuLocal<std::cell::Cell<u64>>>();
    assert_send_sync::<Percpu>();
}

/// A value that counts how often it was built.
struct Built;
static BUILT: AtomicUsize = AtomicUsize::new(0);
impl Default for Built {
    fn default() -> Self {
        BUILT.fetch_add(1, Ordering::Relaxed);
        // Widen the window in which another thread could build too.
        std::thread::yield_now();
        Built
    }
}

/// A `static` built lazily: threads racing to the first use build every
/// CPU's value exactly once, and all see the same values.
#[test]
fn lazy_values_are_built_once() {
    static LAZY: CpuLocal<Built> = CpuLocal::new();
    assert_eq!(BUILT.load(Ordering::Relaxed), 0, "new() builds nothing");
    let barrier = std::sync::Barrier::new(8);
    let seen: Vec<usize> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    LAZY.get_on(0).unwrap() as *const Built as usize
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    assert_eq!(BUILT.load(Ordering::Relaxed), cpu::count());
    assert_eq!(LAZY.iter().count(), cpu::count());
    assert_eq!(BUILT.load(Ordering::Relaxed), cpu::count());
}

/// Values built in place never pass through the stack: 1 MiB per CPU on a
/// 512 KiB thread stack (a debug build of `with_init(|_| [0; N])` would
/// need the whole value there).
#[test]
fn in_place_values_skip_the_stack() {
    const WORDS: usize = 1 << 17;
    let run = || {
        let init = |cpu: usize, slot: &mut std::mem::MaybeUninit<[u64; WORDS]>| {
            let words = slot.as_mut_ptr().cast::<u64>();
            for i in [0, WORDS - 1] {
                // SAFETY: `i < WORDS`, inside the slot.
                unsafe { words.add(i).write(cpu as u64 + 1) };
            }
        };
        // SAFETY: the slots arrive zero-filled, a valid array of u64, and
        // `init` writes two of its words.
        let c = unsafe { CpuLocal::with_init_in_place(init) };
        // SAFETY: zero bytes are a valid array of u64.
        let l = unsafe { LockedCpuLocal::<[u64; WORDS]>::with_init_in_place(|_, _| {}) };
        l.lock()[WORDS - 1] = 9;
        let locked: u64 = (0..cpu::count()).map(|i| l.lock_on(i).unwrap()[WORDS - 1]).sum();
        (c.iter().map(|(cpu, v)| (v[0], v[WORDS - 1], v[1], cpu)).collect::<Vec<_>>(), locked)
    };
    let (values, locked) =
        std::thread::Builder::new().stack_size(512 << 10).spawn(run).unwrap().join().unwrap();
    for (first, last, middle, cpu) in values {
        assert_eq!((first, last, middle), (cpu as u64 + 1, cpu as u64 + 1, 0));
    }
    assert_eq!(locked, 9);
}

/// A value that is never locked carries no lock: a `CpuLocal<u8>` takes one
/// byte per CPU, a `LockedCpuLocal<u8>` a mutex besides. (In a child
/// process, so that no other test allocates meanwhile.)
#[test]
fn shared_values_carry_no_lock() {
    if !common::is_child() {
        return common::in_child("shared_values_carry_no_lock", &[]);
    }
    let in_use = || cpulocal::percpu::stats().in_use;
    let before = in_use();
    let shared = CpuLocal::<u8>::new();
    let _ = shared.get();
    let grew = in_use() - before;
    assert_eq!(grew, 1, "a CpuLocal<u8> took {grew} bytes per CPU");
    let before = in_use();
    let locked = LockedCpuLocal::<u8>::new();
    let _ = locked.lock();
    let grew = in_use() - before;
    assert!(grew > size_of::<std::sync::Mutex<()>>(), "a LockedCpuLocal<u8> took {grew} bytes");
}

#[test]
fn into_iter_owned_and_by_reference() {
    let mut c = CpuLocal::with_init(|cpu| vec![cpu]);
    for (cpu, v) in &mut c {
        v.push(cpu + 100);
    }
    let mut n = 0;
    for (cpu, v) in &c {
        assert_eq!(*v, [cpu, cpu + 100]);
        n += 1;
    }
    assert_eq!(n, cpu::count());
    let owned: Vec<(usize, Vec<usize>)> = c.into_iter().collect();
    assert_eq!(owned.len(), cpu::count());
    assert!(owned.iter().all(|(cpu, v)| *v == [*cpu, cpu + 100]));

    let mut l = LockedCpuLocal::with_init(|cpu| cpu);
    for (_, v) in &mut l {
        *v *= 2;
    }
    assert!(l.into_iter().all(|(cpu, v)| v == cpu * 2));
}

#[test]
fn clear_drops_and_rebuilds() {
    let drops = Arc::new(AtomicUsize::new(0));
    let mut c = CpuLocal::with_init(|_| Some(Tracked(drops.clone())));
    c.clear();
    assert_eq!(drops.load(Ordering::Relaxed), cpu::count());
    assert!(c.iter().all(|(_, v)| v.is_none()), "rebuilt with T::default()");
    let mut l = LockedCpuLocal::with_init(|_| vec![1]);
    l.clear();
    assert!(l.iter_mut().all(|(_, v)| v.is_empty()));
}

#[test]
fn try_lock_does_not_wait() {
    let c = LockedCpuLocal::<u64>::new();
    let g = c.lock_on(0).unwrap();
    assert!(c.try_lock_on(0).is_none());
    std::thread::scope(|s| {
        s.spawn(|| assert!(c.try_lock_on(0).is_none(), "held by another thread"));
    });
    drop(g);
    *c.try_lock_on(0).unwrap() += 1;
    assert!(c.try_lock_on(cpu::count()).is_none());
    let mut g = c.try_lock().unwrap();
    *g += 1;
    let cpu = CpuLocalGuard::cpu(&g);
    drop(g);
    assert_eq!((0..cpu::count()).map(|i| *c.lock_on(i).unwrap()).sum::<u64>(), 2);
    assert!(cpu < cpu::count());
}

/// A mapped guard keeps the lock: another thread cannot get in.
#[test]
fn mapped_guard_holds_the_lock() {
    let c = LockedCpuLocal::<(u64, Vec<u8>)>::new();
    let mut bytes = CpuLocalGuard::map(c.lock_on(0).unwrap(), |(_, v)| v);
    bytes.push(1);
    assert_eq!(CpuLocalGuard::cpu(&bytes), 0);
    assert!(c.try_lock_on(0).is_none());
    drop(bytes);
    assert_eq!(c.lock_on(0).unwrap().1, [1]);
}
