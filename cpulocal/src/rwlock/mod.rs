//! [`RwLock`]: a reader/writer lock whose readers touch only their CPU's
//! counts (NetBSD's pserialize-backed `rwlock` idea, Linux's
//! `percpu_rw_semaphore`).
//!
//! A reader adds one to its CPU's *lock* count, then reads the shared
//! `state` word; on unlock it adds one to its CPU's *unlock* count (wherever
//! it is by then) and reads `state` again. With no writer around that is two
//! restartable-sequence `add`s and two loads of a line nobody writes. A
//! writer sets `WRITER` in `state`, runs `membarrier` so that every reader
//! either is already counted or sees `WRITER`, then waits until the sum of
//! the unlock counts, read first, equals the sum of the lock counts.
//! DESIGN.md ("The distributed reader/writer lock") proves why the split
//! counts are immune to readers that migrate between lock and unlock.
//!
//! The protocol lives in [`raw`], generic over where the counts live, so
//! that the loom model in `tests/loom_rwlock.rs` runs the same code.

mod raw;

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
// `raw` takes its atomics from `super::sync` (loom's in the model).
use std::sync;
use std::sync::atomic::{compiler_fence, fence, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::cpu::{self, Place};
use crate::percpu::{AllocError, Percpu};
use crate::sys;
use raw::{Env, RawRwLock};

/// Offsets of the two counts in each slot's 16 bytes.
const LOCKS: usize = 0;
const UNLOCKS: usize = 8;

/// Whether locks made from now on pair a reader compiler barrier with a
/// writer `membarrier`, or fall back to a full fence in every reader.
///
/// Decided once per process: `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`
/// must register and work, and `CPULOCAL_MEMBARRIER` must not be `0`, `off`,
/// `no` or `false` (how the tests exercise the fallback).
fn use_membarrier() -> bool {
    static USE: OnceLock<bool> = OnceLock::new();
    *USE.get_or_init(|| {
        let var = std::env::var("CPULOCAL_MEMBARRIER").unwrap_or_default();
        let off = matches!(var.trim(), "0" | "off" | "no" | "false");
        !off && sys::membarrier::available()
    })
}

/// The per-CPU counts and the platform's fences and futex.
struct Cpus {
    /// Per slot: the lock count at [`LOCKS`], the unlock count at [`UNLOCKS`].
    counts: Percpu,
    /// Readers use a compiler barrier and the writer `membarrier`; otherwise
    /// both use `fence(SeqCst)`.
    membarrier: bool,
}

impl Cpus {
    #[inline(always)]
    fn word(&self, slot: usize, offset: usize) -> &AtomicU64 {
        // SAFETY: every slot holds 16 zeroed bytes aligned to 16, alive as
        // long as `self`; with Place::Rseq the CPU slots are also written by
        // restartable sequences, which are single instructions on this CPU.
        unsafe { AtomicU64::from_ptr(self.counts.slot(slot).add(offset).cast()) }
    }

    #[inline(always)]
    fn add(&self, offset: usize, order: Ordering) {
        match cpu::place() {
            // SAFETY: `area` is this thread's; every slot's 16 bytes are
            // valid; with Place::Rseq, CPU slots are only updated by
            // sequences. The sequence is a compiler barrier and on x86-64 a
            // plain `add`, whose store is ordered after every earlier load
            // and store (TSO): the release `count_unlock` promises.
            Place::Rseq(area) => unsafe {
                sys::rseq::percpu_add(area, self.counts.base().add(offset), 1)
            },
            Place::Slot(slot) => {
                self.word(slot, offset).fetch_add(1, order);
            }
        }
    }
}

impl Env for Cpus {
    const SPINS: u32 = 10;

    #[inline(always)]
    fn count_lock(&self) {
        self.add(LOCKS, Ordering::Relaxed);
    }

    #[inline(always)]
    fn count_unlock(&self) {
        self.add(UNLOCKS, Ordering::Release);
    }

    fn slots(&self) -> usize {
        cpu::slots()
    }

    fn locks(&self, slot: usize) -> u64 {
        self.word(slot, LOCKS).load(Ordering::Acquire)
    }

    fn unlocks(&self, slot: usize) -> u64 {
        self.word(slot, UNLOCKS).load(Ordering::Acquire)
    }

    #[inline(always)]
    fn reader_fence(&self) {
        if self.membarrier {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }

    fn writer_fence(&self) {
        if !self.membarrier {
            fence(Ordering::SeqCst);
        } else if !sys::membarrier::heavy() {
            // Registration and a first barrier worked, and the page-protection
            // fallback failed too. Readers have been skipping their fence;
            // nothing can keep them out now, and going on would let a writer
            // in beside them.
            eprintln!("cpulocal::RwLock: no process-wide barrier is left; aborting");
            std::process::abort();
        }
    }

    fn wait(&self, word: &AtomicU32, expected: u32) {
        sys::futex_wait(word, expected, None);
    }

    fn wake(&self, word: &AtomicU32, n: u32) {
        sys::futex_wake(word, n.min(i32::MAX as u32) as i32);
    }
}

/// A reader/writer lock for data that is read far more often than written:
/// readers only touch their CPU's counts, writers pay for a process-wide
/// barrier and a walk over every CPU.
///
/// The shape of [`std::sync::RwLock`], without poisoning (a panic in a
/// critical section releases the lock and leaves the data as it was).
///
/// - [`read`](Self::read) and its unlock are, with no writer around, two
///   per-CPU `add`s (restartable sequences on Linux x86-64, atomic adds on the
///   CPU's own line elsewhere) and two loads of a line no one writes: no
///   atomic read-modify-write, no write to a shared line. Readers scale
///   with CPUs.
/// - [`write`](Self::write) excludes other writers, blocks new readers, runs
///   `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (microseconds: one
///   interrupt for every CPU running this process), then waits for the
///   readers inside to leave. Where `membarrier` is unavailable, readers
///   pay a full fence instead and writers none.
/// - Nobody spins for long: blocked readers and writers sleep on a futex.
///   A continuous stream of readers cannot starve a writer, and a reader
///   that meets a writer gets in before the writer after next at the latest
///   (see DESIGN.md for the exact bound).
///
/// Each lock holds 16 bytes per possible CPU. As with the standard lock,
/// taking a read lock while holding one can deadlock if a writer arrives
/// in between, and taking the write lock while holding either deadlocks.
///
/// ```
/// use cpulocal::RwLock;
///
/// let config = RwLock::new(String::from("v1"));
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| assert!(config.read().starts_with('v')));
///     }
///     s.spawn(|| *config.write() = String::from("v2"));
/// });
/// assert_eq!(config.into_inner(), "v2");
/// ```
///
/// `Send` and `Sync` exactly when the standard lock is: a lock of a
/// non-`Sync` value is not `Sync`,
///
/// ```compile_fail,E0277
/// fn assert_sync<T: Sync>(_: &T) {}
/// assert_sync(&cpulocal::RwLock::new(std::cell::Cell::new(0)));
/// ```
///
/// while a lock of a `Send + Sync` value is:
///
/// ```
/// fn assert_sync<T: Sync>(_: &T) {}
/// assert_sync(&cpulocal::RwLock::new(std::sync::atomic::AtomicU8::new(0)));
/// ```
pub struct RwLock<T: ?Sized> {
    raw: RawRwLock<Cpus>,
    data: UnsafeCell<T>,
}

// SAFETY: as std's: moving the lock moves the `T`.
unsafe impl<T: ?Sized + Send> Send for RwLock<T> {}
// SAFETY: as std's: readers on several threads share `&T` (T: Sync), and a
// writer gets `&mut T` on any thread (T: Send); the protocol keeps them apart.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLock<T> {}

impl<T> RwLock<T> {
    /// A new, unlocked lock holding `value`.
    ///
    /// ```
    /// let config = cpulocal::RwLock::new(String::from("v1"));
    /// assert_eq!(*config.read(), "v1");
    /// ```
    ///
    /// # Panics
    /// If per-CPU memory cannot be had; see [`RwLock::try_new`].
    pub fn new(value: T) -> RwLock<T> {
        RwLock::try_new(value).unwrap_or_else(|e| panic!("RwLock: {e}"))
    }

    /// A new, unlocked lock holding `value`, or the reason per-CPU memory
    /// could not be had.
    ///
    /// ```
    /// let lock = cpulocal::RwLock::try_new(0u32)?;
    /// *lock.write() += 1;
    /// # Ok::<(), cpulocal::AllocError>(())
    /// ```
    ///
    /// # Errors
    /// [`AllocError::TooLarge`] or [`AllocError::System`] if the per-CPU
    /// regions have no room left or the system refuses the memory; `value`
    /// is dropped.
    pub fn try_new(value: T) -> Result<RwLock<T>, AllocError> {
        let counts = Percpu::alloc_aligned(16, 16)?;
        let env = Cpus { counts, membarrier: use_membarrier() };
        Ok(RwLock { raw: RawRwLock::new(env), data: UnsafeCell::new(value) })
    }

    /// The value, consuming the lock.
    ///
    /// ```
    /// let lock = cpulocal::RwLock::new(vec![1, 2]);
    /// assert_eq!(lock.into_inner(), [1, 2]);
    /// ```
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    /// Locks for reading, waiting while a writer holds or waits for the
    /// lock.
    ///
    /// ```
    /// let lock = cpulocal::RwLock::new(5);
    /// let (a, b) = (lock.read(), lock.read());
    /// assert_eq!(*a + *b, 10);
    /// ```
    #[inline]
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.raw.read_lock();
        RwLockReadGuard { lock: self, _not_send: PhantomData }
    }

    /// Locks for writing, waiting for other writers and then for every
    /// reader inside to leave.
    ///
    /// ```
    /// let lock = cpulocal::RwLock::new(5);
    /// *lock.write() += 1;
    /// assert_eq!(*lock.read(), 6);
    /// ```
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.raw.write_lock();
        RwLockWriteGuard { lock: self, _not_send: PhantomData }
    }

    /// Locks for reading if no writer holds or waits for the lock.
    ///
    /// ```
    /// let lock = cpulocal::RwLock::new(5);
    /// assert!(lock.try_read().is_some());
    /// let w = lock.write();
    /// assert!(lock.try_read().is_none());
    /// ```
    #[inline]
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        self.raw.try_read_lock().then(|| RwLockReadGuard { lock: self, _not_send: PhantomData })
    }

    /// Locks for writing if no one holds the lock and no writer waits for
    /// it. Never sleeps, but does run the writer's barrier; it may also fail
    /// while a reader is in the middle of [`read`](Self::read) or
    /// [`try_read`](Self::try_read).
    ///
    /// ```
    /// let lock = cpulocal::RwLock::new(5);
    /// let r = lock.read();
    /// assert!(lock.try_write().is_none());
    /// drop(r);
    /// assert!(lock.try_write().is_some());
    /// ```
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        self.raw.try_write_lock().then(|| RwLockWriteGuard { lock: self, _not_send: PhantomData })
    }

    /// The value, through `&mut self`: no locking needed.
    ///
    /// ```
    /// let mut lock = cpulocal::RwLock::new(5);
    /// *lock.get_mut() = 6;
    /// assert_eq!(*lock.read(), 6);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

impl<T: Default> Default for RwLock<T> {
    fn default() -> RwLock<T> {
        RwLock::new(T::default())
    }
}

impl<T> From<T> for RwLock<T> {
    fn from(value: T) -> RwLock<T> {
        RwLock::new(value)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLock<T> {
    /// Shows the data if a read lock can be had at once, as std's does, and
    /// whether readers rely on `membarrier` (`false`: each pays a fence).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RwLock");
        match self.try_read() {
            Some(guard) => d.field("data", &&*guard),
            None => d.field("data", &format_args!("<locked>")),
        };
        d.field("membarrier", &self.raw.env().membarrier);
        d.finish_non_exhaustive()
    }
}

/// A read lock on an [`RwLock`]; the lock is released when it is dropped.
///
/// Not `Send`, like std's guards; `Sync` when `T` is:
///
/// ```compile_fail,E0277
/// fn assert_send<T: Send>(_: T) {}
/// let lock = cpulocal::RwLock::new(0);
/// assert_send(lock.read());
/// ```
///
/// ```
/// fn assert_sync<T: Sync>(_: &T) {}
/// let lock = cpulocal::RwLock::new(0);
/// assert_sync(&lock.read());
/// ```
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct RwLockReadGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
    _not_send: PhantomData<*mut ()>,
}

/// The write lock on an [`RwLock`]; the lock is released when it is dropped.
///
/// Not `Send`, like std's guards; `Sync` when `T` is:
///
/// ```compile_fail,E0277
/// fn assert_send<T: Send>(_: T) {}
/// let lock = cpulocal::RwLock::new(0);
/// assert_send(lock.write());
/// ```
///
/// ```
/// fn assert_sync<T: Sync>(_: &T) {}
/// let lock = cpulocal::RwLock::new(0);
/// assert_sync(&lock.write());
/// ```
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct RwLockWriteGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
    _not_send: PhantomData<*mut ()>,
}

// SAFETY: sharing the guard shares only `&T`, as std's guard does.
unsafe impl<T: ?Sized + Sync> Sync for RwLockReadGuard<'_, T> {}
// SAFETY: as above: `&RwLockWriteGuard` only gives `&T`.
unsafe impl<T: ?Sized + Sync> Sync for RwLockWriteGuard<'_, T> {}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: we hold a read lock: no `&mut T` exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwLockReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the guard stands for a read lock taken from this lock.
        unsafe { self.lock.raw.read_unlock() };
    }
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: we hold the write lock: no other reference exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: we hold the write lock: no other reference exists.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard stands for the write lock.
        unsafe { self.lock.raw.write_unlock() };
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for RwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for RwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}
