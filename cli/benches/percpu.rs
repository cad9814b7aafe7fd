//! Criterion benchmarks of the per-CPU primitives, single-threaded: the
//! fixed cost of each operation. Run with `cargo bench -p cpulocal-cli`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use cpulocal::percpu::Percpu;
use cpulocal::{Counter, CpuLocal, LockedCpuLocal};
use criterion::{criterion_group, criterion_main, Criterion};
use thread_local::ThreadLocal;

fn cpu_identity(c: &mut Criterion) {
    c.bench_function("cpu::current", |b| b.iter(|| black_box(cpulocal::cpu::current())));
}

fn cpu_local(c: &mut Criterion) {
    let shared = CpuLocal::<AtomicU64>::new();
    c.bench_function("CpuLocal::get + fetch_add", |b| {
        b.iter(|| shared.get().fetch_add(1, Ordering::Relaxed))
    });
    let locked = LockedCpuLocal::<u64>::new();
    c.bench_function("LockedCpuLocal::lock + add", |b| b.iter(|| *locked.lock() += 1));
    let tl = ThreadLocal::<AtomicU64>::new();
    c.bench_function("ThreadLocal::get_or + fetch_add", |b| {
        b.iter(|| tl.get_or(Default::default).fetch_add(1, Ordering::Relaxed))
    });
}

fn percpu(c: &mut Criterion) {
    let p = Percpu::alloc(8).unwrap();
    c.bench_function("Percpu::getref", |b| b.iter(|| black_box(p.getref().as_ptr())));
    c.bench_function("Percpu::alloc(8) + free", |b| {
        b.iter(|| drop(black_box(Percpu::alloc(8).unwrap())))
    });
    // `new` allocates nothing: the first `get` allocates and builds.
    c.bench_function("CpuLocal::<AtomicU64>::new + get + drop", |b| {
        b.iter(|| {
            let c = black_box(CpuLocal::<AtomicU64>::new());
            black_box(c.get());
        })
    });
}

fn counter(c: &mut Criterion) {
    let counter = Counter::new();
    c.bench_function("Counter::add", |b| b.iter(|| counter.add(black_box(1))));
    let shared = AtomicU64::new(0);
    c.bench_function("AtomicU64::fetch_add", |b| {
        b.iter(|| shared.fetch_add(black_box(1), Ordering::Relaxed))
    });
    let counters: Vec<Counter> = (0..1000).map(|_| Counter::new()).collect();
    c.bench_function("Counter::sum x1000", |b| {
        b.iter(|| counters.iter().map(Counter::sum).fold(0u64, u64::wrapping_add))
    });
}

criterion_group!(benches, cpu_identity, cpu_local, percpu, counter);
criterion_main!(benches);
