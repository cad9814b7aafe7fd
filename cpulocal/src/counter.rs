//! [`Counter`]: a per-CPU event counter (NetBSD's per-CPU evcnt).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::cpu;
use crate::ops::{LazyWords, Words};
use crate::percpu::AllocError;

/// A counter whose updates touch only the current CPU's 8 bytes.
///
/// With the rseq backend on x86_64, [`add`](Self::add) is a restartable
/// sequence ending in a plain `add` (no lock prefix); elsewhere it is an
/// atomic add on the current CPU's word. [`sum`](Self::sum) walks every CPU.
/// Arithmetic wraps, so adding on one CPU and subtracting on another sums
/// correctly. Eight bytes per CPU, unpadded: each CPU's word lives in that
/// CPU's own region.
///
/// ```
/// let hits = cpulocal::Counter::new();
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| (0..1000).for_each(|_| hits.inc()));
///     }
/// });
/// assert_eq!(hits.sum(), 4000);
/// ```
///
/// [`new`](Self::new) is a `const fn`, so a counter can be a `static`; its
/// per-CPU words are allocated on first use:
///
/// ```
/// use cpulocal::Counter;
///
/// static REQUESTS: Counter = Counter::new();
///
/// REQUESTS.inc();
/// assert_eq!(REQUESTS.sum(), 1);
/// ```
///
/// # When per-CPU memory cannot be had
///
/// If the first use cannot allocate the per-CPU words (the per-CPU regions
/// are full, or the system refuses memory), nothing panics: the update goes
/// to a single atomic word inside the counter instead, and the next update
/// tries to allocate again. [`sum`](Self::sum) includes that word;
/// [`alloc_failed`](Self::alloc_failed) tells that it holds part of the
/// count, and [`try_init`](Self::try_init) allocates up front and returns
/// the error.
///
/// A `Counter` itself is 16 bytes: the words' address and the fallback
/// word.
///
/// ```
/// assert!(std::mem::size_of::<cpulocal::Counter>() <= 16);
/// ```
pub struct Counter {
    words: LazyWords,
    /// What was counted while the per-CPU words could not be allocated.
    fallback: AtomicU64,
}

/// Serializes [`Counter::set`] and [`Counter::swap`] on every counter, so
/// that each reads the sum and adjusts it as one step with respect to the
/// others. `add` never takes it.
static ADJUST: Mutex<()> = Mutex::new(());

impl Counter {
    /// A counter at zero. Allocates nothing: the per-CPU words are
    /// allocated on first use.
    ///
    /// ```
    /// static ERRORS: cpulocal::Counter = cpulocal::Counter::new();
    /// assert_eq!(ERRORS.sum(), 0);
    /// ```
    pub const fn new() -> Counter {
        Counter { words: LazyWords::new(), fallback: AtomicU64::new(0) }
    }

    /// A counter at zero with its per-CPU words allocated now, or the reason
    /// they could not be.
    ///
    /// # Errors
    /// [`AllocError`] when the per-CPU regions have no room or the system
    /// refuses memory.
    ///
    /// ```
    /// let c = cpulocal::Counter::try_new().unwrap();
    /// assert!(!c.alloc_failed());
    /// ```
    pub fn try_new() -> Result<Counter, AllocError> {
        let counter = Counter::new();
        counter.try_init()?;
        Ok(counter)
    }

    /// Allocates the per-CPU words now if they are not yet, so that a
    /// program can report a failure at start-up rather than count in the
    /// fallback word later.
    ///
    /// # Errors
    /// [`AllocError`] when the per-CPU regions have no room or the system
    /// refuses memory. The counter still works (see the
    /// [type docs](Counter#when-per-cpu-memory-cannot-be-had)).
    ///
    /// ```
    /// static BYTES: cpulocal::Counter = cpulocal::Counter::new();
    /// BYTES.try_init().expect("per-CPU memory");
    /// ```
    pub fn try_init(&self) -> Result<(), AllocError> {
        self.words.get_or_alloc().map(drop)
    }

    /// Whether part of the count sits in the fallback word, because the
    /// per-CPU words could not be allocated when it was added (see the
    /// [type docs](Counter#when-per-cpu-memory-cannot-be-had)).
    ///
    /// ```
    /// let c = cpulocal::Counter::new();
    /// c.inc();
    /// assert!(!c.alloc_failed());
    /// ```
    pub fn alloc_failed(&self) -> bool {
        self.fallback.load(Ordering::Relaxed) != 0
    }

    /// Adds `n` (wrapping) to the current CPU's count.
    ///
    /// ```
    /// let c = cpulocal::Counter::new();
    /// c.add(40);
    /// c.add(2);
    /// assert_eq!(c.sum(), 42);
    /// ```
    #[inline]
    pub fn add(&self, n: u64) {
        if !self.words.add_inline(n) {
            self.add_slow(n);
        }
    }

    /// The first use, a thread's first update, and every update the inline
    /// path leaves to the general one (another backend, a CPU id beyond
    /// the count).
    #[cold]
    #[inline(never)]
    fn add_slow(&self, n: u64) {
        match self.words.get_or_try_alloc() {
            Some(words) => {
                words.add(n);
                cpu::arm_fast_path();
            }
            None => {
                self.fallback.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Adds one.
    ///
    /// ```
    /// let c = cpulocal::Counter::new();
    /// c.inc();
    /// assert_eq!(c.sum(), 1);
    /// ```
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts `n` (wrapping).
    ///
    /// ```
    /// let c = cpulocal::Counter::new();
    /// c.add(10);
    /// c.sub(3);
    /// assert_eq!(c.sum(), 7);
    /// ```
    #[inline]
    pub fn sub(&self, n: u64) {
        self.add(n.wrapping_neg());
    }

    #[inline]
    fn words(&self) -> Option<Words> {
        self.words.get()
    }

    /// The total over every CPU. Updates racing with it are either in it or
    /// not; with no concurrent updates it is exact.
    ///
    /// ```
    /// let c = cpulocal::Counter::new();
    /// std::thread::scope(|s| {
    ///     s.spawn(|| c.add(2));
    ///     s.spawn(|| c.add(3));
    /// });
    /// assert_eq!(c.sum(), 5);
    /// ```
    pub fn sum(&self) -> u64 {
        let fallback = self.fallback.load(Ordering::Relaxed);
        self.words().map_or(0, Words::sum).wrapping_add(fallback)
    }

    /// Sets the counter to `value`.
    ///
    /// It reads the sum and adds the difference, so updates racing with it
    /// land either before it (and are overwritten) or after it (and are
    /// kept). Calls of `set` and [`swap`](Self::swap) are serialized with
    /// each other by a process-wide lock; [`add`](Self::add) never waits for
    /// it.
    ///
    /// ```
    /// let c = cpulocal::Counter::new();
    /// c.add(5);
    /// c.set(100);
    /// c.inc();
    /// assert_eq!(c.sum(), 101);
    /// ```
    pub fn set(&self, value: u64) {
        self.swap(value);
    }

    /// Sets the counter to `value` and returns what it held.
    ///
    /// Nothing is lost or counted twice: every update racing with it is
    /// either in the returned value or stays in the counter, because the
    /// counter is adjusted by exactly the sum it returns. Serialized with
    /// other calls of `swap` and [`set`](Self::set); [`add`](Self::add)
    /// never waits for it.
    ///
    /// ```
    /// let c = cpulocal::Counter::new();
    /// c.add(7);
    /// assert_eq!(c.swap(1), 7);
    /// assert_eq!(c.sum(), 1);
    /// ```
    pub fn swap(&self, value: u64) -> u64 {
        let _serial = ADJUST.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.sum();
        self.add(value.wrapping_sub(old));
        old
    }

    /// Sets the counter to zero and returns what it held: a reporter that
    /// calls `take` each interval gets every update exactly once, even while
    /// other threads keep adding.
    ///
    /// ```
    /// let c = cpulocal::Counter::new();
    /// c.add(3);
    /// assert_eq!(c.take(), 3);
    /// c.inc();
    /// assert_eq!(c.take(), 1);
    /// assert_eq!(c.sum(), 0);
    /// ```
    pub fn take(&self) -> u64 {
        self.swap(0)
    }

    /// Each CPU's share, as `(cpu, value)` for every CPU id in ascending
    /// order, then `(cpu::count(), value)` for what was counted off the
    /// CPUs' words (by threads that could not run restartable sequences, or
    /// in the fallback word). The values' wrapping sum is [`sum`](Self::sum).
    ///
    /// A CPU's value is the wrapping sum of what was added there, including
    /// subtractions and the adjustments of [`set`](Self::set) and
    /// [`swap`](Self::swap), so one CPU's share can look negative (wrap
    /// around) while the total is right.
    ///
    /// ```
    /// let c = cpulocal::Counter::new();
    /// c.add(4);
    /// let shares: Vec<(usize, u64)> = c.per_cpu().collect();
    /// assert_eq!(shares.len(), cpulocal::cpu::count() + 1);
    /// // Shares wrap (see above): add them as `sum` does, wrapping.
    /// let total = shares.iter().fold(0u64, |t, &(_, v)| t.wrapping_add(v));
    /// assert_eq!(total, 4);
    /// ```
    pub fn per_cpu(&self) -> impl ExactSizeIterator<Item = (usize, u64)> + '_ {
        let words = self.words();
        let count = cpu::count();
        (0..count + 1).map(move |i| {
            let word = words.map_or(0, |w| w.load(i));
            if i == count {
                (i, word.wrapping_add(self.fallback.load(Ordering::Relaxed)))
            } else {
                (i, word)
            }
        })
    }

    /// Sets the counter to zero.
    ///
    /// ```
    /// let mut c = cpulocal::Counter::default();
    /// c.inc();
    /// c.reset();
    /// assert_eq!(format!("{c:?}"), "Counter { sum: 0 }");
    /// ```
    pub fn reset(&mut self) {
        if let Some(words) = self.words() {
            words.reset();
        }
        *self.fallback.get_mut() = 0;
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

impl From<u64> for Counter {
    /// A counter holding `value`.
    ///
    /// ```
    /// let c = cpulocal::Counter::from(41);
    /// c.inc();
    /// assert_eq!(c.sum(), 42);
    /// ```
    fn from(value: u64) -> Counter {
        let counter = Counter::new();
        if value != 0 {
            counter.add(value);
        }
        counter
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counter").field("sum", &self.sum()).finish()
    }
}
