//! `cpulocal::RawRwLock` under `lock_api::RwLock`: writers exclude readers
//! and each other (exact totals, a pair only writers may see unequal), the
//! `try_*` calls, `downgrade`, a `static` lock, guards released on another
//! thread, upgradable reads, and parking_lot's own `RwLock` tests that
//! apply to a lock without recursive or timed reads.
#![cfg(feature = "lock_api")]

mod common;

use common::{bump, check, Pair};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::Duration;

use cpulocal::{
    LockApiRwLock, LockApiRwLockUpgradableReadGuard, LockApiRwLockWriteGuard, RawRwLock,
};

/// The lock of [`exclusion_with_exact_totals`]: a `static`, built the way
/// `lock_api` documents for raw locks without a `const fn new`.
static PAIR: lock_api::RwLock<RawRwLock, Pair> =
    lock_api::RwLock::const_new(<RawRwLock as lock_api::RawRwLock>::INIT, Pair { a: 0, b: 0 });

/// Readers (some through `try_read`) and writers (some through
/// `try_write`, some downgrading) on a `static` lock, on threads that hop
/// between CPUs; every critical section checks the pair, and the final
/// pair equals the number of writes. Run here and in a child without
/// `membarrier` (readers always fence).
#[test]
fn exclusion_with_exact_totals() {
    if !common::is_child() {
        common::in_child("exclusion_with_exact_totals", &[("CPULOCAL_MEMBARRIER", "0")]);
    }
    let cpus = common::allowed();
    let hop = |step: usize| {
        if cpus.len() >= 2 {
            common::hop(&cpus, step);
        }
    };
    let (readers, writers) = (4, 4);
    let reads = common::scaled(50_000);
    let writes = common::scaled(4_000);
    let written = AtomicU64::new(0);
    let (read_ok, try_read_ok) = (AtomicU64::new(0), AtomicU64::new(0));
    thread::scope(|s| {
        for t in 0..readers {
            let (hop, read_ok, try_read_ok) = (&hop, &read_ok, &try_read_ok);
            s.spawn(move || {
                for i in 0..reads {
                    if i.is_multiple_of(64) {
                        hop(t + i / 64);
                    }
                    if i % 4 == 1 {
                        if let Some(g) = PAIR.try_read() {
                            check(&g, "try_read");
                            try_read_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    let g = PAIR.read();
                    check(&g, "reader");
                    read_ok.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for t in 0..writers {
            let (hop, written) = (&hop, &written);
            s.spawn(move || {
                for i in 0..writes {
                    if i.is_multiple_of(16) {
                        hop(t + i / 16);
                    }
                    let mut g = if i % 4 == 2 {
                        match PAIR.try_write() {
                            Some(g) => g,
                            None => continue,
                        }
                    } else {
                        PAIR.write()
                    };
                    bump(&mut g, "writer");
                    written.fetch_add(1, Ordering::Relaxed);
                    if i % 8 == 3 {
                        // No writer may get in between: the pair stays as
                        // this writer left it.
                        let mine = g.a;
                        let r = LockApiRwLockWriteGuard::downgrade(g);
                        assert_eq!(check(&r, "downgraded writer"), mine);
                    }
                }
            });
        }
    });
    let total = written.load(Ordering::Relaxed);
    // Every blocking write happens; some `try_write`s may fail.
    let blocking = writers * (0..writes).filter(|i| i % 4 != 2).count();
    assert!((blocking..=writers * writes).contains(&(total as usize)), "{total} writes");
    let blocking_reads = readers * (0..reads).filter(|i| i % 4 != 1).count();
    assert_eq!(read_ok.load(Ordering::Relaxed), blocking_reads as u64);
    assert!(try_read_ok.load(Ordering::Relaxed) > 0, "no try_read ever succeeded");
    let pair = PAIR.read();
    assert_eq!((pair.a, pair.b), (total, total), "a write was lost");
}

#[test]
fn try_read_and_try_write() {
    let lock = LockApiRwLock::new(0u32);
    assert!(!lock.is_locked());
    {
        let r = lock.read();
        let r2 = lock.try_read().expect("a second reader gets in");
        assert!(lock.try_write().is_none(), "try_write got in beside readers");
        assert!(lock.is_locked() && !lock.is_locked_exclusive());
        drop((r, r2));
    }
    {
        let mut w = lock.try_write().expect("try_write on a free lock");
        *w = 1;
        assert!(lock.try_read().is_none(), "try_read got in beside the writer");
        assert!(lock.try_write().is_none(), "try_write got in beside the writer");
        assert!(lock.is_locked_exclusive());
    }
    assert!(!lock.is_locked());
    assert_eq!(*lock.try_read().expect("free again"), 1);
}

/// `try_read` and `try_write` from other threads while the lock is held
/// here: they fail while a writer is inside, and `try_read` succeeds
/// beside a reader.
#[test]
fn try_calls_from_other_threads() {
    let lock = LockApiRwLock::new(());
    let w = lock.write();
    thread::scope(|s| {
        s.spawn(|| {
            assert!(lock.try_read().is_none());
            assert!(lock.try_write().is_none());
        });
    });
    drop(w);
    let r = lock.read();
    thread::scope(|s| {
        s.spawn(|| {
            assert!(lock.try_read().is_some());
            assert!(lock.try_write().is_none());
        });
    });
    drop(r);
}

/// A downgraded writer lets readers in and keeps writers out until its
/// read lock goes; the writer then sees what the downgraded one wrote.
#[test]
fn downgrade_lets_readers_in_and_keeps_writers_out() {
    let lock = LockApiRwLock::new(0u32);
    let writer_in = AtomicBool::new(false);
    let mut w = lock.write();
    *w = 1;
    let r = LockApiRwLockWriteGuard::downgrade(w);
    assert!(lock.is_locked() && !lock.is_locked_exclusive());
    thread::scope(|s| {
        // Readers get in beside the downgraded lock, blocking or not.
        s.spawn(|| {
            assert_eq!(*lock.read(), 1);
            assert_eq!(*lock.try_read().expect("try_read beside a downgraded writer"), 1);
            assert!(lock.try_write().is_none(), "try_write beside a downgraded writer");
        })
        .join()
        .unwrap();
        let writer = s.spawn(|| {
            let mut g = lock.write();
            writer_in.store(true, Ordering::SeqCst);
            assert_eq!(*g, 1, "the writer got in before the downgraded write was done");
            *g = 2;
        });
        // Give the writer every chance to get in wrongly.
        for _ in 0..50 {
            thread::sleep(Duration::from_millis(1));
            assert!(!writer_in.load(Ordering::SeqCst), "a writer got in beside a reader");
        }
        assert_eq!(*r, 1);
        drop(r);
        writer.join().unwrap();
    });
    assert_eq!(*lock.read(), 2);
}

/// With `GuardSend`, a guard may be released on another thread than the
/// one that locked it.
#[test]
fn guards_released_on_another_thread() {
    let lock = LockApiRwLock::new(5u32);
    let r = lock.read();
    thread::scope(|s| {
        s.spawn(move || assert_eq!(*r, 5));
    });
    let mut w = lock.try_write().expect("the read lock went with its thread");
    *w = 6;
    thread::scope(|s| {
        s.spawn(move || drop(w));
    });
    assert_eq!(*lock.try_read().expect("the write lock went with its thread"), 6);
}

#[test]
fn send_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: T) {}
    send_sync::<RawRwLock>();
    send_sync::<LockApiRwLock<Vec<u8>>>();
    let lock = LockApiRwLock::new(());
    send(lock.read());
    send(lock.write());
}

#[test]
fn raw_debug() {
    use lock_api::RawRwLock as _;
    let raw = RawRwLock::INIT;
    let shown = format!("{raw:?}");
    assert!(shown.starts_with("RawRwLock { write_locked: false, readers: "), "{shown}");
    assert!(raw.try_lock_exclusive());
    assert!(format!("{raw:?}").contains("write_locked: true"));
    // SAFETY: locked exclusively just now.
    unsafe { raw.unlock_exclusive() };
}

/// Ports of parking_lot's `RwLock` tests (parking_lot 0.12,
/// `src/rwlock.rs`) that apply here: those without recursive or timed
/// reads, and without serde.
mod parking_lot_ports {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct NonCopy(i32);

    #[test]
    fn smoke() {
        let l = LockApiRwLock::new(());
        drop(l.read());
        drop(l.write());
        drop((l.read(), l.read()));
        drop(l.write());
    }

    /// `frob`: threads that mostly read and sometimes write, at random
    /// (xorshift here instead of `rand`).
    #[test]
    fn frob() {
        const THREADS: u64 = 10;
        const ROUNDS: usize = 1000;
        let lock = Arc::new(LockApiRwLock::new(0u64));
        let writes = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (lock, writes) = (lock.clone(), writes.clone());
                thread::spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                    for _ in 0..ROUNDS {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if x.is_multiple_of(THREADS) {
                            *lock.write() += 1;
                            writes.fetch_add(1, Ordering::Relaxed);
                        } else {
                            drop(lock.read());
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(*lock.read(), writes.load(Ordering::Relaxed));
    }

    /// `test_rw_arc_no_poison_{wr,ww,rr,rw}`: a panic under either lock
    /// releases it, and the next reader or writer gets in.
    #[test]
    fn no_poison() {
        for (panic_writing, then_write) in
            [(true, false), (true, true), (false, false), (false, true)]
        {
            let arc = Arc::new(LockApiRwLock::new(1));
            let arc2 = arc.clone();
            let joined = thread::spawn(move || {
                if panic_writing {
                    let _lock = arc2.write();
                    panic!("panic while write-locked");
                } else {
                    let _lock = arc2.read();
                    panic!("panic while read-locked");
                }
            })
            .join();
            assert!(joined.is_err());
            if then_write {
                assert_eq!(*arc.write(), 1);
            } else {
                assert_eq!(*arc.read(), 1);
            }
        }
    }

    /// `test_rw_arc`: one writer holds the lock through ten updates that
    /// each pass through -1; readers must never see -1.
    #[test]
    fn rw_arc() {
        let arc = Arc::new(LockApiRwLock::new(0i32));
        let arc2 = arc.clone();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lock = arc2.write();
            for _ in 0..10 {
                let tmp = *lock;
                *lock = -1;
                thread::yield_now();
                *lock = tmp + 1;
            }
            tx.send(()).unwrap();
        });
        let readers: Vec<_> = (0..5)
            .map(|_| {
                let arc3 = arc.clone();
                thread::spawn(move || assert!(*arc3.read() >= 0))
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        rx.recv().unwrap();
        assert_eq!(*arc.read(), 10);
    }

    /// `test_rw_arc_access_in_unwind`: a destructor that runs while its
    /// thread unwinds can still take the write lock.
    #[test]
    fn access_in_unwind() {
        struct Unwinder {
            i: Arc<LockApiRwLock<isize>>,
        }
        impl Drop for Unwinder {
            fn drop(&mut self) {
                *self.i.write() += 1;
            }
        }
        let arc = Arc::new(LockApiRwLock::new(1));
        let arc2 = arc.clone();
        let joined = thread::spawn(move || {
            let _u = Unwinder { i: arc2 };
            panic!("unwinding");
        })
        .join();
        assert!(joined.is_err());
        assert_eq!(*arc.read(), 2);
    }

    #[test]
    fn unsized_data() {
        let rw: &LockApiRwLock<[i32]> = &LockApiRwLock::new([1, 2, 3]);
        {
            let b = &mut *rw.write();
            b[0] = 4;
            b[2] = 5;
        }
        assert_eq!(&*rw.read(), &[4, 2, 5][..]);
    }

    #[test]
    fn try_read() {
        let lock = LockApiRwLock::new(0isize);
        let r = lock.read();
        assert!(lock.try_read().is_some(), "try_read fails beside a reader");
        drop(r);
        let w = lock.write();
        assert!(lock.try_read().is_none(), "try_read succeeds beside a writer");
        drop(w);
    }

    #[test]
    fn try_write() {
        let lock = LockApiRwLock::new(0isize);
        let r = lock.read();
        assert!(lock.try_write().is_none(), "try_write succeeds beside a reader");
        assert!(lock.is_locked() && !lock.is_locked_exclusive());
        drop(r);
        let w = lock.write();
        assert!(lock.try_write().is_none(), "try_write succeeds beside a writer");
        assert!(lock.is_locked() && lock.is_locked_exclusive());
        drop(w);
    }

    #[test]
    fn into_inner() {
        assert_eq!(LockApiRwLock::new(NonCopy(10)).into_inner(), NonCopy(10));
    }

    #[test]
    fn into_inner_drop() {
        struct Foo(Arc<AtomicUsize>);
        impl Drop for Foo {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let drops = Arc::new(AtomicUsize::new(0));
        let m = LockApiRwLock::new(Foo(drops.clone()));
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        let inner = m.into_inner();
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(inner);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn get_mut() {
        let mut m = LockApiRwLock::new(NonCopy(10));
        *m.get_mut() = NonCopy(20);
        assert_eq!(m.into_inner(), NonCopy(20));
    }

    #[test]
    fn guards_sync() {
        fn sync<T: Sync>(_: T) {}
        let lock = LockApiRwLock::new(());
        sync(lock.read());
        sync(lock.write());
    }

    /// `test_rwlock_downgrade`: eight threads each write and downgrade a
    /// hundred times; no writer gets in between a write and its read.
    #[test]
    fn downgrade() {
        let x = Arc::new(LockApiRwLock::new(0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let x = x.clone();
                thread::spawn(move || {
                    for _ in 0..100 {
                        let mut writer = x.write();
                        *writer += 1;
                        let cur = *writer;
                        let reader = LockApiRwLockWriteGuard::downgrade(writer);
                        assert_eq!(cur, *reader);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(*x.read(), 800);
    }

    #[test]
    fn debug() {
        let x = LockApiRwLock::new(vec![0u8, 10]);
        assert_eq!(format!("{x:?}"), "RwLock { data: [0, 10] }");
        let _lock = x.write();
        assert_eq!(format!("{x:?}"), "RwLock { data: <locked> }");
    }

    /// `test_issue_203`: a lock in a thread-local whose destructor takes
    /// the write lock, and another lock used on the same thread, while the
    /// thread's own thread-locals (the library's included) are torn down.
    #[test]
    fn thread_local_destructor_locks() {
        struct Bar(LockApiRwLock<()>);
        impl Drop for Bar {
            fn drop(&mut self) {
                let _n = self.0.write();
            }
        }
        thread_local! {
            static B: Bar = const { Bar(LockApiRwLock::new(())) };
        }
        thread::spawn(|| {
            B.with(|_| ());
            let a = LockApiRwLock::new(());
            let _a = a.read();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn write_is_locked() {
        let lock = LockApiRwLock::new(0isize);
        {
            let _read_guard = lock.read();
            assert!(lock.is_locked());
            assert!(!lock.is_locked_exclusive());
        }
        {
            let _write_guard = lock.write();
            assert!(lock.is_locked());
            assert!(lock.is_locked_exclusive());
        }
        assert!(!lock.is_locked());
    }

    /// `test_ruw_arc`: a writer, upgradable readers that upgrade and
    /// readers, each trying to catch another in the act.
    #[test]
    fn ruw_arc() {
        let arc = Arc::new(LockApiRwLock::new(0i32));
        let arc2 = arc.clone();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for _ in 0..10 {
                let mut lock = arc2.write();
                let tmp = *lock;
                *lock = -1;
                thread::yield_now();
                *lock = tmp + 1;
            }
            tx.send(()).unwrap();
        });
        let mut children = Vec::new();
        for _ in 0..5 {
            let arc3 = arc.clone();
            children.push(thread::spawn(move || {
                let lock = arc3.upgradable_read();
                let tmp = *lock;
                assert!(tmp >= 0);
                thread::yield_now();
                let mut lock = LockApiRwLockUpgradableReadGuard::upgrade(lock);
                assert_eq!(tmp, *lock);
                *lock = -1;
                thread::yield_now();
                *lock = tmp + 1;
            }));
        }
        for _ in 0..5 {
            let arc4 = arc.clone();
            children.push(thread::spawn(move || {
                let lock = arc4.read();
                assert!(*lock >= 0);
            }));
        }
        for r in children {
            assert!(r.join().is_ok());
        }
        rx.recv().unwrap();
        assert_eq!(*arc.read(), 15);
    }

    /// `test_rwlock_try_upgrade` (which is about `try_upgradable_read`).
    #[test]
    fn rwlock_try_upgrade() {
        let lock = LockApiRwLock::new(0isize);
        {
            let read_guard = lock.read();
            assert!(
                lock.try_upgradable_read().is_some(),
                "try_upgradable_read should succeed while read_guard is in scope"
            );
            drop(read_guard);
        }
        {
            let upgrade_guard = lock.upgradable_read();
            assert!(
                lock.try_upgradable_read().is_none(),
                "try_upgradable_read should fail while upgrade_guard is in scope"
            );
            drop(upgrade_guard);
        }
        {
            let write_guard = lock.write();
            assert!(
                lock.try_upgradable_read().is_none(),
                "try_upgradable should fail while write_guard is in scope"
            );
            drop(write_guard);
        }
    }
}

/// Through `lock_api`: `try_upgrade` fails while a reader is inside and
/// keeps the upgradable lock, `with_upgraded`, and both downgrades.
#[test]
fn upgradable_try_upgrade_and_downgrades() {
    let lock = LockApiRwLock::new(1);
    let r = lock.read();
    let u = LockApiRwLockUpgradableReadGuard::try_upgrade(lock.upgradable_read())
        .expect_err("a reader is inside");
    assert!(lock.try_write().is_none() && lock.try_upgradable_read().is_none());
    assert_eq!(*lock.try_read().expect("readers are let go again"), 1);
    assert!(lock.is_locked() && !lock.is_locked_exclusive());
    drop(r);
    let mut u = u;
    u.with_upgraded(|v| *v = 2);
    let w = LockApiRwLockUpgradableReadGuard::try_upgrade(u).expect("no reader is inside");
    assert!(lock.is_locked_exclusive());
    let u = LockApiRwLockWriteGuard::downgrade_to_upgradable(w);
    assert_eq!(*lock.read(), 2);
    assert!(lock.try_write().is_none());
    let r = LockApiRwLockUpgradableReadGuard::downgrade(u);
    assert!(lock.try_upgradable_read().is_some() && lock.try_write().is_none());
    drop(r);
    assert!(!lock.is_locked());
}

/// A reader holds the lock while another thread upgrades through
/// `lock_api`: the value must not change under the reader.
#[test]
fn upgrade_waits_for_reader() {
    let lock = LockApiRwLock::new(0);
    common::upgrade_waits_for_reader(
        || lock.read(),
        || *LockApiRwLockUpgradableReadGuard::upgrade(lock.upgradable_read()) += 1,
    );
    assert_eq!(*lock.read(), 1);
}

/// Many threads start at once on one lock: the first locks of a lock
/// allocate its per-CPU counts, racing here.
#[test]
fn first_use_races() {
    let lock = LockApiRwLock::new(0u64);
    let start = Barrier::new(8);
    thread::scope(|s| {
        for t in 0..8 {
            let (lock, start) = (&lock, &start);
            s.spawn(move || {
                start.wait();
                for _ in 0..1000 {
                    if t % 2 == 0 {
                        *lock.write() += 1;
                    } else {
                        drop(lock.read());
                    }
                }
            });
        }
    });
    assert_eq!(lock.into_inner(), 4000);
}
