//! [`Counter`]: a per-CPU event counter (NetBSD's per-CPU evcnt).

use std::fmt;

use crate::ops::PercpuU64;

/// A counter whose updates touch only the current CPU's 8 bytes.
///
/// With the rseq backend on x86_64, [`add`](Self::add) is a restartable
/// sequence ending in a plain `add` (no lock prefix); elsewhere it is an
/// atomic add on the current CPU's word. [`sum`](Self::sum) walks every CPU.
/// Arithmetic wraps, so adding on one CPU and subtracting on another sums
/// correctly. Eight bytes per CPU, unpadded: each CPU's word lives in that
/// CPU's own region (a [`PercpuU64`] underneath).
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
pub struct Counter {
    words: PercpuU64,
}

impl Counter {
    /// A counter at zero.
    ///
    /// # Panics
    /// If per-CPU memory cannot be had; see [`Counter::try_new`].
    pub fn new() -> Counter {
        Counter::try_new().unwrap_or_else(|e| panic!("Counter: {e}"))
    }

    /// A counter at zero, or the reason per-CPU memory could not be had.
    pub fn try_new() -> Result<Counter, crate::AllocError> {
        Ok(Counter { words: PercpuU64::try_new()? })
    }

    /// Adds `n` (wrapping) to the current CPU's count.
    #[inline]
    pub fn add(&self, n: u64) {
        self.words.add(n);
    }

    /// Adds one.
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

    /// The total over every CPU. Updates racing with it are either in it or
    /// not; with no concurrent updates it is exact.
    pub fn sum(&self) -> u64 {
        self.words.sum()
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
        self.words.reset();
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counter").field("sum", &self.sum()).finish()
    }
}
