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

#[cfg(all(feature = "lock_api", not(loom)))]
pub(crate) mod lock_api;
mod raw;

use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::ptr::NonNull;
// `raw` takes its atomics from `super::sync` (loom's in the model).
use std::sync;
use std::sync::atomic::{compiler_fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::cpu::{self, Place};
use crate::percpu::{AllocError, LazyPercpu};
use crate::sys;
use raw::{Entered, Env, RawRwLock};

/// Offsets of the two counts in each slot's 16 bytes.
const LOCKS: usize = 0;
const UNLOCKS: usize = 8;

/// Whether writers may use `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`,
/// so that readers can skip their fence while writes are rare.
///
/// Decided once per process: the barrier must register and work, and
/// `CPULOCAL_MEMBARRIER` must not be `0`, `off`, `no` or `false` (how the
/// tests exercise the fallback, where readers always fence).
#[inline]
fn use_membarrier() -> bool {
    match USE_MEMBARRIER.load(Ordering::Relaxed) {
        YES => true,
        NO => false,
        _ => decide_membarrier(),
    }
}

const YES: u8 = 1;
const NO: u8 = 2;
/// [`use_membarrier`]'s answer once decided (0 before).
static USE_MEMBARRIER: AtomicU8 = AtomicU8::new(0);

#[cold]
fn decide_membarrier() -> bool {
    let yes = !membarrier_disabled() && sys::membarrier::available();
    USE_MEMBARRIER.store(if yes { YES } else { NO }, Ordering::Release);
    yes
}

/// `CPULOCAL_MEMBARRIER`, read once (an unknown value is reported once).
fn membarrier_disabled() -> bool {
    static DISABLED: OnceLock<bool> = OnceLock::new();
    *DISABLED.get_or_init(|| {
        let var = std::env::var("CPULOCAL_MEMBARRIER").unwrap_or_default();
        match var.trim().to_ascii_lowercase().as_str() {
            "0" | "off" | "no" | "false" => true,
            "" | "1" | "on" | "yes" | "true" => false,
            other => {
                eprintln!(
                    "cpulocal: ignoring unknown CPULOCAL_MEMBARRIER {other:?} (expected 0 or 1)"
                );
                false
            }
        }
    })
}

/// Whether [`use_membarrier`] is still being decided, on a thread of its
/// own, which the first call starts.
///
/// Registering for `membarrier` waits for an RCU grace period once the
/// process has more than one thread: 10-18 ms on the development VM (14
/// us in a single-threaded process). Decided on the spot, that stalled
/// whoever asked first: a writer, or a reader relaxing a quiet lock while
/// holding the writers' mutex. Until the answer is in, locks keep their
/// readers fenced, which needs no barrier. Where no thread can be started,
/// the caller decides on the spot as before.
#[inline]
fn membarrier_pending() -> bool {
    match USE_MEMBARRIER.load(Ordering::Acquire) {
        YES | NO => false,
        _ => start_deciding_membarrier(),
    }
}

/// The process (by id) whose thread decides [`use_membarrier`]; a child
/// after `fork` has no such thread, and starts its own.
static DECIDING_IN: AtomicU32 = AtomicU32::new(0);

/// Asked on every clock check and fenced write until the answer is in:
/// once a thread of this process decides, that costs a `getpid` and two
/// loads; only the caller that starts the thread reads the environment.
#[cold]
fn start_deciding_membarrier() -> bool {
    let pid = std::process::id();
    if DECIDING_IN.load(Ordering::Relaxed) == pid || DECIDING_IN.swap(pid, Ordering::Relaxed) == pid
    {
        return USE_MEMBARRIER.load(Ordering::Acquire) == 0;
    }
    if membarrier_disabled() {
        USE_MEMBARRIER.store(NO, Ordering::Release);
        return false;
    }
    let started =
        std::thread::Builder::new().name("cpulocal-membarrier".into()).spawn(decide_membarrier);
    if started.is_err() {
        decide_membarrier();
        return false;
    }
    true
}

/// The readers' mode pinned by `CPULOCAL_RWLOCK_MODE`: `central` or
/// `per-cpu`; otherwise writers choose by measuring (0 before decided).
static PINNED_MODE: AtomicU8 = AtomicU8::new(0);
const MEASURED: u8 = 1;
const PER_CPU: u8 = 2;
const CENTRAL: u8 = 3;

#[cold]
fn decide_pinned_mode() -> u8 {
    let var = std::env::var("CPULOCAL_RWLOCK_MODE").map(|v| v.trim().to_ascii_lowercase());
    let mode = match var.as_deref() {
        Err(_) | Ok("") => MEASURED,
        Ok("central") => CENTRAL,
        Ok("per-cpu" | "percpu") => PER_CPU,
        Ok(other) => {
            eprintln!("cpulocal: ignoring unknown CPULOCAL_RWLOCK_MODE {other:?}");
            MEASURED
        }
    };
    PINNED_MODE.store(mode, Ordering::Relaxed);
    mode
}

/// The per-CPU counts and the platform's fences, clock and futex.
struct Cpus {
    /// Per slot: the lock count at [`LOCKS`], the unlock count at
    /// [`UNLOCKS`]; allocated on first use.
    counts: LazyPercpu,
    /// The counts of readers that found no per-CPU memory (allocation
    /// failed): a lock without it still works, as a centralized one.
    spare: [AtomicU64; 2],
}

impl Cpus {
    const fn new() -> Cpus {
        Cpus { counts: LazyPercpu::new(16, 16), spare: [AtomicU64::new(0), AtomicU64::new(0)] }
    }

    #[inline(always)]
    fn word(&self, base: NonNull<u8>, slot: usize, offset: usize) -> &AtomicU64 {
        // SAFETY: `base` is `self.counts`' allocation: every slot holds 16
        // zeroed bytes aligned to 16, alive as long as `self`; with
        // Place::Rseq the CPU slots are also written by restartable
        // sequences, which are single instructions on this CPU.
        unsafe { AtomicU64::from_ptr(LazyPercpu::slot(base, slot).add(offset).cast()) }
    }

    /// Adds one to this CPU's count at `OFFSET`: inline by a restartable
    /// sequence where the thread's fast path is armed (a compiler barrier,
    /// and a plain `add`, whose store is ordered after every earlier load
    /// and store on x86-64: the release `count_unlock` promises), else
    /// through [`Cpus::add`].
    #[inline(always)]
    fn add_fast<const OFFSET: usize>(&self, order: Ordering) {
        if sys::rseq::HAS_PERCPU_OPS {
            let base = self.counts.lazy_ptr().get_raw();
            // SAFETY: null, or every slot's 16 zeroed bytes, alive as long
            // as `self`, whose CPU slots are only updated by sequences.
            if !unsafe { sys::rseq::percpu_add_fast::<OFFSET>(base, 1) } {
                self.add_cold(OFFSET, order);
            }
            return;
        }
        self.add(OFFSET, order);
    }

    #[inline(always)]
    fn add(&self, offset: usize, order: Ordering) {
        let Some(base) = self.counts.get() else { return self.add_cold(offset, order) };
        match cpu::place() {
            // SAFETY: `area` is this thread's; every slot's 16 bytes are
            // valid; with Place::Rseq, CPU slots are only updated by
            // sequences. The sequence is a compiler barrier and on x86-64 a
            // plain `add`, whose store is ordered after every earlier load
            // and store (TSO): the release `count_unlock` promises.
            Place::Rseq(area) => unsafe {
                sys::rseq::percpu_add(area, base.as_ptr().add(offset), 1)
            },
            Place::Slot(slot) => {
                self.word(base, slot, offset).fetch_add(1, order);
            }
        }
    }

    /// The first count of this lock (allocate its per-CPU counts, or count
    /// on the spare words if that fails), and every count the inline path
    /// leaves to the general one.
    #[cold]
    #[inline(never)]
    fn add_cold(&self, offset: usize, order: Ordering) {
        if self.counts.get_or_try_alloc().is_some() {
            self.add(offset, order);
            cpu::arm_fast_path();
        } else {
            self.spare[offset / 8].fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The sum of every slot's count at `offset` (the CPUs', the spill
    /// slot's and the spare word), each read with acquire ordering.
    #[inline]
    fn sum(&self, offset: usize) -> u64 {
        let spare = self.spare[offset / 8].load(Ordering::Acquire);
        let Some(base) = self.counts.get() else { return spare };
        // The stride read once: a relaxed load between the acquire loads
        // below would be read again on every slot.
        let stride = crate::region::unit();
        let mut word = base.as_ptr().wrapping_add(offset);
        let mut sum = spare;
        for _ in 0..cpu::slots() {
            // SAFETY: `word` is a slot's count at `offset` (slot 0's, then
            // one region further each round, as `LazyPercpu::slot` finds
            // them): 8 bytes aligned to 8 in the slot's 16, alive as long
            // as `self`, and only ever accessed atomically.
            let count = unsafe { AtomicU64::from_ptr(word.cast()) };
            sum = sum.wrapping_add(count.load(Ordering::Acquire));
            word = word.wrapping_add(stride);
        }
        sum
    }
}

thread_local! {
    /// Fenced read locks this thread takes before it next looks at the
    /// clock to see whether readers may stop fencing.
    static CLOCK_COUNTDOWN: Cell<u32> = const { Cell::new(0) };
}

impl Env for Cpus {
    /// 2 + 4 + 8 spin-loop hints, about 0.3 us on the development machine,
    /// as parking_lot's spinning: a holder running on another CPU is out
    /// by then, and one that was preempted is only helped by a yield.
    /// (Six rounds, 3 us, doubled a periodic writer's median latency with a
    /// reader per CPU: DESIGN.md, "The constants".)
    const SPINS: u32 = 3;
    const YIELDS: u32 = 8;

    #[inline(always)]
    fn count_lock(&self) {
        self.add_fast::<LOCKS>(Ordering::Relaxed);
    }

    #[inline(always)]
    fn count_unlock(&self) {
        self.add_fast::<UNLOCKS>(Ordering::Release);
    }

    #[inline]
    fn locks(&self) -> u64 {
        self.sum(LOCKS)
    }

    #[inline]
    fn unlocks(&self) -> u64 {
        self.sum(UNLOCKS)
    }

    #[inline(always)]
    fn light_fence(&self) {
        compiler_fence(Ordering::SeqCst);
    }

    #[inline(always)]
    fn full_fence(&self) {
        sys::membarrier::full_fence();
    }

    #[inline(always)]
    fn fence_after_rmw(&self) {
        // A locked instruction is a full barrier on x86-64 (no later load
        // passes it: Intel SDM vol. 3, "Memory Ordering"), so the RMW is the
        // fence; elsewhere, a fence.
        if cfg!(target_arch = "x86_64") {
            compiler_fence(Ordering::SeqCst);
        } else {
            sys::membarrier::full_fence();
        }
    }

    #[inline(always)]
    fn fenced_reader_fence(&self) {
        sys::membarrier::full_fence();
    }

    fn heavy_barrier(&self) -> bool {
        use_membarrier() && sys::membarrier::heavy()
    }

    #[inline]
    fn has_heavy_barrier(&self) -> bool {
        use_membarrier()
    }

    #[inline]
    fn heavy_barrier_pending(&self) -> bool {
        membarrier_pending()
    }

    fn crowded(&self) -> bool {
        // More than two runnable threads per CPU: a yield then goes to one
        // of at least two others on average, and the reader preempted
        // inside is no longer the likely next.
        sys::runnable_threads().is_some_and(|(runnable, cpus)| runnable > 2 * cpus)
    }

    fn pinned_mode(&self) -> Option<bool> {
        let mode = match PINNED_MODE.load(Ordering::Relaxed) {
            0 => decide_pinned_mode(),
            mode => mode,
        };
        match mode {
            PER_CPU => Some(false),
            CENTRAL => Some(true),
            _ => None,
        }
    }

    fn now(&self) -> u64 {
        sys::monotonic_ns()
    }

    #[inline]
    fn clock_due(&self) -> bool {
        CLOCK_COUNTDOWN
            .try_with(|c| match c.get() {
                0 => {
                    c.set(255);
                    true
                }
                n => {
                    c.set(n - 1);
                    false
                }
            })
            .unwrap_or(true)
    }

    fn wait(&self, word: &AtomicU32, expected: u32) {
        sys::futex_wait(word, expected, None);
    }

    fn wait_briefly(&self, word: &AtomicU32, expected: u32) {
        sys::futex_wait(word, expected, Some(std::time::Duration::from_millis(1)));
    }

    fn wake(&self, word: &AtomicU32, n: u32) {
        sys::futex_wake(word, n.min(i32::MAX as u32) as i32);
    }
}

/// A reader/writer lock for data that is read far more often than written:
/// readers only touch their CPU's counts, and writers pay for excluding
/// them, cheaply while writes are frequent and with a process-wide barrier
/// when they are rare.
///
/// The shape of [`std::sync::RwLock`] (plus parking_lot's mapped guards,
/// `downgrade` and `is_locked`), without poisoning: a panic in a critical
/// section releases the lock and leaves the data as the panicking code left
/// it.
///
/// - [`read`](Self::read) and its unlock are, while writes are rare, two
///   per-CPU `add`s (restartable sequences on Linux x86-64, atomic adds on
///   the CPU's own line elsewhere) and two loads of a line no one writes: no
///   atomic read-modify-write, no fence, no write to a shared line. Readers
///   scale with CPUs.
/// - [`write`](Self::write) excludes other writers, blocks new readers and
///   waits for the readers inside to leave. How it makes sure it sees every
///   reader adapts to the write rate, as BRAVO and Linux's percpu-rwsem do:
///   after a quiet spell the first write runs
///   `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (microseconds: an
///   interrupt for every CPU running this process), and switches readers to
///   a path with one fence (`lock or`, a few nanoseconds); writes that
///   follow need only a fence of their own, so that a writer that writes
///   every few milliseconds waits about as long as with a plain lock. Once
///   writes have stopped for 20 ms (or nine times what the barrier cost, if
///   more), readers drop the fence again. Where `membarrier` is
///   unavailable, readers always fence. Whether it is available is found
///   out once per process, on a short-lived thread (`cpulocal-membarrier`)
///   that the first lock to ask starts, since registering takes
///   milliseconds in a process with threads; locks keep their readers
///   fenced until then.
/// - When writes are so frequent that walking every CPU's counts costs more
///   than sharing one count (many writes, and cache lines that pass slowly
///   between CPUs), readers also count in the lock word, as a central
///   lock's do, and a write waits for that count alone. Writers choose by
///   measuring: every millisecond or so they compare the lock's throughput
///   with a trial of the other mode, and keep the faster. Writes that thin
///   out to under one operation in 256 bring the per-CPU counts back.
///   `CPULOCAL_RWLOCK_MODE=central` or `per-cpu` pins the mode.
/// - Waiting is bounded before it sleeps: readers and writers spin, then
///   yield, then sleep on a futex. A writer never waits for a descheduled
///   reader for fairness' sake; readers that met a writer get a bounded
///   moment to get in before the next writer blocks them again. A writer
///   asleep waiting for readers is woken by the last one out, and readers
///   that meet a writer still waiting for readers yield (a bounded number
///   of times) rather than sleep, so that sleeping readers do not take the
///   scheduler's favour from the writer.
///
/// Each lock holds 16 bytes per possible CPU, allocated on its first use
/// (so [`new`](Self::new) is a `const fn` and a lock can be a `static`),
/// and is itself three 128-byte lines (`size_of::<RwLock<u64>>()` is 384):
/// the readers' word, the writers' words, and the data on a line of its
/// own. The first per-CPU object of the process reserves address space
/// for every CPU's region (up to 1 GiB per possible CPU, without memory;
/// less where `RLIMIT_AS` says so). For thousands of small locks, one per
/// bucket or object, a central lock (parking_lot's: one word) is the
/// cheaper choice in memory; this one is for data read from every CPU.
/// As with the standard lock, taking a read lock while holding one can
/// deadlock if a writer arrives in between, and taking the write lock while
/// holding either deadlocks.
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
/// A `static`:
///
/// ```
/// static ROUTES: cpulocal::RwLock<Vec<&str>> = cpulocal::RwLock::new(Vec::new());
/// ROUTES.write().push("10.0.0.0/8");
/// assert_eq!(ROUTES.read().len(), 1);
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
///
/// Upgradable reads, as parking_lot's: [`upgradable_read`](Self::upgradable_read)
/// excludes writers and other upgradable readers but not readers, and its
/// guard can become the write lock with no writer in between
/// ([`RwLockUpgradableReadGuard::upgrade`], which waits for the readers
/// inside as `write` does).
///
/// Code written against `lock_api` can have the same lock: with the
/// feature `lock_api`, `cpulocal::RawRwLock` implements
/// `lock_api::RawRwLock`, `RawRwLockDowngrade`, `RawRwLockUpgrade` and
/// `RawRwLockUpgradeDowngrade`, and `LockApiRwLock<T>` is
/// `lock_api::RwLock<cpulocal::RawRwLock, T>`.
///
/// Not in this lock, nor in its `lock_api` implementation: timed locks and
/// poisoning. What `lock_api` builds on any raw lock (`read_arc` and
/// `write_arc` with its feature `arc_lock`, `RwLockReadGuard::unlocked`,
/// `force_unlock_read`, the upgradable guard's `with_upgraded`) is there
/// through `LockApiRwLock<T>`.
pub struct RwLock<T: ?Sized> {
    raw: RawRwLock<Cpus>,
    data: UnsafeCell<T>,
}

// SAFETY: as std's: moving the lock moves the `T`.
unsafe impl<T: ?Sized + Send> Send for RwLock<T> {}
// SAFETY: as std's: readers on several threads share `&T` (T: Sync), and a
// writer gets `&mut T` on any thread (T: Send); the protocol keeps them apart.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLock<T> {}

/// As std's lock: a panic while locked leaves the data as the panicking
/// code left it, which the standard lock reports by poisoning and this
/// lock does not.
impl<T: ?Sized> UnwindSafe for RwLock<T> {}
/// As std's lock; see the `UnwindSafe` impl.
impl<T: ?Sized> RefUnwindSafe for RwLock<T> {}

impl<T> RwLock<T> {
    /// A new, unlocked lock holding `value`. Its per-CPU counts are
    /// allocated when it is first locked; should that fail, the lock still
    /// works, with its counts on one shared line.
    ///
    /// ```
    /// let lock = cpulocal::RwLock::new(5);
    /// assert_eq!(*lock.read(), 5);
    /// ```
    #[cfg(not(loom))]
    pub const fn new(value: T) -> RwLock<T> {
        RwLock { raw: RawRwLock::new(Cpus::new()), data: UnsafeCell::new(value) }
    }

    /// As above; `raw` is not `const` where the loom model compiles it.
    #[cfg(loom)]
    pub fn new(value: T) -> RwLock<T> {
        RwLock { raw: RawRwLock::new(Cpus::new()), data: UnsafeCell::new(value) }
    }

    /// A new, unlocked lock holding `value`, with its per-CPU counts
    /// allocated now.
    ///
    /// # Errors
    /// The reason per-CPU memory could not be had ([`AllocError::System`]).
    ///
    /// ```
    /// let lock = cpulocal::RwLock::try_new(5).unwrap();
    /// assert_eq!(*lock.read(), 5);
    /// ```
    pub fn try_new(value: T) -> Result<RwLock<T>, AllocError> {
        let lock = RwLock::new(value);
        lock.raw.env().counts.get_or_alloc()?;
        Ok(lock)
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
        let entered = self.raw.read_lock();
        // SAFETY: read-locked just now, as `entered` says.
        unsafe { RwLockReadGuard::new(self, entered) }
    }

    /// Locks for writing, waiting for other writers and then for every
    /// reader inside to leave.
    ///
    /// ```
    /// let lock = cpulocal::RwLock::new(5);
    /// *lock.write() += 1;
    /// assert_eq!(*lock.read(), 6);
    /// ```
    ///
    /// # Panics
    /// If `membarrier` worked when readers started to rely on it and is
    /// refused now (a seccomp filter installed later), and the page-table
    /// barrier that replaces it is not known to reach every CPU here:
    /// nothing can then tell whether a reader is inside. The lock stays
    /// usable: its readers fence from then on, and later writes succeed.
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
        // SAFETY: read-locked if `try_read_lock` says so, as it says.
        self.raw.try_read_lock().map(|entered| unsafe { RwLockReadGuard::new(self, entered) })
    }

    /// Locks for writing if no one holds the lock and no writer waits for
    /// it. Never sleeps, but may run the writer's barrier; it may also fail
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

    /// Locks for an upgradable read: waits for writers and for any other
    /// upgradable reader, then lets readers in alongside (new ones as well)
    /// and keeps writers out until the guard is dropped, downgraded or
    /// upgraded. Readers pay a fence while it is held.
    ///
    /// ```
    /// use cpulocal::{RwLock, RwLockUpgradableReadGuard};
    /// let lock = RwLock::new(vec![1]);
    /// let u = lock.upgradable_read();
    /// assert_eq!(lock.read().len(), 1); // readers still get in
    /// assert!(lock.try_write().is_none() && lock.try_upgradable_read().is_none());
    /// if !u.contains(&2) {
    ///     RwLockUpgradableReadGuard::upgrade(u).push(2);
    /// }
    /// assert_eq!(*lock.read(), [1, 2]);
    /// ```
    pub fn upgradable_read(&self) -> RwLockUpgradableReadGuard<'_, T> {
        self.raw.upgradable_lock();
        RwLockUpgradableReadGuard { lock: self, _not_send: PhantomData }
    }

    /// Locks for an upgradable read if no writer (waiting for readers to
    /// leave, or inside) or upgradable reader holds the lock. Never sleeps;
    /// may also fail while a reader switches how readers fence.
    ///
    /// ```
    /// let lock = cpulocal::RwLock::new(5);
    /// let r = lock.read();
    /// let u = lock.try_upgradable_read().unwrap(); // readers do not stop it
    /// assert!(lock.try_upgradable_read().is_none());
    /// drop(u);
    /// drop(r);
    /// let _w = lock.write();
    /// assert!(lock.try_upgradable_read().is_none());
    /// ```
    pub fn try_upgradable_read(&self) -> Option<RwLockUpgradableReadGuard<'_, T>> {
        self.raw
            .try_upgradable_lock()
            .then(|| RwLockUpgradableReadGuard { lock: self, _not_send: PhantomData })
    }

    /// Whether anyone holds the lock, or a writer waits for it: a snapshot,
    /// out of date as soon as it returns (for assertions and statistics).
    ///
    /// ```
    /// let lock = cpulocal::RwLock::new(5);
    /// assert!(!lock.is_locked());
    /// let r = lock.read();
    /// assert!(lock.is_locked() && !lock.is_locked_exclusive());
    /// drop(r);
    /// let w = lock.write();
    /// assert!(lock.is_locked_exclusive());
    /// ```
    pub fn is_locked(&self) -> bool {
        self.raw.is_locked()
    }

    /// Whether a writer holds the lock or waits for readers to leave (a
    /// snapshot, as [`is_locked`](Self::is_locked)).
    ///
    /// ```
    /// let lock = cpulocal::RwLock::new(0);
    /// let r = lock.read();
    /// assert!(!lock.is_locked_exclusive());
    /// drop(r);
    /// let w = lock.write();
    /// assert!(lock.is_locked_exclusive());
    /// ```
    pub fn is_locked_exclusive(&self) -> bool {
        self.raw.is_write_locked()
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

    /// A raw pointer to the value, for callers that hold the lock by other
    /// means (as parking_lot's `data_ptr`).
    ///
    /// ```
    /// let lock = cpulocal::RwLock::new(5);
    /// let guard = lock.read();
    /// // SAFETY: read-locked through `guard`.
    /// assert_eq!(unsafe { *lock.data_ptr() }, 5);
    /// ```
    pub fn data_ptr(&self) -> *mut T {
        self.data.get()
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
    /// Shows the data if a read lock can be had at once, as std's does,
    /// what readers do now: `"no fence"` (writes are rare: writers interrupt
    /// them), `"fence"` (writes were recent, or the lock is new and whether
    /// the process has `membarrier` is still being found out: for about
    /// the first tens of milliseconds), `"always fence"` (no
    /// process-wide barrier here) or `"central"` (writes are frequent and
    /// readers count in the lock word), and how a writer waiting for readers
    /// lets them run: `"yield"`, or `"sleep"` (more threads want the CPUs
    /// than there are, and a yield would cost the writer its turn).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RwLock");
        match self.try_read() {
            Some(guard) => d.field("data", &&*guard),
            None => d.field("data", &format_args!("<locked>")),
        };
        d.field("readers", &self.raw.reader_mode());
        d.field("writers_wait", &self.raw.writer_wait_mode());
        d.finish_non_exhaustive()
    }
}

/// A read lock on an [`RwLock`]; the lock is released when it is dropped.
///
/// Covariant in `T`, as std's guard. Not `Send`, like std's guards; `Sync`
/// when `T` is:
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
/// // Covariance: a guard of a longer-lived reference is one of a shorter.
/// fn shorten<'a>(g: cpulocal::RwLockReadGuard<'a, &'static str>) -> cpulocal::RwLockReadGuard<'a, &'a str> { g }
/// ```
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct RwLockReadGuard<'a, T: ?Sized + 'a> {
    data: NonNull<T>,
    raw: &'a RawRwLock<Cpus>,
    /// How the read lock came in: its unlock then need not look.
    entered: Entered,
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
pub struct RwLockWriteGuard<'a, T: ?Sized + 'a> {
    lock: &'a RwLock<T>,
    _not_send: PhantomData<*mut ()>,
}

/// An upgradable read lock on an [`RwLock`], from
/// [`RwLock::upgradable_read`]; released when dropped.
///
/// Gives `&T` only; [`upgrade`](Self::upgrade) turns it into the write
/// lock. Not `Send` (as parking_lot's default); `Sync` when `T` is:
///
/// ```compile_fail,E0277
/// fn assert_send<T: Send>(_: T) {}
/// let lock = cpulocal::RwLock::new(0);
/// assert_send(lock.upgradable_read());
/// ```
///
/// ```
/// fn assert_sync<T: Sync>(_: &T) {}
/// let lock = cpulocal::RwLock::new(0);
/// assert_sync(&lock.upgradable_read());
/// ```
///
/// No `DerefMut`:
///
/// ```compile_fail,E0594
/// let lock = cpulocal::RwLock::new(0);
/// let mut u = lock.upgradable_read();
/// *u = 1;
/// ```
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct RwLockUpgradableReadGuard<'a, T: ?Sized + 'a> {
    lock: &'a RwLock<T>,
    _not_send: PhantomData<*mut ()>,
}

/// A read lock on part of an [`RwLock`]'s value, from
/// [`RwLockReadGuard::map`]; released when dropped.
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct MappedRwLockReadGuard<'a, T: ?Sized + 'a> {
    data: NonNull<T>,
    raw: &'a RawRwLock<Cpus>,
    entered: Entered,
}

/// The write lock on part of an [`RwLock`]'s value, from
/// [`RwLockWriteGuard::map`]; released when dropped.
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct MappedRwLockWriteGuard<'a, T: ?Sized + 'a> {
    data: NonNull<T>,
    raw: &'a RawRwLock<Cpus>,
    _variance: PhantomData<&'a mut T>,
}

// SAFETY: sharing the guard shares only `&T`, as std's guard does.
unsafe impl<T: ?Sized + Sync> Sync for RwLockReadGuard<'_, T> {}
// SAFETY: as above: `&RwLockWriteGuard` only gives `&T`.
unsafe impl<T: ?Sized + Sync> Sync for RwLockWriteGuard<'_, T> {}
// SAFETY: as above: the guard only ever gives `&T`.
unsafe impl<T: ?Sized + Sync> Sync for RwLockUpgradableReadGuard<'_, T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Sync> Sync for MappedRwLockReadGuard<'_, T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Sync> Sync for MappedRwLockWriteGuard<'_, T> {}

impl<'a, T: ?Sized> RwLockReadGuard<'a, T> {
    /// # Safety
    /// The caller has read-locked `lock`, which came in `entered`; the
    /// guard will unlock it.
    unsafe fn new(lock: &'a RwLock<T>, entered: Entered) -> Self {
        // SAFETY: `UnsafeCell::get` never returns null.
        let data = unsafe { NonNull::new_unchecked(lock.data.get()) };
        RwLockReadGuard { data, raw: &lock.raw, entered }
    }

    /// A guard for a part of the value, keeping the read lock.
    /// An associated function, so that it does not hide a method of `T`.
    ///
    /// ```
    /// use cpulocal::{RwLock, RwLockReadGuard};
    /// let lock = RwLock::new((1, String::from("one")));
    /// let name = RwLockReadGuard::map(lock.read(), |pair| &pair.1);
    /// assert_eq!(&*name, "one");
    /// ```
    pub fn map<U: ?Sized, F: FnOnce(&T) -> &U>(orig: Self, f: F) -> MappedRwLockReadGuard<'a, U> {
        // SAFETY: read-locked through `orig`; if `f` panics, `orig` unlocks.
        let data = NonNull::from(f(unsafe { orig.data.as_ref() }));
        let orig = ManuallyDrop::new(orig);
        MappedRwLockReadGuard { data, raw: orig.raw, entered: orig.entered }
    }

    /// The same read lock as a mapped guard of the whole value.
    fn mapped(self) -> MappedRwLockReadGuard<'a, T> {
        let this = ManuallyDrop::new(self);
        MappedRwLockReadGuard { data: this.data, raw: this.raw, entered: this.entered }
    }

    /// A guard for a part of the value if `f` finds one; otherwise the
    /// original guard back.
    ///
    /// ```
    /// use cpulocal::{RwLock, RwLockReadGuard};
    /// let lock = RwLock::new(vec![1, 2]);
    /// let first = RwLockReadGuard::try_map(lock.read(), |v| v.first()).unwrap();
    /// assert_eq!(*first, 1);
    /// drop(first);
    /// assert!(RwLockReadGuard::try_map(lock.read(), |v| v.get(5)).is_err());
    /// ```
    ///
    /// # Errors
    /// The original guard, if `f` returns `None`.
    pub fn try_map<U: ?Sized, F: FnOnce(&T) -> Option<&U>>(
        orig: Self,
        f: F,
    ) -> Result<MappedRwLockReadGuard<'a, U>, Self> {
        // SAFETY: read-locked through `orig`; if `f` panics, `orig` unlocks.
        match f(unsafe { orig.data.as_ref() }) {
            Some(part) => {
                let data = NonNull::from(part);
                let orig = ManuallyDrop::new(orig);
                Ok(MappedRwLockReadGuard { data, raw: orig.raw, entered: orig.entered })
            }
            None => Err(orig),
        }
    }
}

impl<'a, T: ?Sized> MappedRwLockReadGuard<'a, T> {
    /// As [`RwLockReadGuard::map`], for a part of a part.
    ///
    /// ```
    /// use cpulocal::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};
    /// let lock = RwLock::new(((1, 2), 3));
    /// let inner = RwLockReadGuard::map(lock.read(), |v| &v.0);
    /// assert_eq!(*MappedRwLockReadGuard::map(inner, |v| &v.1), 2);
    /// ```
    pub fn map<U: ?Sized, F: FnOnce(&T) -> &U>(orig: Self, f: F) -> MappedRwLockReadGuard<'a, U> {
        RwLockReadGuard::map(orig.unmapped(), f)
    }

    /// As [`RwLockReadGuard::try_map`], for a part of a part.
    ///
    /// ```
    /// use cpulocal::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};
    /// let lock = RwLock::new((vec![7], 3));
    /// let v = RwLockReadGuard::map(lock.read(), |p| &p.0);
    /// assert_eq!(*MappedRwLockReadGuard::try_map(v, |v| v.first()).unwrap(), 7);
    /// ```
    ///
    /// # Errors
    /// The original guard, if `f` returns `None`.
    pub fn try_map<U: ?Sized, F: FnOnce(&T) -> Option<&U>>(
        orig: Self,
        f: F,
    ) -> Result<MappedRwLockReadGuard<'a, U>, Self> {
        RwLockReadGuard::try_map(orig.unmapped(), f).map_err(RwLockReadGuard::mapped)
    }

    /// The same read lock as a plain guard (the two differ only in name).
    fn unmapped(self) -> RwLockReadGuard<'a, T> {
        let this = ManuallyDrop::new(self);
        RwLockReadGuard { data: this.data, raw: this.raw, entered: this.entered }
    }
}

impl<'a, T: ?Sized> RwLockWriteGuard<'a, T> {
    /// A guard for a part of the value, keeping the write lock.
    /// An associated function, so that it does not hide a method of `T`.
    ///
    /// ```
    /// use cpulocal::{RwLock, RwLockWriteGuard};
    /// let lock = RwLock::new((1, String::from("one")));
    /// RwLockWriteGuard::map(lock.write(), |pair| &mut pair.1).push('!');
    /// assert_eq!(lock.read().1, "one!");
    /// ```
    pub fn map<U: ?Sized, F: FnOnce(&mut T) -> &mut U>(
        orig: Self,
        f: F,
    ) -> MappedRwLockWriteGuard<'a, U> {
        // SAFETY: write-locked through `orig`, which we no longer use but
        // to forget it; if `f` panics, `orig` unlocks.
        let data = NonNull::from(f(unsafe { &mut *orig.lock.data.get() }));
        let orig = ManuallyDrop::new(orig);
        MappedRwLockWriteGuard { data, raw: &orig.lock.raw, _variance: PhantomData }
    }

    /// A guard for a part of the value if `f` finds one; otherwise the
    /// original guard back.
    ///
    /// ```
    /// use cpulocal::{RwLock, RwLockWriteGuard};
    /// let lock = RwLock::new(vec![1, 2]);
    /// *RwLockWriteGuard::try_map(lock.write(), |v| v.last_mut()).unwrap() = 5;
    /// assert_eq!(*lock.read(), [1, 5]);
    /// ```
    ///
    /// # Errors
    /// The original guard, if `f` returns `None`.
    pub fn try_map<U: ?Sized, F: FnOnce(&mut T) -> Option<&mut U>>(
        orig: Self,
        f: F,
    ) -> Result<MappedRwLockWriteGuard<'a, U>, Self> {
        // SAFETY: write-locked through `orig`; the `&mut T` lives no longer
        // than the match, and if `f` panics, `orig` unlocks.
        match f(unsafe { &mut *orig.lock.data.get() }).map(NonNull::from) {
            Some(data) => {
                let orig = ManuallyDrop::new(orig);
                Ok(MappedRwLockWriteGuard { data, raw: &orig.lock.raw, _variance: PhantomData })
            }
            None => Err(orig),
        }
    }

    /// Turns the write lock into a read lock without letting a writer in
    /// between; readers waiting for the writer get in too.
    ///
    /// ```
    /// use cpulocal::{RwLock, RwLockWriteGuard};
    /// let lock = RwLock::new(1);
    /// let mut w = lock.write();
    /// *w = 2;
    /// let r = RwLockWriteGuard::downgrade(w);
    /// assert_eq!(*r, 2);
    /// assert!(lock.try_read().is_some() && lock.try_write().is_none());
    /// ```
    pub fn downgrade(orig: Self) -> RwLockReadGuard<'a, T> {
        let lock = ManuallyDrop::new(orig).lock;
        // SAFETY: we hold the write lock, and give it up for a read lock,
        // which the new guard releases.
        unsafe {
            let entered = lock.raw.downgrade();
            RwLockReadGuard::new(lock, entered)
        }
    }

    /// Turns the write lock into an upgradable read lock without letting a
    /// writer in between: readers get in again, writers and other
    /// upgradable readers stay out.
    ///
    /// ```
    /// use cpulocal::{RwLock, RwLockWriteGuard};
    /// let lock = RwLock::new(1);
    /// let mut w = lock.write();
    /// *w = 2;
    /// let u = RwLockWriteGuard::downgrade_to_upgradable(w);
    /// assert_eq!(*lock.read(), 2);
    /// assert!(lock.try_write().is_none() && lock.try_upgradable_read().is_none());
    /// drop(u);
    /// ```
    pub fn downgrade_to_upgradable(s: Self) -> RwLockUpgradableReadGuard<'a, T> {
        let lock = ManuallyDrop::new(s).lock;
        // SAFETY: we hold the write lock, and give it up for an upgradable
        // read lock, which the new guard releases.
        unsafe { lock.raw.downgrade_to_upgradable() };
        RwLockUpgradableReadGuard { lock, _not_send: PhantomData }
    }
}

impl<'a, T: ?Sized> RwLockUpgradableReadGuard<'a, T> {
    /// Turns the upgradable read lock into the write lock, with no writer
    /// in between: blocks new readers and waits for those inside to leave,
    /// as [`RwLock::write`] does.
    ///
    /// ```
    /// use cpulocal::{RwLock, RwLockUpgradableReadGuard};
    /// let lock = RwLock::new(1);
    /// let u = lock.upgradable_read();
    /// let mut w = RwLockUpgradableReadGuard::upgrade(u);
    /// *w += 1;
    /// drop(w);
    /// assert_eq!(*lock.read(), 2);
    /// ```
    ///
    /// # Panics
    /// Where [`RwLock::write`] does; the upgradable lock is then released.
    pub fn upgrade(s: Self) -> RwLockWriteGuard<'a, T> {
        let lock = ManuallyDrop::new(s).lock;
        // SAFETY: we hold the upgradable lock; `upgrade` turns it into the
        // write lock (or releases it and panics), which the new guard
        // releases.
        unsafe { lock.raw.upgrade() };
        RwLockWriteGuard { lock, _not_send: PhantomData }
    }

    /// Turns the upgradable read lock into the write lock if no reader is
    /// inside. Never sleeps, but may run the writer's barrier.
    ///
    /// ```
    /// use cpulocal::{RwLock, RwLockUpgradableReadGuard};
    /// let lock = RwLock::new(1);
    /// let r = lock.read();
    /// let u = RwLockUpgradableReadGuard::try_upgrade(lock.upgradable_read()).unwrap_err();
    /// drop(r);
    /// *RwLockUpgradableReadGuard::try_upgrade(u).unwrap() = 2;
    /// assert_eq!(*lock.read(), 2);
    /// ```
    ///
    /// # Errors
    /// The upgradable guard back, still locked, if a reader is inside (or
    /// in the middle of [`RwLock::read`] or [`RwLock::try_read`]), or if the
    /// process-wide barrier its readers relied on is refused.
    pub fn try_upgrade(s: Self) -> Result<RwLockWriteGuard<'a, T>, Self> {
        // SAFETY: we hold the upgradable lock; on success it is the write
        // lock, which the new guard releases; on failure it is still ours.
        if unsafe { s.lock.raw.try_upgrade() } {
            let lock = ManuallyDrop::new(s).lock;
            Ok(RwLockWriteGuard { lock, _not_send: PhantomData })
        } else {
            Err(s)
        }
    }

    /// Turns the upgradable read lock into a read lock: writers and other
    /// upgradable readers may then get in once readers leave.
    ///
    /// ```
    /// use cpulocal::{RwLock, RwLockUpgradableReadGuard};
    /// let lock = RwLock::new(1);
    /// let r = RwLockUpgradableReadGuard::downgrade(lock.upgradable_read());
    /// assert!(lock.try_upgradable_read().is_some());
    /// assert!(lock.try_write().is_none());
    /// assert_eq!(*r, 1);
    /// ```
    pub fn downgrade(s: Self) -> RwLockReadGuard<'a, T> {
        let lock = ManuallyDrop::new(s).lock;
        // SAFETY: we hold the upgradable lock and give it up for a read
        // lock, which the new guard releases.
        unsafe {
            let entered = lock.raw.downgrade_upgradable();
            RwLockReadGuard::new(lock, entered)
        }
    }
}

impl<'a, T: ?Sized> MappedRwLockWriteGuard<'a, T> {
    /// As [`RwLockWriteGuard::map`], for a part of a part.
    ///
    /// ```
    /// use cpulocal::{MappedRwLockWriteGuard, RwLock, RwLockWriteGuard};
    /// let lock = RwLock::new(((1, 2), 3));
    /// let inner = RwLockWriteGuard::map(lock.write(), |v| &mut v.0);
    /// *MappedRwLockWriteGuard::map(inner, |v| &mut v.1) = 5;
    /// assert_eq!(lock.read().0, (1, 5));
    /// ```
    pub fn map<U: ?Sized, F: FnOnce(&mut T) -> &mut U>(
        mut orig: Self,
        f: F,
    ) -> MappedRwLockWriteGuard<'a, U> {
        // SAFETY: write-locked through `orig`; if `f` panics, `orig` unlocks.
        let data = NonNull::from(f(unsafe { orig.data.as_mut() }));
        let orig = ManuallyDrop::new(orig);
        MappedRwLockWriteGuard { data, raw: orig.raw, _variance: PhantomData }
    }

    /// As [`RwLockWriteGuard::try_map`], for a part of a part.
    ///
    /// ```
    /// use cpulocal::{MappedRwLockWriteGuard, RwLock, RwLockWriteGuard};
    /// let lock = RwLock::new((vec![7], 3));
    /// let v = RwLockWriteGuard::map(lock.write(), |p| &mut p.0);
    /// *MappedRwLockWriteGuard::try_map(v, |v| v.first_mut()).unwrap() = 8;
    /// assert_eq!(lock.read().0, [8]);
    /// ```
    ///
    /// # Errors
    /// The original guard, if `f` returns `None`.
    pub fn try_map<U: ?Sized, F: FnOnce(&mut T) -> Option<&mut U>>(
        mut orig: Self,
        f: F,
    ) -> Result<MappedRwLockWriteGuard<'a, U>, Self> {
        // SAFETY: write-locked through `orig`; the `&mut T` lives no longer
        // than the match, and if `f` panics, `orig` unlocks.
        match f(unsafe { orig.data.as_mut() }).map(NonNull::from) {
            Some(data) => {
                let orig = ManuallyDrop::new(orig);
                Ok(MappedRwLockWriteGuard { data, raw: orig.raw, _variance: PhantomData })
            }
            None => Err(orig),
        }
    }
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: we hold a read lock: no `&mut T` exists.
        unsafe { self.data.as_ref() }
    }
}

impl<T: ?Sized> Drop for RwLockReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the guard stands for a read lock taken from this lock,
        // which came in as `entered` says.
        unsafe { self.raw.read_unlock_as(self.entered) };
    }
}

impl<T: ?Sized> Deref for MappedRwLockReadGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: we hold a read lock: no `&mut T` exists.
        unsafe { self.data.as_ref() }
    }
}

impl<T: ?Sized> Drop for MappedRwLockReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the guard stands for a read lock taken from this lock,
        // which came in as `entered` says.
        unsafe { self.raw.read_unlock_as(self.entered) };
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

impl<T: ?Sized> Deref for RwLockUpgradableReadGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: we hold the upgradable lock: writers are out, so no
        // `&mut T` exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwLockUpgradableReadGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard stands for an upgradable lock of this lock.
        unsafe { self.lock.raw.upgradable_unlock() };
    }
}

impl<T: ?Sized> Deref for MappedRwLockWriteGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: we hold the write lock: no other reference exists.
        unsafe { self.data.as_ref() }
    }
}

impl<T: ?Sized> DerefMut for MappedRwLockWriteGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: we hold the write lock: no other reference exists.
        unsafe { self.data.as_mut() }
    }
}

impl<T: ?Sized> Drop for MappedRwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard stands for the write lock.
        unsafe { self.raw.write_unlock() };
    }
}

/// `Debug` and `Display` show the guarded value, as std's guards do.
macro_rules! forward_fmt {
    ($($guard:ident),*) => {$(
        impl<T: ?Sized + fmt::Debug> fmt::Debug for $guard<'_, T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                (**self).fmt(f)
            }
        }

        impl<T: ?Sized + fmt::Display> fmt::Display for $guard<'_, T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                (**self).fmt(f)
            }
        }
    )*};
}

forward_fmt!(
    RwLockReadGuard,
    RwLockWriteGuard,
    RwLockUpgradableReadGuard,
    MappedRwLockReadGuard,
    MappedRwLockWriteGuard
);
