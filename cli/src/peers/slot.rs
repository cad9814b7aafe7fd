//! Reaching "my" copy of a value: the current CPU's or the current thread's.

use std::sync::atomic::{AtomicU64, Ordering};

use cpulocal::{CpuLocal, LockedCpuLocal};
use thread_local::ThreadLocal;

use super::Role;

/// A value with one copy per CPU or per thread.
pub trait SlotImpl: Send + Sync {
    /// The row's name.
    const NAME: &'static str;
    /// Ours or a peer.
    const ROLE: Role;
    /// Every copy zero.
    fn new() -> Self;
    /// Finds this CPU's or thread's copy and reads it (through the lock,
    /// where there is one).
    fn access(&self) -> u64;
}

/// `CpuLocal::<AtomicU64>::get`, then a relaxed load.
#[derive(Debug)]
pub struct OursGet(CpuLocal<AtomicU64>);

impl SlotImpl for OursGet {
    const NAME: &'static str = "CpuLocal::get";
    const ROLE: Role = Role::Ours;
    fn new() -> Self {
        OursGet(CpuLocal::new())
    }
    #[inline]
    fn access(&self) -> u64 {
        self.0.get().load(Ordering::Relaxed)
    }
}

/// `LockedCpuLocal::<u64>::lock`, a read, and the unlock.
#[derive(Debug)]
pub struct OursLock(LockedCpuLocal<u64>);

impl SlotImpl for OursLock {
    const NAME: &'static str = "LockedCpuLocal::lock+unlock";
    const ROLE: Role = Role::Ours;
    fn new() -> Self {
        OursLock(LockedCpuLocal::new())
    }
    #[inline]
    fn access(&self) -> u64 {
        *self.0.lock()
    }
}

/// `ThreadLocal::<AtomicU64>::get_or`, then a relaxed load.
#[derive(Debug)]
pub struct ThreadLocalGetOr(ThreadLocal<AtomicU64>);

impl SlotImpl for ThreadLocalGetOr {
    const NAME: &'static str = "ThreadLocal::get_or";
    const ROLE: Role = Role::Peer;
    fn new() -> Self {
        ThreadLocalGetOr(ThreadLocal::new())
    }
    #[inline]
    fn access(&self) -> u64 {
        self.0.get_or(|| AtomicU64::new(0)).load(Ordering::Relaxed)
    }
}
