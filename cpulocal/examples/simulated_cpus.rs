//! What grows with the number of possible CPU ids, measured on whatever
//! machine this runs on by pretending it has more (`CPULOCAL_POSSIBLE_CPUS`).
//!
//! ```sh
//! cargo run --release -p cpulocal --example simulated_cpus
//! cargo run --release -p cpulocal --example simulated_cpus -- 64 256 1024 4096
//! ```
//!
//! Without arguments it measures the machine's own count and 64, 256 and
//! 1,024 possible CPU ids, each in a child process of its own (the count
//! is fixed when a process first asks for it), and prints one table. The
//! simulated CPUs never run anything: every per-CPU copy past the real CPUs
//! stays untouched by updates, so this shows the cost of the walks, the
//! clearing and the memory, not of contention.
//!
//! Timings are medians of a few short batches: on a shared or small machine
//! they are noisy, so read the growth across a row's neighbours, not the
//! digits.

use std::env;
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cpulocal::percpu::{self, Percpu};
use cpulocal::{cpu, Counter, CpuLocal, RwLock};

/// Objects in the allocation and memory measurements.
const OBJECTS: usize = 10_000;

/// Median time per call of `f`, in nanoseconds, over a few batches of at
/// least `batch` each.
fn ns_per_op(mut f: impl FnMut()) -> f64 {
    let batch = Duration::from_millis(20);
    let mut per = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < batch {
            for _ in 0..16 {
                f();
            }
            n += 16;
        }
        per.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    per.sort_by(f64::total_cmp);
    per[per.len() / 2]
}

/// `(VmRSS, VmPTE)` of this process in bytes, where `/proc` has them.
fn memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmPTE:")?))
}

/// Bytes of resident memory and page tables `f` added, per object.
fn memory_per_object(f: impl FnOnce()) -> Option<f64> {
    let (rss0, pte0) = memory()?;
    f();
    let (rss1, pte1) = memory()?;
    Some((rss1 + pte1).saturating_sub(rss0 + pte0) as f64 / OBJECTS as f64)
}

/// One row: measures this process (its `cpu::count()` is fixed by the
/// environment) and prints the figures, tab-separated.
fn measure() {
    // The first allocation reserves every slot's address space and commits
    // the first pages of each.
    let start = Instant::now();
    let first = Percpu::alloc(8).expect("first allocation");
    let first_alloc = start.elapsed().as_nanos() as f64;
    drop(first);

    let counter = Counter::new();
    counter.inc();
    let sum = ns_per_op(|| {
        black_box(counter.sum());
    });

    let values = CpuLocal::<AtomicU64>::new();
    values.get().fetch_add(1, Ordering::Relaxed);
    let iter = ns_per_op(|| {
        black_box(values.iter().map(|(_, v)| v.load(Ordering::Relaxed)).sum::<u64>());
    });

    // A write with no reader inside: the barrier and the walk over every
    // CPU's lock and unlock counts.
    let lock = RwLock::new(0u64);
    drop(lock.read());
    let write = ns_per_op(|| {
        *lock.write() += 1;
    });

    // Memory of fresh counters (above the high-water mark: nothing to
    // clear), each counted on this CPU and summed once.
    let mut counters = Vec::with_capacity(OBJECTS);
    let fresh = memory_per_object(|| {
        for _ in 0..OBJECTS {
            let c = Counter::new();
            c.inc();
            black_box(c.sum());
            counters.push(c);
        }
    });
    // Allocation in fresh space needs no clearing ...
    let mut objects: Vec<Percpu> = Vec::with_capacity(OBJECTS);
    let start = Instant::now();
    for _ in 0..OBJECTS {
        objects.push(Percpu::alloc(8).unwrap());
    }
    let alloc_fresh = start.elapsed().as_nanos() as f64 / OBJECTS as f64;
    drop(objects);
    drop(counters);
    // ... while reused space is cleared on every CPU, which makes its pages
    // resident on every CPU.
    let mut counters = Vec::with_capacity(OBJECTS);
    let reused = memory_per_object(|| {
        for _ in 0..OBJECTS {
            counters.push(Counter::new());
        }
    });
    drop(counters);
    let alloc_reused = ns_per_op(|| drop(black_box(Percpu::alloc(8).unwrap())));

    let fmt_mem = |m: Option<f64>| m.map_or_else(|| "n/a".to_owned(), |b| format!("{b:.0}"));
    println!(
        "{}\t{}\t{:.0}\t{:.0}\t{:.2}\t{:.1}\t{:.0}\t{:.0}\t{}\t{}\t{}",
        cpu::count(),
        cpu::backend(),
        sum,
        iter,
        write / 1000.0,
        first_alloc / 1000.0,
        alloc_fresh,
        alloc_reused,
        fmt_mem(fresh),
        fmt_mem(reused),
        percpu::stats().committed / 1024,
    );
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {online} CPUs usable, {} possible CPU ids; {} {}",
        cpu::count(),
        env::consts::OS,
        kernel.trim()
    )
}

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--row") {
        measure();
        return;
    }
    let mut counts: Vec<Option<usize>> = vec![None];
    if args.is_empty() {
        counts.extend([64, 256, 1024].map(Some));
    }
    for a in &args {
        match a.parse::<usize>() {
            Ok(n) if (1..=1 << 16).contains(&n) => counts.push(Some(n)),
            _ => {
                eprintln!("usage: simulated_cpus [COUNT ...]  (each 1 to 65536)");
                std::process::exit(2);
            }
        }
    }
    println!("machine: {}", machine());
    println!("each row a fresh process with CPULOCAL_POSSIBLE_CPUS set (the first: none)");
    println!(
        "cpus\tbackend\tsum ns\titer ns\twrite us\t1st alloc us\talloc ns\t\
         realloc ns\tB/counter\tB/reused\tcommitted KiB/CPU"
    );
    let exe = env::current_exe().expect("own path");
    for n in counts {
        let mut cmd = Command::new(&exe);
        cmd.arg("--row");
        // Writes with no reads at all run faster in the lock's central mode,
        // which it would switch to: keep the per-CPU counts, whose walk the
        // write column measures.
        cmd.env("CPULOCAL_RWLOCK_MODE", "per-cpu");
        match n {
            Some(n) => cmd.env("CPULOCAL_POSSIBLE_CPUS", n.to_string()),
            None => cmd.env_remove("CPULOCAL_POSSIBLE_CPUS"),
        };
        let out = cmd.output().expect("run a row");
        if !out.status.success() {
            eprintln!("row {n:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            std::process::exit(1);
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}
