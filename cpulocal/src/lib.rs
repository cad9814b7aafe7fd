//! Per-CPU storage for Rust: NetBSD's percpu(9) in user space.
//!
//! - [`cpu`]: which CPU am I on, how many CPU ids exist, which backend.
//! - [`percpu::Percpu`]: untyped bytes that exist once per CPU.
//! - [`CpuLocal<T>`]: a typed value per CPU, shared (`get`) or locked (`lock`).
//! - [`Counter`]: a per-CPU event counter whose `add` is a restartable
//!   sequence (a plain `add`, no lock prefix) on Linux x86_64.
//! - [`xcall`]: run a function on a chosen CPU.
//! - [`evcnt`]: event counters by group and name (NetBSD's evcnt(9)), read
//!   as a `vmstat -e` table, as Prometheus text, over HTTP (feature `http`),
//!   through the `metrics` facade (feature `metrics`), or from another
//!   process with `cpulocal stat PID`.
//!
//! ```
//! use cpulocal::Counter;
//!
//! let requests = Counter::new();
//! requests.inc();
//! assert_eq!(requests.sum(), 1);
//! ```
#![warn(missing_docs, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

mod arena;
mod counter;
pub mod cpu;
mod cpu_local;
pub mod evcnt;
pub mod ops;
pub mod percpu;
mod region;
mod rwlock;
mod sys;
pub mod xcall;

pub use counter::Counter;
pub use cpu_local::{CpuLocal, CpuLocalGuard};
pub use percpu::AllocError;
pub use rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
