//! The memory workload: resident bytes of many counters touched by many
//! threads, measured from a fresh child process (`cpulocal mem-child`).
//!
//! The child starts every thread first (64 KiB stacks) and reads its
//! resident set size with all of them alive and idle; then it creates the
//! counters, lets every thread add to every counter once, and reads it again
//! while all the threads are still alive (so the per-thread peer cannot reuse
//! the slots of exited threads). The difference is what the counters cost.
//!
//! Short-lived threads woken together tend to run on the waker's CPU, which
//! would touch only one CPU's copy of our counters; so thread `i` moves to
//! the `i mod n`th allowed CPU before it adds, and every CPU's copy is paid
//! for (our worst case). Both sides do the same.
//!
//! The resident size comes from `/proc/self/smaps_rollup` (exact), or
//! failing that `VmRSS` (approximate on recent kernels).

use std::process::{Command, Stdio};
use std::sync::{Barrier, OnceLock};
use std::thread;

use serde::{Deserialize, Serialize};

use crate::args::MemKind;
use crate::machine::resident_bytes;
use crate::peers::{CounterImpl, OursCounter, ThreadLocalCounter};
use crate::report::MemoryFigures;

/// Stack size of the child's threads.
const STACK: usize = 64 << 10;

/// What a child prints: the resident set size in bytes at each step.
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    counters: usize,
    threads: usize,
    rss_start: u64,
    rss_threads: u64,
    rss_created: u64,
    rss_touched: u64,
    sums_ok: bool,
}

/// `cpulocal mem-child KIND COUNTERS THREADS`: measures and prints one JSON
/// line. Returns the exit status.
pub fn child(kind: MemKind, counters: usize, threads: usize) -> u8 {
    let result = match kind {
        MemKind::Ours => child_run::<OursCounter>(counters, threads),
        MemKind::Peer => child_run::<ThreadLocalCounter>(counters, threads),
    };
    match serde_json::to_string(&result) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(why) => {
            eprintln!("cpulocal mem-child: {why}");
            1
        }
    }
}

/// Gives up at once: other threads may be waiting on a barrier that can no
/// longer fill, and this is a throwaway child process.
fn die(why: String) -> ! {
    eprintln!("cpulocal mem-child: {why}");
    std::process::exit(1)
}

fn child_run<C: CounterImpl>(counters: usize, threads: usize) -> ChildReport {
    let rss = || {
        resident_bytes()
            .unwrap_or_else(|| die("cannot read the resident set size from /proc/self".into()))
    };
    let rss_start = rss();
    let list: OnceLock<Vec<C>> = OnceLock::new();
    let (spawned, go, touched, done) = (
        Barrier::new(threads + 1),
        Barrier::new(threads + 1),
        Barrier::new(threads + 1),
        Barrier::new(threads + 1),
    );
    let cpus = cpulocal::cpu::allowed().unwrap_or_default();
    thread::scope(|s| {
        for t in 0..threads {
            let (list, spawned, go, touched, done) = (&list, &spawned, &go, &touched, &done);
            let cpu = (!cpus.is_empty()).then(|| cpus[t % cpus.len()]);
            let spawn = thread::Builder::new().stack_size(STACK).spawn_scoped(s, move || {
                spawned.wait();
                go.wait();
                if let Some(cpu) = cpu {
                    // Best effort: unpinned, the figure can only be lower.
                    let _ = cpulocal::cpu::set_affinity(&[cpu]);
                }
                for c in list.get().expect("counters are made before go") {
                    c.add(1);
                }
                touched.wait();
                done.wait();
            });
            if let Err(e) = spawn {
                die(format!("spawning thread {} of {threads}: {e}", t + 1));
            }
        }
        spawned.wait();
        let rss_threads = rss();
        let made: Result<Vec<C>, String> = (0..counters).map(|_| C::new()).collect();
        let _ = list.set(made.unwrap_or_else(|e| die(e)));
        let rss_created = rss();
        go.wait();
        touched.wait();
        let rss_touched = rss();
        done.wait();
        let sums_ok = list.get().is_some_and(|l| l.iter().all(|c| c.sum() == threads as u64));
        ChildReport { counters, threads, rss_start, rss_threads, rss_created, rss_touched, sums_ok }
    })
}

/// About how many bytes the larger child (the per-thread peer) makes
/// resident: `ThreadLocal` gives each counter a slot for every thread id up
/// to the next power of two (16 bytes each, plus its bucket table), and
/// every thread has a stack of up to [`STACK`]. Said before the workload
/// starts, so that nobody is surprised.
pub fn estimate_bytes(counters: usize, threads: usize) -> u64 {
    let per_counter = (threads + 1).next_power_of_two() as u64 * 16 + 700;
    counters as u64 * per_counter + threads as u64 * STACK as u64
}

/// Runs `cpulocal mem-child` for one side and returns its figures.
pub fn measure(kind: MemKind, counters: usize, threads: usize) -> Result<MemoryFigures, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let out = Command::new(exe)
        .args(["mem-child", kind.name(), &counters.to_string(), &threads.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start the child process: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("no message");
        return Err(format!("child process failed ({}): {last}", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let r: ChildReport = serde_json::from_str(line)
        .map_err(|e| format!("cannot read the child's report {line:?}: {e}"))?;
    if !r.sums_ok {
        return Err(format!("a counter's sum() was not {threads} after every thread added 1"));
    }
    let diff = |a: u64, b: u64| a as i64 - b as i64;
    let resident = diff(r.rss_touched, r.rss_threads);
    Ok(MemoryFigures {
        counters,
        threads,
        resident_bytes: resident,
        created_bytes: diff(r.rss_created, r.rss_threads),
        bytes_per_counter: resident as f64 / counters as f64,
        thread_bytes: diff(r.rss_threads, r.rss_start),
    })
}
