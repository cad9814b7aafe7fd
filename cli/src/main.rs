//! `cpulocal`: a short demo until the benchmark report lands.
use std::time::Instant;

fn main() {
    let c = cpulocal::Counter::new();
    let n = 50_000_000u64;
    let t = Instant::now();
    for _ in 0..n {
        c.inc();
    }
    let el = t.elapsed();
    println!(
        "backend {} cpus {} sum {} {:.2} ns/add",
        cpulocal::cpu::backend(),
        cpulocal::cpu::count(),
        c.sum(),
        el.as_nanos() as f64 / n as f64
    );
}
