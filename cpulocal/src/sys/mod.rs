//! Everything that talks to the operating system or the processor.
//!
//! One module per platform, picked by a single `cfg` switch, as std and
//! parking_lot do: `linux` (rseq, `getcpu`, `membarrier`, `mmap`,
//! `sched_setaffinity`, futex) and `fallback` (portable std-only code for
//! every other target, and for Miri). Nothing above this module uses `asm!`
//! or `libc`.
//!
//! Each platform module provides the same items:
//!
//! - `possible_cpus() -> Option<usize>`: the number of possible CPU ids, when
//!   the platform knows it exactly (every id the kernel can report is below it);
//! - `configured_cpus() -> usize`: a best-effort CPU count for when it does not;
//! - `rseq`: the per-thread rseq area (`area()`, `cpu_id()`), restartable
//!   per-CPU operations and whether they exist (`HAS_PERCPU_OPS`);
//! - `getcpu() -> Option<usize>`;
//! - `MAX_UNIT_SHIFT` / `MIN_UNIT_SHIFT`: the largest and smallest per-CPU
//!   region (log2 bytes) a reservation tries, largest first;
//! - `Reservation`: address space reserved up front, committed in pieces, and
//!   given back page by page (`release`);
//! - `fork_generation()`: a number that changes in every forked child;
//! - `at_fork(before, after)`: handlers around `fork` (no-op elsewhere);
//! - `runnable_threads()`: the threads runnable system-wide and the CPUs
//!   online, where the platform says;
//! - `affinity`: the calling thread's allowed CPUs, pinning;
//! - `membarrier`: the asymmetric process-wide fence, if the kernel has it;
//! - `futex_wait` / `futex_wake` on an `AtomicU32`.

#[cfg(all(target_os = "linux", not(miri)))]
mod linux;
#[cfg(all(target_os = "linux", not(miri)))]
pub(crate) use linux::*;

#[cfg(not(all(target_os = "linux", not(miri))))]
mod fallback;
#[cfg(not(all(target_os = "linux", not(miri))))]
pub(crate) use fallback::*;

use std::sync::atomic::{AtomicU32, Ordering};

/// log2 of the bytes of each CPU's region, fixed when the regions are
/// reserved (before any per-CPU object exists) and read by every per-CPU
/// address computation, the restartable sequences included.
static CURRENT_UNIT_SHIFT: AtomicU32 = AtomicU32::new(MAX_UNIT_SHIFT);

/// The current log2 size of a CPU's region. See [`set_unit_shift`].
#[inline(always)]
pub(crate) fn unit_shift() -> u32 {
    CURRENT_UNIT_SHIFT.load(Ordering::Relaxed)
}

/// Fixes the region size. Called once, with the lock that reserves the
/// regions held, before any per-CPU object is handed out: every thread that
/// can see an object was synchronised with its allocation, hence with this.
pub(crate) fn set_unit_shift(shift: u32) {
    debug_assert!((MIN_UNIT_SHIFT..=MAX_UNIT_SHIFT).contains(&shift));
    CURRENT_UNIT_SHIFT.store(shift, Ordering::Relaxed);
}

/// Nanoseconds on a monotonic clock since the process first asked: the
/// clock of the lock's windows and of the regions' remembered refusal.
pub(crate) fn monotonic_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(EPOCH.get_or_init(std::time::Instant::now).elapsed().as_nanos())
        .unwrap_or(u64::MAX)
}
