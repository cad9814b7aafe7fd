//! Event counters: `add` from every thread, `sum` now and then.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use thread_local::ThreadLocal;

use super::{RawRseq, Role};

/// A counter many threads add to.
pub trait CounterImpl: Send + Sync + Sized {
    /// The row's name when adding.
    const NAME: &'static str;
    /// The row's name when summing.
    const SUM_NAME: &'static str = Self::NAME;
    /// Ours, the limit, or a peer.
    const ROLE: Role;
    /// A counter at zero, or why this implementation cannot run here.
    fn new() -> Result<Self, String>;
    /// Adds `n`.
    fn add(&self, n: u64);
    /// The total so far.
    fn sum(&self) -> u64;
}

/// `cpulocal::Counter`.
#[derive(Debug)]
pub struct OursCounter(cpulocal::Counter);

impl CounterImpl for OursCounter {
    const NAME: &'static str = "Counter::add";
    const SUM_NAME: &'static str = "Counter::sum";
    const ROLE: Role = Role::Ours;
    fn new() -> Result<Self, String> {
        cpulocal::Counter::try_new().map(OursCounter).map_err(|e| e.to_string())
    }
    #[inline]
    fn add(&self, n: u64) {
        self.0.add(n);
    }
    fn sum(&self) -> u64 {
        self.0.sum()
    }
}

impl CounterImpl for RawRseq {
    const NAME: &'static str = "raw rseq add";
    const ROLE: Role = Role::Limit;
    fn new() -> Result<Self, String> {
        RawRseq::new()
    }
    #[inline]
    fn add(&self, n: u64) {
        RawRseq::add(self, n);
    }
    fn sum(&self) -> u64 {
        RawRseq::sum(self)
    }
}

/// One `AtomicU64` every thread adds to.
#[derive(Debug)]
pub struct SharedAtomic(CachePadded<AtomicU64>);

impl CounterImpl for SharedAtomic {
    const NAME: &'static str = "shared AtomicU64";
    const ROLE: Role = Role::Peer;
    fn new() -> Result<Self, String> {
        Ok(SharedAtomic(CachePadded::new(AtomicU64::new(0))))
    }
    #[inline]
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn sum(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One padded `AtomicU64` per CPU, picked with `sched_getcpu()`: the usual
/// hand-rolled striped counter.
#[derive(Debug)]
pub struct StripedAtomic(Box<[CachePadded<AtomicU64>]>);

impl CounterImpl for StripedAtomic {
    const NAME: &'static str = "AtomicU64 stripes by CPU";
    const ROLE: Role = Role::Peer;
    fn new() -> Result<Self, String> {
        let stripes = crate::machine::possible_cpus().unwrap_or_else(crate::machine::online_cpus);
        Ok(StripedAtomic((0..stripes).map(|_| CachePadded::new(AtomicU64::new(0))).collect()))
    }
    #[inline]
    fn add(&self, n: u64) {
        let stripe = current_cpu() % self.0.len();
        self.0[stripe].fetch_add(n, Ordering::Relaxed);
    }
    fn sum(&self) -> u64 {
        self.0.iter().fold(0, |acc, s| acc.wrapping_add(s.load(Ordering::Relaxed)))
    }
}

#[cfg(target_os = "linux")]
#[inline]
fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions; it returns -1 on failure.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).unwrap_or(0)
}

#[cfg(not(target_os = "linux"))]
#[inline]
fn current_cpu() -> usize {
    0
}

/// `thread_local::ThreadLocal<AtomicU64>`: one word per thread that ever
/// added, summed by walking them all.
#[derive(Debug)]
pub struct ThreadLocalCounter(ThreadLocal<AtomicU64>);

impl CounterImpl for ThreadLocalCounter {
    const NAME: &'static str = "ThreadLocal<AtomicU64>";
    const SUM_NAME: &'static str = "ThreadLocal<AtomicU64> iter sum";
    const ROLE: Role = Role::Peer;
    fn new() -> Result<Self, String> {
        Ok(ThreadLocalCounter(ThreadLocal::new()))
    }
    #[inline]
    fn add(&self, n: u64) {
        self.0.get_or_default().fetch_add(n, Ordering::Relaxed);
    }
    fn sum(&self) -> u64 {
        self.0.iter().fold(0, |acc, w| acc.wrapping_add(w.load(Ordering::Relaxed)))
    }
}
