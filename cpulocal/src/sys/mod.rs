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
//! - `Reservation`: address space reserved up front and committed in pieces;
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
