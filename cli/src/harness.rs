//! The one harness every implementation runs through.
//!
//! A measurement starts `threads` threads together (a [`Barrier`]), lets them
//! run the operation in a loop for a fixed time slice, and counts each
//! thread's operations. Threads are not pinned: the scheduler places them,
//! as it would in the user's program. A cell (one implementation at one
//! thread count) is measured several times and the median reported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use serde::Serialize;

/// One measurement.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Threads that ran the operation.
    pub threads: usize,
    /// Operations done by all of them together.
    pub ops: u64,
    /// From the common start to the last thread's stop.
    pub elapsed: Duration,
}

impl Sample {
    /// Total throughput, millions of operations per second.
    pub fn mops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Runs an operation on `threads` threads for about `slice`.
///
/// Each thread calls `make(thread_index)` once to build its operation (per
/// thread state lives in that closure), waits for the others, then calls the
/// operation in batches of `batch` until told to stop. A stop is noticed
/// between batches only, so keep `batch * op time` well below `slice`.
pub fn run<M, G>(threads: usize, slice: Duration, batch: u64, make: &M) -> Sample
where
    M: Fn(usize) -> G + Sync,
    G: FnMut(),
{
    assert!(threads > 0 && batch > 0);
    let start_line = Barrier::new(threads + 1);
    let stop = CachePadded::new(AtomicBool::new(false));
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (start_line, stop) = (&start_line, &stop);
                s.spawn(move || {
                    let mut op = make(t);
                    start_line.wait();
                    let mut ops = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..batch {
                            op();
                        }
                        ops += batch;
                    }
                    ops
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        thread::sleep(slice);
        stop.store(true, Ordering::Relaxed);
        let ops = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .sum();
        Sample { threads, ops, elapsed: start.elapsed() }
    })
}

/// The figures of one cell: the median of its samples, and their spread.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    /// Nanoseconds per operation per thread at the median throughput:
    /// elapsed x threads / operations.
    pub ns_per_op_per_thread: f64,
    /// Median total throughput, millions of operations per second.
    pub mops_total: f64,
    /// (max - min) / median of the throughput samples, in percent.
    pub spread_pct: f64,
    /// Every sample's throughput, Mops/s, in the order measured.
    pub samples_mops: Vec<f64>,
    /// Operations counted over all samples.
    pub ops: u64,
}

impl Stats {
    /// The median and spread of `samples` (at least one, all with the same
    /// thread count).
    pub fn of(samples: &[Sample]) -> Stats {
        assert!(!samples.is_empty());
        let threads = samples[0].threads;
        let samples_mops: Vec<f64> = samples.iter().map(Sample::mops).collect();
        let mut sorted = samples_mops.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median =
            if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        let median = median.max(1e-12);
        Stats {
            ns_per_op_per_thread: threads as f64 * 1e3 / median,
            mops_total: median,
            spread_pct: (sorted[n - 1] - sorted[0]) / median * 100.0,
            samples_mops,
            ops: samples.iter().map(|s| s.ops).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn counts_every_operation() {
        let done = AtomicU64::new(0);
        let s = run(3, Duration::from_millis(5), 8, &|_| {
            || {
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert_eq!(s.threads, 3);
        assert_eq!(s.ops, done.load(Ordering::Relaxed));
        assert!(s.ops > 0 && s.elapsed >= Duration::from_millis(5));
    }

    #[test]
    fn median_and_spread() {
        let sample = |ops| Sample { threads: 2, ops, elapsed: Duration::from_secs(1) };
        let st = Stats::of(&[sample(3_000_000), sample(1_000_000), sample(2_000_000)]);
        assert_eq!(st.mops_total, 2.0);
        assert_eq!(st.ns_per_op_per_thread, 1000.0);
        assert_eq!(st.spread_pct, 100.0);
        assert_eq!(st.ops, 6_000_000);
    }
}
