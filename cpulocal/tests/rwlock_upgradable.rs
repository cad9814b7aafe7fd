//! `RwLock`'s upgradable reads: upgradable readers that upgrade, readers
//! and writers keep a pair equal and the totals exact (with and without
//! `membarrier`); the `try_*` calls; an upgrade waits for the reader
//! inside; the downgrades; the guards' surface.

mod common;

use common::{bump, check, Pair};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use cpulocal::{RwLock, RwLockUpgradableReadGuard, RwLockWriteGuard};

/// Upgradable readers that upgrade (blocking, through `try_upgrade`, or
/// by way of a downgrade to upgradable and a second upgrade) and bump the
/// pair, checking no writer came between their read and their write;
/// readers that check it; writers that bump it. Run here and in a child
/// without `membarrier`.
#[test]
fn upgraders_readers_and_writers_exclude_each_other() {
    if !common::is_child() {
        common::in_child(
            "upgraders_readers_and_writers_exclude_each_other",
            &[("CPULOCAL_MEMBARRIER", "0")],
        );
    }
    let lock = RwLock::new(Pair::default());
    let rounds = common::scaled(3_000);
    let (upgraders, readers, writers) = (2, 2, 1);
    let bumps = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        for _ in 0..readers {
            s.spawn(|| {
                let mut reads = 0u64;
                while !done.load(Ordering::Relaxed) || reads == 0 {
                    check(&lock.read(), "reader");
                    if let Some(r) = lock.try_read() {
                        check(&r, "try_read reader");
                    }
                    reads += 1;
                }
            });
        }
        let workers: Vec<_> = (0..upgraders + writers)
            .map(|t| {
                let (lock, bumps) = (&lock, &bumps);
                s.spawn(move || {
                    for i in 0..rounds {
                        if t >= upgraders {
                            bump(&mut lock.write(), "writer");
                            bumps.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let u = match i % 4 {
                            3 => match lock.try_upgradable_read() {
                                Some(u) => u,
                                None => continue,
                            },
                            _ => lock.upgradable_read(),
                        };
                        let seen = check(&u, "upgradable reader");
                        let mut w = match i % 4 {
                            0 => RwLockUpgradableReadGuard::upgrade(u),
                            1 => match RwLockUpgradableReadGuard::try_upgrade(u) {
                                Ok(w) => w,
                                Err(u) => RwLockUpgradableReadGuard::upgrade(u),
                            },
                            2 => {
                                let r = RwLockUpgradableReadGuard::downgrade(u);
                                assert_eq!(check(&r, "downgraded reader"), seen);
                                continue;
                            }
                            _ => {
                                let mut w = RwLockUpgradableReadGuard::upgrade(u);
                                bump(&mut w, "upgraded writer");
                                bumps.fetch_add(1, Ordering::Relaxed);
                                let u = RwLockWriteGuard::downgrade_to_upgradable(w);
                                assert_eq!(check(&u, "downgraded upgradable"), seen + 1);
                                RwLockUpgradableReadGuard::upgrade(u)
                            }
                        };
                        assert!(check(&w, "upgraded writer") >= seen);
                        if i % 4 != 3 {
                            assert_eq!(w.a, seen, "a writer got in before the upgrade");
                        }
                        bump(&mut w, "upgraded writer");
                        bumps.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
    });
    let pair = lock.into_inner();
    assert_eq!(pair.a, bumps.load(Ordering::Relaxed));
    assert_eq!(pair.a, pair.b);
}

#[test]
fn try_upgradable_read_fails_while_upgradable_or_write_locked() {
    let lock = RwLock::new(0);
    let r = lock.read();
    let u = lock.try_upgradable_read().expect("a reader does not stop an upgradable read");
    assert!(lock.try_upgradable_read().is_none());
    assert!(lock.try_write().is_none());
    assert!(lock.try_read().is_some(), "readers get in beside an upgradable reader");
    assert!(lock.is_locked() && !lock.is_locked_exclusive());
    drop((r, u));
    assert!(!lock.is_locked());
    let w = lock.write();
    assert!(lock.try_upgradable_read().is_none());
    drop(w);
    assert!(lock.try_upgradable_read().is_some());
}

#[test]
fn try_upgrade_fails_while_a_reader_is_inside() {
    let lock = RwLock::new(1);
    let r = lock.read();
    let u = lock.upgradable_read();
    let u = RwLockUpgradableReadGuard::try_upgrade(u).expect_err("a reader is inside");
    // Still upgradable: writers and upgradable readers out, readers in.
    assert!(lock.try_write().is_none() && lock.try_upgradable_read().is_none());
    assert_eq!(*lock.try_read().expect("readers are let go again"), 1);
    // The same on another thread, whose reader counts elsewhere.
    thread::scope(|s| s.spawn(|| assert_eq!(*lock.read(), 1)).join().unwrap());
    drop(r);
    let mut w = RwLockUpgradableReadGuard::try_upgrade(u).expect("no reader is inside");
    assert!(lock.is_locked_exclusive() && lock.try_read().is_none());
    *w = 2;
    drop(w);
    assert_eq!(*lock.read(), 2);
    assert!(!lock.is_locked());
}

/// A reader on this thread holds the lock while another thread upgrades:
/// the value must not change under the reader, and the upgrade completes
/// once it leaves.
#[test]
fn upgrade_waits_for_the_reader_inside() {
    let lock = RwLock::new(0);
    common::upgrade_waits_for_reader(
        || lock.read(),
        || *RwLockUpgradableReadGuard::upgrade(lock.upgradable_read()) += 1,
    );
    assert_eq!(*lock.read(), 1);
}

#[test]
fn downgrades() {
    let lock = RwLock::new(String::from("a"));
    // Write, to upgradable: readers back in, writers still out.
    let mut w = lock.write();
    w.push('b');
    let u = RwLockWriteGuard::downgrade_to_upgradable(w);
    assert_eq!(*lock.read(), "ab");
    assert!(lock.try_write().is_none() && lock.try_upgradable_read().is_none());
    // Upgradable, to read: another upgradable reader gets in, writers not.
    let r = RwLockUpgradableReadGuard::downgrade(u);
    let u2 = lock.try_upgradable_read().expect("the upgradable lock was released");
    assert!(lock.try_write().is_none());
    assert_eq!(*r, "ab");
    // The second upgradable reader's upgrade must wait for `r`.
    let u2 = RwLockUpgradableReadGuard::try_upgrade(u2).expect_err("`r` is inside");
    drop(r);
    RwLockUpgradableReadGuard::upgrade(u2).push('c');
    assert_eq!(*lock.read(), "abc");
    assert!(!lock.is_locked());
}

#[test]
fn upgradable_guard_surface() {
    fn guard_sync<T: Sync>(_: &T) {}
    let lock = RwLock::new(5);
    let u = lock.upgradable_read();
    guard_sync(&u);
    assert_eq!(format!("{u:?} {u}"), "5 5");
    assert!(format!("{lock:?}").contains("data: 5"), "readers see the data");
    drop(u);
    let unsized_lock: Box<RwLock<[u32]>> = Box::new(RwLock::new([1, 2]));
    let u = unsized_lock.upgradable_read();
    assert_eq!(u.len(), 2);
    RwLockUpgradableReadGuard::upgrade(u)[0] = 3;
    assert_eq!(&*unsized_lock.read(), &[3, 2]);
}

/// A panic while upgradable-locked releases the lock.
#[test]
fn panic_while_upgradable_releases() {
    let lock = RwLock::new(1);
    let caught = std::panic::catch_unwind(|| {
        let _u = lock.upgradable_read();
        panic!("inside");
    });
    assert!(caught.is_err());
    assert!(lock.try_upgradable_read().is_some() && lock.try_write().is_some());
}
