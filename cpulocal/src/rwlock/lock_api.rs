//! [`RawRwLock`]: the protocol of [`RwLock`](super::RwLock) as a
//! [`lock_api::RawRwLock`], for code written against `lock_api` (feature
//! `lock_api`).

use std::fmt;

use super::{raw, Cpus};

/// The lock of [`RwLock`](crate::RwLock) without its data, as a
/// [`lock_api::RawRwLock`] (feature `lock_api`): code generic over
/// `lock_api`'s traits, or written against `lock_api::RwLock`, gets readers
/// that touch only their own CPU's counts.
///
/// The same lock as [`RwLock`](crate::RwLock): readers and writers behave
/// and cost the same, the per-CPU counts (16 bytes per possible CPU) are
/// allocated on first use, and `INIT` is a constant, so a lock can be a
/// `static`. Guards are `Send` ([`lock_api::GuardSend`]): a lock may be
/// released on another thread than the one that took it.
///
/// What it implements:
///
/// - [`lock_api::RawRwLock`]: `read`, `write`, `try_read`, `try_write`,
///   `is_locked`, `is_locked_exclusive` of `lock_api::RwLock`;
/// - [`lock_api::RawRwLockDowngrade`]: `RwLockWriteGuard::downgrade`, which
///   turns the write lock into a read lock without letting a writer in;
/// - [`lock_api::RawRwLockUpgrade`]: `upgradable_read`, `try_upgradable_read`
///   and the guard's `upgrade`, `try_upgrade`, `with_upgraded`: an
///   upgradable reader holds the writers' mutex (readers still get in), and
///   its upgrade waits for the readers inside as a writer does;
/// - [`lock_api::RawRwLockUpgradeDowngrade`]: the upgradable guard's
///   `downgrade` to a read lock and `RwLockWriteGuard::downgrade_to_upgradable`.
///
/// What it leaves out, and why:
///
/// - timed locks ([`lock_api::RawRwLockTimed`]): the lock's waits (spin,
///   yield, futex) have no deadline;
/// - recursive reads ([`lock_api::RawRwLockRecursive`]) and fair unlocks
///   ([`lock_api::RawRwLockFair`]): a reader waits for a writer that waits,
///   so a second read lock on the same thread can deadlock, as with
///   [`std::sync::RwLock`]; there is no queue to hand the lock over fairly.
///
/// # Panics
/// `lock_exclusive` (`write`) and `upgrade` panic where [`RwLock::write`] does: if
/// `membarrier` worked when readers started to rely on it and is refused
/// later.
///
/// [`RwLock::write`]: crate::RwLock::write
///
/// ```
/// use cpulocal::RawRwLock;
///
/// let lock = lock_api::RwLock::<RawRwLock, _>::new(vec![1, 2]);
/// std::thread::scope(|s| {
///     s.spawn(|| assert!(lock.read().len() >= 2));
///     s.spawn(|| lock.write().push(3));
/// });
/// assert_eq!(*lock.read(), [1, 2, 3]);
/// ```
///
/// The raw lock on its own, through the trait:
///
/// ```
/// use lock_api::RawRwLock as _;
///
/// let raw = cpulocal::RawRwLock::INIT;
/// raw.lock_shared();
/// assert!(raw.is_locked() && !raw.try_lock_exclusive());
/// // SAFETY: the shared lock taken above.
/// unsafe { raw.unlock_shared() };
/// assert!(raw.try_lock_exclusive() && raw.is_locked_exclusive());
/// // SAFETY: the exclusive lock taken just now.
/// unsafe { raw.unlock_exclusive() };
/// assert!(!raw.is_locked());
/// ```
///
/// A `static`:
///
/// ```
/// static HOSTS: cpulocal::LockApiRwLock<Vec<&str>> = cpulocal::LockApiRwLock::new(Vec::new());
/// HOSTS.write().push("example.org");
/// assert_eq!(HOSTS.read().len(), 1);
/// ```
///
/// `Debug` shows whether a writer holds or waits for the lock and what
/// readers do now, as [`RwLock`](crate::RwLock)'s `Debug` does:
///
/// ```
/// use lock_api::RawRwLock as _;
///
/// let raw = cpulocal::RawRwLock::INIT;
/// assert!(format!("{raw:?}").starts_with("RawRwLock { write_locked: false, readers: "));
/// ```
pub struct RawRwLock(raw::RawRwLock<Cpus>);

// SAFETY: exclusion is `raw::RawRwLock`'s, which `RwLock` relies on too: a
// writer holds the writers' mutex and sees every counted reader leave
// before `lock_exclusive` returns, and a reader that counts itself while a
// writer is around backs off. Unlocks may run on any thread (the unlock
// count is summed over every CPU, and the writers' mutex is a word with no
// owner), hence `GuardSend`.
unsafe impl lock_api::RawRwLock for RawRwLock {
    #[allow(clippy::declare_interior_mutable_const)] // the trait's way to a `static`
    const INIT: RawRwLock = RawRwLock(raw::RawRwLock::new(Cpus::new()));

    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock_shared(&self) {
        // The trait's unlock carries nothing: `read_unlock` looks again.
        let _ = self.0.read_lock();
    }

    #[inline]
    fn try_lock_shared(&self) -> bool {
        self.0.try_read_lock().is_some()
    }

    #[inline]
    unsafe fn unlock_shared(&self) {
        // SAFETY: the caller holds a shared lock of this lock (the trait's
        // contract).
        unsafe { self.0.read_unlock() };
    }

    fn lock_exclusive(&self) {
        self.0.write_lock();
    }

    fn try_lock_exclusive(&self) -> bool {
        self.0.try_write_lock()
    }

    unsafe fn unlock_exclusive(&self) {
        // SAFETY: the caller holds the exclusive lock (the trait's contract).
        unsafe { self.0.write_unlock() };
    }

    fn is_locked(&self) -> bool {
        self.0.is_locked()
    }

    fn is_locked_exclusive(&self) -> bool {
        self.0.is_write_locked()
    }
}

// SAFETY: `raw::RawRwLock::downgrade` counts a read lock while the writer
// still blocks readers and writers, then releases the write lock: no writer
// gets in between, and the next one waits for this reader.
unsafe impl lock_api::RawRwLockDowngrade for RawRwLock {
    unsafe fn downgrade(&self) {
        // SAFETY: the caller holds the exclusive lock (the trait's contract).
        let _ = unsafe { self.0.downgrade() };
    }
}

// SAFETY: an upgradable lock is the writers' mutex, which excludes writers
// and other upgradable readers and lets shared lockers in; `upgrade` does
// what `lock_exclusive` does once it holds that mutex (block readers, wait
// for those inside to leave), and `try_upgrade` undoes its blocking and
// keeps the mutex when a reader is inside.
unsafe impl lock_api::RawRwLockUpgrade for RawRwLock {
    fn lock_upgradable(&self) {
        self.0.upgradable_lock();
    }

    fn try_lock_upgradable(&self) -> bool {
        self.0.try_upgradable_lock()
    }

    unsafe fn unlock_upgradable(&self) {
        // SAFETY: the caller holds an upgradable lock (the trait's contract).
        unsafe { self.0.upgradable_unlock() };
    }

    unsafe fn upgrade(&self) {
        // SAFETY: the caller holds an upgradable lock (the trait's contract).
        unsafe { self.0.upgrade() };
    }

    unsafe fn try_upgrade(&self) -> bool {
        // SAFETY: the caller holds an upgradable lock (the trait's contract).
        unsafe { self.0.try_upgrade() }
    }
}

// SAFETY: `downgrade_upgradable` counts a read lock while it still holds
// the writers' mutex, so the next writer waits for it; `downgrade_to_upgradable`
// lets readers in and keeps the mutex: no writer gets in between either way.
unsafe impl lock_api::RawRwLockUpgradeDowngrade for RawRwLock {
    unsafe fn downgrade_upgradable(&self) {
        // SAFETY: the caller holds an upgradable lock (the trait's contract).
        let _ = unsafe { self.0.downgrade_upgradable() };
    }

    unsafe fn downgrade_to_upgradable(&self) {
        // SAFETY: the caller holds the exclusive lock (the trait's contract).
        unsafe { self.0.downgrade_to_upgradable() };
    }
}

impl fmt::Debug for RawRwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawRwLock")
            .field("write_locked", &self.0.is_write_locked())
            .field("readers", &self.0.reader_mode())
            .field("writers_wait", &self.0.writer_wait_mode())
            .finish_non_exhaustive()
    }
}

/// A `lock_api` reader/writer lock over [`RawRwLock`]: the interface of
/// `parking_lot::RwLock` (without recursive and timed reads),
/// the per-CPU readers of [`RwLock`](crate::RwLock). `new` is a `const fn`.
///
/// ```
/// use cpulocal::{LockApiRwLock, LockApiRwLockWriteGuard};
///
/// let lock = LockApiRwLock::new(1);
/// let mut w = lock.write();
/// *w += 1;
/// let r = LockApiRwLockWriteGuard::downgrade(w);
/// assert_eq!(*r, 2);
/// assert!(lock.try_read().is_some() && lock.try_write().is_none());
/// ```
pub type LockApiRwLock<T> = lock_api::RwLock<RawRwLock, T>;

/// A read lock on a [`LockApiRwLock`]; released when dropped.
///
/// ```
/// use cpulocal::{LockApiRwLock, LockApiRwLockReadGuard};
///
/// let lock = LockApiRwLock::new((1, "one"));
/// let guard: LockApiRwLockReadGuard<'_, _> = lock.read();
/// let name = LockApiRwLockReadGuard::map(guard, |pair| &pair.1);
/// assert_eq!(*name, "one");
/// ```
pub type LockApiRwLockReadGuard<'a, T> = lock_api::RwLockReadGuard<'a, RawRwLock, T>;

/// The write lock on a [`LockApiRwLock`]; released when dropped.
///
/// ```
/// use cpulocal::{LockApiRwLock, LockApiRwLockWriteGuard};
///
/// let lock = LockApiRwLock::new(String::from("a"));
/// let mut guard: LockApiRwLockWriteGuard<'_, _> = lock.write();
/// guard.push('b');
/// drop(guard);
/// assert_eq!(*lock.read(), "ab");
/// ```
pub type LockApiRwLockWriteGuard<'a, T> = lock_api::RwLockWriteGuard<'a, RawRwLock, T>;

/// An upgradable read lock on a [`LockApiRwLock`]; released when dropped.
///
/// ```
/// use cpulocal::{LockApiRwLock, LockApiRwLockUpgradableReadGuard};
///
/// let lock = LockApiRwLock::new(vec![1]);
/// let guard: LockApiRwLockUpgradableReadGuard<'_, _> = lock.upgradable_read();
/// assert_eq!(lock.read().len(), 1); // readers still get in
/// LockApiRwLockUpgradableReadGuard::upgrade(guard).push(2);
/// assert_eq!(*lock.read(), [1, 2]);
/// ```
pub type LockApiRwLockUpgradableReadGuard<'a, T> =
    lock_api::RwLockUpgradableReadGuard<'a, RawRwLock, T>;
