//! Reader/writer locks, used through closures as in parking_lot's
//! `benchmark/src/bin/rwlock.rs`.

use std::sync::PoisonError;

use crossbeam_utils::sync::ShardedLock;

use super::Role;

/// A reader/writer lock around a `T`.
pub trait RwLockImpl<T>: Send + Sync {
    /// The row's name.
    const NAME: &'static str;
    /// Ours or a peer.
    const ROLE: Role;
    /// A lock holding `value`.
    fn new(value: T) -> Self;
    /// Runs `f` under a read lock.
    fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R;
    /// Runs `f` under the write lock.
    fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> R;
}

/// `cpulocal::RwLock`.
#[derive(Debug)]
pub struct OursRwLock<T>(cpulocal::RwLock<T>);

impl<T: Send + Sync> RwLockImpl<T> for OursRwLock<T> {
    const NAME: &'static str = "cpulocal::RwLock";
    const ROLE: Role = Role::Ours;
    fn new(value: T) -> Self {
        OursRwLock(cpulocal::RwLock::new(value))
    }
    #[inline]
    fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.read())
    }
    #[inline]
    fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.write())
    }
}

/// `std::sync::RwLock`.
#[derive(Debug)]
pub struct StdRwLock<T>(std::sync::RwLock<T>);

impl<T: Send + Sync> RwLockImpl<T> for StdRwLock<T> {
    const NAME: &'static str = "std::sync::RwLock";
    const ROLE: Role = Role::Peer;
    fn new(value: T) -> Self {
        StdRwLock(std::sync::RwLock::new(value))
    }
    #[inline]
    fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }
    #[inline]
    fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.write().unwrap_or_else(PoisonError::into_inner))
    }
}

/// `parking_lot::RwLock`.
#[derive(Debug)]
pub struct ParkingLotRwLock<T>(parking_lot::RwLock<T>);

impl<T: Send + Sync> RwLockImpl<T> for ParkingLotRwLock<T> {
    const NAME: &'static str = "parking_lot::RwLock";
    const ROLE: Role = Role::Peer;
    fn new(value: T) -> Self {
        ParkingLotRwLock(parking_lot::RwLock::new(value))
    }
    #[inline]
    fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.read())
    }
    #[inline]
    fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.write())
    }
}

/// `crossbeam_utils::sync::ShardedLock`: a read lock per shard, chosen by
/// thread.
#[derive(Debug)]
pub struct ShardedRwLock<T>(ShardedLock<T>);

impl<T: Send + Sync> RwLockImpl<T> for ShardedRwLock<T> {
    const NAME: &'static str = "crossbeam ShardedLock";
    const ROLE: Role = Role::Peer;
    fn new(value: T) -> Self {
        ShardedRwLock(ShardedLock::new(value))
    }
    #[inline]
    fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }
    #[inline]
    fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.write().unwrap_or_else(PoisonError::into_inner))
    }
}

/// No lock at all: reads load a word, writes store one. The periodic
/// writer's limit row: what the writer's timer and the scheduler allow on
/// this machine, before any lock adds its cost.
#[derive(Debug)]
pub struct NoLock(std::sync::atomic::AtomicU64);

impl RwLockImpl<u64> for NoLock {
    const NAME: &'static str = "no lock (timer and scheduler)";
    const ROLE: Role = Role::Limit;
    fn new(value: u64) -> Self {
        NoLock(std::sync::atomic::AtomicU64::new(value))
    }
    #[inline]
    fn read<R>(&self, f: impl FnOnce(&u64) -> R) -> R {
        f(&self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
    #[inline]
    fn write<R>(&self, f: impl FnOnce(&mut u64) -> R) -> R {
        use std::sync::atomic::Ordering::Relaxed;
        let mut v = self.0.load(Relaxed);
        let r = f(&mut v);
        self.0.store(v, Relaxed);
        r
    }
}
