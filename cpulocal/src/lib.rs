//! Per-CPU storage for Rust: NetBSD's percpu(9) in user space.
//!
//! A per-CPU value exists once for every CPU: a thread updates the copy of
//! the CPU it runs on, so threads on different CPUs never contend for a
//! cache line, and a reader walks every copy. On Linux the CPU id comes from
//! the kernel's rseq area and the per-CPU updates of [`Counter`] and
//! [`ops`] are restartable sequences (plain instructions, no lock prefix);
//! every fast path has a portable fallback chosen at run time.
//!
//! # What is in it
//!
//! - [`cpu`]: which CPU the thread is on ([`cpu::current`]), how many CPU
//!   ids exist ([`cpu::count`]), which backend answers ([`cpu::backend`]),
//!   and affinity helpers.
//! - [`percpu`]: percpu(9)'s untyped surface: [`Percpu`](percpu::Percpu)
//!   bytes that exist once per CPU (`alloc`, `getref`, `get_remote`,
//!   `foreach`), and [`percpu::stats`].
//! - [`CpuLocal<T>`]: a typed value per CPU shared by the threads on it
//!   (`get` gives `&T`); [`LockedCpuLocal<T>`]: one behind a per-CPU lock
//!   (`lock` gives `&mut T`). Both can be `static`s. The [`cpu_local`]
//!   module holds their iterators and guard.
//! - [`Counter`]: a per-CPU event counter whose `add` is a restartable
//!   sequence (a plain `add`) on Linux x86_64.
//! - [`evcnt`]: event counters by group and name (NetBSD's evcnt(9)), read
//!   as a `vmstat -e` table, as Prometheus text, over HTTP (feature `http`),
//!   through the `metrics` facade (feature `metrics`), or from another
//!   process with `cpulocal stat PID`.
//! - [`RwLock<T>`]: a distributed reader/writer lock: readers touch only
//!   their own CPU's counts; writers pay a `membarrier`.
//!   With feature `lock_api`, `RawRwLock` is the same lock as a
//!   `lock_api::RawRwLock`, and `LockApiRwLock<T>` a `lock_api::RwLock`.
//! - [`ops`]: typed per-CPU words and free lists for building your own
//!   structures: [`PercpuU64`](ops::PercpuU64) and
//!   [`PercpuStack`](ops::PercpuStack), with operations on the current
//!   CPU and on a given one.
//! - [`xcall`]: run a function on a chosen CPU, or on all of them.
//!
//! ```
//! use cpulocal::{Counter, CpuLocal, LockedCpuLocal};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! static BYTES: CpuLocal<AtomicU64> = CpuLocal::new();
//! static RECENT: LockedCpuLocal<Vec<u32>> = LockedCpuLocal::new();
//!
//! let requests = Counter::new();
//! requests.inc();
//! BYTES.get().fetch_add(512, Ordering::Relaxed);
//! RECENT.lock().push(200);
//! assert_eq!(requests.sum(), 1);
//! assert_eq!(BYTES.iter().map(|(_cpu, b)| b.load(Ordering::Relaxed)).sum::<u64>(), 512);
//! ```
//!
//! # Environment variables
//!
//! Each is read once, the first time it matters. They exist for tests and
//! benchmarks; a program does not need them. An unknown value of
//! `CPULOCAL_BACKEND`, `CPULOCAL_POSSIBLE_CPUS` or `CPULOCAL_RWLOCK_MODE` is reported on standard
//! error and ignored, as is one of `CPULOCAL_MEMBARRIER` (which also takes
//! `1`, `on`, `yes`, `true`: the default). Names are read in any case
//! (`RSEQ`, `Central`).
//!
//! | variable | values | effect |
//! |---|---|---|
//! | `CPULOCAL_BACKEND` | `rseq` (default), `getcpu`, `fallback` | where CPU ids come from ([`cpu::Backend`]). If the one asked for is unavailable, the next one down the list is used. |
//! | `CPULOCAL_MEMBARRIER` | `0`, `off`, `no`, `false` | [`RwLock`] readers use a full fence instead of relying on the writer's `membarrier` (the fallback used where `membarrier` is missing). |
//! | `CPULOCAL_RWLOCK_MODE` | `central`, `per-cpu` | [`RwLock`] readers use that mode (from the lock's first write on) instead of the one its writers measure as faster. |
//! | `CPULOCAL_POSSIBLE_CPUS` | `1` to `65536` | pretend that many CPU ids are possible ([`cpu::count`]), to simulate a larger or smaller machine. Below the real count, CPUs the kernel reports fall outside the per-CPU arrays; not for production use. |
#![warn(missing_docs, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

mod arena;
mod counter;
pub mod cpu;
pub mod cpu_local;
pub mod evcnt;
pub mod ops;
pub mod percpu;
mod region;
mod rwlock;
mod sys;
pub mod xcall;

pub use counter::Counter;
pub use cpu_local::{CpuLocal, CpuLocalGuard, LockedCpuLocal};
pub use percpu::AllocError;
#[cfg(all(feature = "lock_api", not(loom)))]
pub use rwlock::lock_api::{
    LockApiRwLock, LockApiRwLockReadGuard, LockApiRwLockUpgradableReadGuard,
    LockApiRwLockWriteGuard, RawRwLock,
};
pub use rwlock::{
    MappedRwLockReadGuard, MappedRwLockWriteGuard, RwLock, RwLockReadGuard,
    RwLockUpgradableReadGuard, RwLockWriteGuard,
};

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
