//! Making and freeing per-CPU or per-thread storage.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use cpulocal::percpu::Percpu;
use cpulocal::CpuLocal;
use thread_local::ThreadLocal;

use super::Role;

/// One allocate, first-touch, free cycle.
pub trait AllocImpl {
    /// The row's name.
    const NAME: &'static str;
    /// Ours or a peer.
    const ROLE: Role;
    /// Allocates, touches the calling thread's copy, frees.
    fn cycle();
}

/// `Percpu::alloc(8)` and its drop (`percpu_free`).
#[derive(Debug)]
pub struct PercpuAlloc;

impl AllocImpl for PercpuAlloc {
    const NAME: &'static str = "Percpu::alloc(8)+free";
    const ROLE: Role = Role::Ours;
    #[inline]
    fn cycle() {
        drop(black_box(Percpu::alloc(8).expect("Percpu::alloc(8)")));
    }
}

/// `CpuLocal::<AtomicU64>::new`, the first `get`, the drop.
#[derive(Debug)]
pub struct CpuLocalNew;

impl AllocImpl for CpuLocalNew {
    const NAME: &'static str = "CpuLocal::new+get+drop";
    const ROLE: Role = Role::Ours;
    #[inline]
    fn cycle() {
        let c = black_box(CpuLocal::<AtomicU64>::new());
        black_box(c.get().load(Ordering::Relaxed));
    }
}

/// `ThreadLocal::<AtomicU64>::new`, the first `get_or`, the drop.
#[derive(Debug)]
pub struct ThreadLocalNew;

impl AllocImpl for ThreadLocalNew {
    const NAME: &'static str = "ThreadLocal::new+get_or+drop";
    const ROLE: Role = Role::Peer;
    #[inline]
    fn cycle() {
        let t = black_box(ThreadLocal::<AtomicU64>::new());
        black_box(t.get_or(|| AtomicU64::new(0)).load(Ordering::Relaxed));
    }
}
