//! The periodic writer: one thread that wants the write lock once per
//! period while reader threads read as fast as they can (a configuration
//! reloader in a busy server).
//!
//! The writer keeps a schedule of due times, one per period, from the common
//! start. It sleeps until the next due time (with the thread's timer slack
//! set to the minimum, so that the timer, not the lock, decides little),
//! takes the write lock and notes how long `write()` took to hand it the
//! lock. A write that overruns its period does not make the writer catch
//! up: once the writer is a whole period or more behind, the due times it
//! missed are dropped, and it writes at once for the period it is in. So
//! each write belongs to a distinct period, and *writes done / writes
//! requested* is the share of periods that got their write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use serde::Serialize;

use crate::peers::RwLockImpl;

/// How long after the window the readers are stopped if the writer is
/// still not done.
pub const STARVED_WRITER_GRACE: Duration = Duration::from_secs(1);

/// One run of the periodic writer.
#[derive(Clone, Debug)]
pub struct WriterSample {
    /// Reader threads.
    pub readers: usize,
    /// Read lock + unlock pairs done by all readers together.
    pub reads: u64,
    /// From the common start (the writer's) until the readers were told to
    /// stop: at least `window` less one period (when the writer's last write
    /// was due), at most `window` plus [`STARVED_WRITER_GRACE`] (and the
    /// time to wake up).
    pub elapsed: Duration,
    /// Periods in the window: one write was wanted in each.
    pub requested: u64,
    /// For each write done, nanoseconds from the call to `write()` to the
    /// lock in hand, in the order done.
    pub latencies_ns: Vec<u64>,
}

/// Runs one writer that wants to write every `period` for `window`, against
/// `readers` reader threads that read `lock` until the writer is done.
///
/// The writer's first write is due one period after the start; its last
/// due time is at most `window` after it, so `window / period` (rounded
/// down) writes are requested.
pub fn run<L: RwLockImpl<u64>>(
    lock: &L,
    readers: usize,
    period: Duration,
    window: Duration,
) -> WriterSample {
    assert!(!period.is_zero(), "the period must be positive");
    let start_line = Barrier::new(readers + 2);
    let stop = CachePadded::new(AtomicBool::new(false));
    let reads = CachePadded::new(AtomicU64::new(0));
    let (latencies_ns, elapsed) = thread::scope(|s| {
        for _ in 0..readers {
            let (start_line, stop, reads) = (&start_line, &stop, &reads);
            s.spawn(move || {
                start_line.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..16 {
                        lock.read(|v| std::hint::black_box(*v));
                    }
                    n += 16;
                }
                reads.fetch_add(n, Ordering::Relaxed);
            });
        }
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let writer = s.spawn(|| {
            fine_timer_slack();
            start_line.wait();
            let start = Instant::now();
            let latencies = write_on_schedule(lock, start, period, window);
            drop(done_tx);
            (start, latencies)
        });
        start_line.wait();
        // Returns when the writer is done (or has panicked). A lock that
        // starves its writer gets its readers stopped a while after the
        // window, which lets the writer finish instead of hanging the run.
        let _ = done_rx.recv_timeout(window + STARVED_WRITER_GRACE);
        stop.store(true, Ordering::Relaxed);
        let stopped = Instant::now();
        let (start, latencies_ns) = writer.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        // The writer's start is the common start: the readers passed the
        // same barrier.
        let elapsed = stopped.saturating_duration_since(start);
        // Leaving the scope joins the readers, which publish their counts.
        (latencies_ns, elapsed)
    });
    WriterSample {
        readers,
        reads: reads.load(Ordering::Relaxed),
        elapsed,
        requested: requested(period, window),
        latencies_ns,
    }
}

/// Writes wanted in `window`: one per whole period.
pub fn requested(period: Duration, window: Duration) -> u64 {
    (window.as_nanos() / period.as_nanos().max(1)) as u64
}

/// The writer's loop; returns each write's latency in nanoseconds.
fn write_on_schedule<L: RwLockImpl<u64>>(
    lock: &L,
    start: Instant,
    period: Duration,
    window: Duration,
) -> Vec<u64> {
    let end = start + window;
    let mut latencies = Vec::with_capacity(requested(period, window).min(1 << 20) as usize);
    let mut due = start + period;
    while due <= end {
        let now = Instant::now();
        if now < due {
            thread::sleep(due - now);
        }
        let called = Instant::now();
        let waited = lock.write(|v| {
            let waited = called.elapsed();
            *v += 1;
            waited
        });
        latencies.push(u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX));
        due += period;
        let now = Instant::now();
        if now >= due + period {
            // A whole period or more behind: drop the periods that passed
            // without a write; the next write is for the period `now` is in.
            let behind = (now - due).as_nanos() / period.as_nanos();
            due += period * u32::try_from(behind).unwrap_or(u32::MAX);
        }
    }
    latencies
}

/// Asks the kernel to wake this thread's sleeps on time rather than up to
/// 50 µs late (the default timer slack), so that a 100 µs period is not
/// lost to the timer. Best effort.
fn fine_timer_slack() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_TIMERSLACK takes an integer argument and changes
        // only this thread's timer slack; no memory is passed.
        let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    }
}

/// The figures of one cell: writes done and write latency over every
/// repetition pooled; the read throughput is in the row's `Stats`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WriterFigures {
    /// The writer's period, microseconds.
    pub period_us: f64,
    /// Writes wanted: one per period, over every repetition.
    pub requested: u64,
    /// Writes done.
    pub done: u64,
    /// `done / requested`, percent.
    pub done_pct: f64,
    /// Median time from calling `write()` to the lock in hand, ns.
    pub latency_p50_ns: Option<u64>,
    /// 99th percentile of the same, ns.
    pub latency_p99_ns: Option<u64>,
    /// The longest, ns.
    pub latency_max_ns: Option<u64>,
}

impl WriterFigures {
    /// Pools `samples` (all with the same period).
    pub fn of(period: Duration, samples: &[WriterSample]) -> WriterFigures {
        let requested: u64 = samples.iter().map(|s| s.requested).sum();
        let mut all: Vec<u64> =
            samples.iter().flat_map(|s| s.latencies_ns.iter().copied()).collect();
        all.sort_unstable();
        let done = all.len() as u64;
        WriterFigures {
            period_us: period.as_secs_f64() * 1e6,
            requested,
            done,
            done_pct: if requested == 0 { 0.0 } else { done as f64 * 100.0 / requested as f64 },
            latency_p50_ns: percentile(&all, 50.0),
            latency_p99_ns: percentile(&all, 99.0),
            latency_max_ns: all.last().copied(),
        }
    }
}

/// The `p`th percentile of `sorted` (ascending) by nearest rank: the
/// smallest value with at least `p`% of the values at or below it.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn requested_counts_whole_periods() {
        let ms = Duration::from_millis;
        assert_eq!(requested(ms(1), ms(10)), 10);
        assert_eq!(requested(ms(3), ms(10)), 3);
        assert_eq!(requested(ms(20), ms(10)), 0);
        assert_eq!(requested(Duration::from_micros(100), ms(100)), 1000);
    }

    #[test]
    fn figures_pool_repetitions() {
        let sample = |requested, latencies_ns: Vec<u64>| WriterSample {
            readers: 2,
            reads: 0,
            elapsed: Duration::from_millis(10),
            requested,
            latencies_ns,
        };
        let f = WriterFigures::of(
            Duration::from_micros(100),
            &[sample(4, vec![40, 10, 30]), sample(4, vec![20, 1000])],
        );
        assert_eq!((f.requested, f.done), (8, 5));
        assert_eq!(f.done_pct, 62.5);
        assert_eq!(f.period_us, 100.0);
        assert_eq!(f.latency_p50_ns, Some(30));
        assert_eq!(f.latency_p99_ns, Some(1000));
        assert_eq!(f.latency_max_ns, Some(1000));
        let none = WriterFigures::of(Duration::from_millis(1), &[sample(0, vec![])]);
        assert_eq!((none.done_pct, none.latency_p99_ns), (0.0, None));
    }
}
