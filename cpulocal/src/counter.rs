//! [`Counter`]: a per-CPU event counter (NetBSD's per-CPU evcnt).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::{self, Place};
use crate::percpu::Percpu;
use crate::sys;

/// A counter whose updates touch only the current CPU's 8 bytes.
///
/// With the rseq backend on x86_64, [`add`](Self::add) is a restartable
/// sequence ending in a plain `add` (no lock prefix); elsewhere it is an
/// atomic add on the current CPU's word. [`sum`](Self::sum) walks every CPU.
/// Arithmetic wraps, so adding on one CPU and subtracting on another sums
/// correctly.
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
    words: Percpu,
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
        Ok(Counter { words: Percpu::alloc_aligned(8, 8)? })
    }

    #[inline(always)]
    fn word(&self, slot: usize) -> &AtomicU64 {
        // SAFETY: every slot holds 8 zero-initialized bytes aligned to 8
        // that live as long as `self`.
        unsafe { AtomicU64::from_ptr(self.words.slot(slot).cast()) }
    }

    /// Adds `n` (wrapping) to the current CPU's count.
    #[inline]
    pub fn add(&self, n: u64) {
        match cpu::place() {
            // SAFETY: `area` is this thread's; every slot's word is valid;
            // with Place::Rseq, CPU slots are only updated by sequences.
            Place::Rseq(area) => unsafe { sys::rseq::percpu_add(area, self.words.base(), n) },
            Place::Slot(slot) => {
                self.word(slot).fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts `n` (wrapping).
    #[inline]
    pub fn sub(&self, n: u64) {
        self.add(n.wrapping_neg());
    }

    /// The total over every CPU. Updates racing with it are either in it or
    /// not; with no concurrent updates it is exact.
    pub fn sum(&self) -> u64 {
        (0..cpu::slots())
            .fold(0u64, |acc, slot| acc.wrapping_add(self.word(slot).load(Ordering::Relaxed)))
    }

    /// Sets the counter to zero.
    pub fn reset(&mut self) {
        for slot in 0..cpu::slots() {
            self.word(slot).store(0, Ordering::Relaxed);
        }
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
