//! The workloads: each runs every implementation of one peer trait at every
//! thread count through [`harness::run`] and fills a [`WorkloadReport`].

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::MemKind;
use crate::harness::{self, Sample, Stats};
use crate::peers::{
    AllocImpl, CounterImpl, CpuLocalNew, OursCounter, OursGet, OursLock, OursRwLock,
    ParkingLotRwLock, PercpuAlloc, RawRseq, Role, RwLockImpl, ShardedRwLock, SharedAtomic,
    SlotImpl, StdRwLock, StripedAtomic, ThreadLocalCounter, ThreadLocalGetOr, ThreadLocalNew,
};
use crate::report::{Row, Summary, WorkloadReport};

/// What to run, and for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Time per measurement.
    pub slice: Duration,
    /// Measurements per cell.
    pub reps: usize,
    /// Thread counts, ascending.
    pub threads: Vec<usize>,
    /// Counters and threads of the memory workload.
    pub memory: (usize, usize),
}

impl Plan {
    /// Where the goals are judged: two threads as the issue tracker set
    /// them, or if not measured the fewest threads above one.
    fn goal_threads(&self) -> Option<usize> {
        if self.threads.contains(&2) {
            return Some(2);
        }
        self.threads.iter().copied().find(|&t| t > 1)
    }

    /// Measurements for `impls` implementations at every thread count.
    fn cells(&self, impls: usize) -> u64 {
        (impls * self.threads.len() * self.reps) as u64
    }
}

/// The progress bar on stderr (hidden when stderr is not a terminal).
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    /// The workload running now, shown before each message.
    workload: Cell<&'static str>,
}

impl Progress {
    /// A bar for `total` measurements.
    pub fn new(total: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{bar:24.cyan/blue} {pos:>3}/{len} {elapsed:>3} {wide_msg}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        bar.set_style(style);
        Progress { bar, workload: Cell::new("") }
    }

    /// Names the workload the next messages are about.
    pub fn workload(&self, id: &'static str) {
        self.workload.set(id);
    }

    fn start(&self, msg: String) {
        self.bar.set_message(format!("{}: {msg}", self.workload.get()));
    }

    fn step(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Prints `text` on stdout without tearing the bar.
    pub fn print(&self, text: &str) {
        use std::io::Write;
        self.bar.suspend(|| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        });
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// One workload of the report.
#[derive(Debug)]
pub struct Workload {
    /// The name `--filter` matches and the report shows.
    pub id: &'static str,
    /// What one operation is.
    pub title: &'static str,
    /// How many progress steps it takes.
    pub steps: fn(&Plan) -> u64,
    /// Runs it.
    pub run: fn(&Workload, &Plan, &Progress) -> WorkloadReport,
}

/// Every workload, in report order.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        id: "counter-add",
        title: "add(1) to one counter from every thread",
        steps: |p| p.cells(5),
        run: counter_add,
    },
    Workload {
        id: "counter-sum-x1000",
        title: "sum() of each of 1,000 counters, after N threads (all alive at once) added to each",
        steps: |p| p.cells(2),
        run: counter_sum,
    },
    Workload {
        id: "rwlock-read",
        title: "read lock + unlock",
        steps: |p| p.cells(4),
        run: |wl, p, g| rwlock_mix(wl, p, g, None),
    },
    Workload {
        id: "rwlock-write-0.1pct",
        title: "read lock + unlock, and a write lock + unlock every 1,000th operation",
        steps: |p| p.cells(4),
        run: |wl, p, g| rwlock_mix(wl, p, g, Some(1000)),
    },
    Workload {
        id: "rwlock-write-1pct",
        title: "read lock + unlock, and a write lock + unlock every 100th operation",
        steps: |p| p.cells(4),
        run: |wl, p, g| rwlock_mix(wl, p, g, Some(100)),
    },
    Workload {
        id: "rwlock-write-idle-readers",
        title: "one writer's write lock + unlock while N reader threads, each having read once, sit idle",
        steps: |p| p.cells(4),
        run: write_idle_readers,
    },
    Workload {
        id: "cpulocal-get",
        title: "find this CPU's (or thread's) copy and read it",
        steps: |p| p.cells(3),
        run: cpulocal_get,
    },
    Workload {
        id: "alloc",
        title: "allocate, touch this thread's copy, free (one thread)",
        steps: |p| 3 * p.reps as u64,
        run: alloc,
    },
    Workload {
        id: "metrics-counter",
        title: "metrics::counter!(\"bench_requests\").increment(1) from every thread, per recorder",
        steps: |p| p.cells(crate::peers::metrics::RECORDERS),
        run: |wl, p, g| crate::peers::metrics::run(wl, p, &|n, t, op| measure(p, g, n, t, 64, &op)),
    },
    Workload {
        id: "memory",
        title: "resident memory of many counters, each touched once by every thread",
        steps: |_| 2,
        run: memory,
    },
];

/// Measures one cell `plan.reps` times.
fn measure<M, G>(
    plan: &Plan,
    progress: &Progress,
    what: &str,
    threads: usize,
    batch: u64,
    make: &M,
) -> Stats
where
    M: Fn(usize) -> G + Sync,
    G: FnMut(),
{
    let samples: Vec<Sample> = (0..plan.reps)
        .map(|rep| {
            let s = if threads == 1 { "" } else { "s" };
            progress.start(format!("{what}, {threads} thread{s} ({}/{})", rep + 1, plan.reps));
            let sample = harness::run(threads, plan.slice, batch, make);
            progress.step(1);
            sample
        })
        .collect();
    Stats::of(&samples)
}

fn skip_all(
    w: &mut WorkloadReport,
    plan: &Plan,
    progress: &Progress,
    name: &'static str,
    role: Role,
    why: &str,
) {
    for &t in &plan.threads {
        w.skip(name, role, t, why);
    }
    progress.step(plan.cells(1));
}

// ---------------------------------------------------------------- counters

fn counter_add(wl: &Workload, plan: &Plan, progress: &Progress) -> WorkloadReport {
    let mut w = WorkloadReport::new(wl.id, wl.title);
    counter_add_rows::<OursCounter>(&mut w, plan, progress);
    counter_add_rows::<RawRseq>(&mut w, plan, progress);
    counter_add_rows::<SharedAtomic>(&mut w, plan, progress);
    counter_add_rows::<StripedAtomic>(&mut w, plan, progress);
    counter_add_rows::<ThreadLocalCounter>(&mut w, plan, progress);
    w.summarize_throughput();
    let at = plan.goal_threads();
    w.goal_within(OursCounter::NAME, RawRseq::NAME, 1.3, at);
    w.goal_faster(OursCounter::NAME, SharedAtomic::NAME, 10.0, at);
    w
}

fn counter_add_rows<C: CounterImpl>(w: &mut WorkloadReport, plan: &Plan, progress: &Progress) {
    let counter = match C::new() {
        Ok(c) => CachePadded::new(c),
        Err(why) => return skip_all(w, plan, progress, C::NAME, C::ROLE, &why),
    };
    let mut added = 0;
    for &t in &plan.threads {
        let stats = measure(plan, progress, C::NAME, t, 256, &|_| || counter.add(1));
        added += stats.ops;
        w.push(C::NAME, C::ROLE, t, stats);
    }
    let sum = counter.sum();
    if sum != added {
        w.notes.push(format!("{}: sum() is {sum} after {added} adds of 1", C::NAME));
    }
}

fn counter_sum(wl: &Workload, plan: &Plan, progress: &Progress) -> WorkloadReport {
    let mut w = WorkloadReport::new(wl.id, wl.title);
    w.time_label = "us/op";
    w.time_scale = 1e-3;
    counter_sum_rows::<OursCounter>(&mut w, plan, progress);
    counter_sum_rows::<ThreadLocalCounter>(&mut w, plan, progress);
    w.summarize_throughput();
    w.notes.push("one thread sums; N threads added to every counter first and have exited".into());
    w
}

const SUM_COUNTERS: usize = 1000;

fn counter_sum_rows<C: CounterImpl>(w: &mut WorkloadReport, plan: &Plan, progress: &Progress) {
    for &t in &plan.threads {
        let counters: Vec<C> = match (0..SUM_COUNTERS).map(|_| C::new()).collect() {
            Ok(c) => c,
            Err(why) => {
                w.skip(C::SUM_NAME, C::ROLE, t, &why);
                progress.step(plan.reps as u64);
                continue;
            }
        };
        // All threads alive at once, so that none reuses another's slot.
        let all_added = Barrier::new(t);
        thread::scope(|s| {
            for _ in 0..t {
                s.spawn(|| {
                    counters.iter().for_each(|c| c.add(1));
                    all_added.wait();
                });
            }
        });
        if let Some(bad) = counters.iter().map(C::sum).find(|&s| s != t as u64) {
            w.notes.push(format!("{}: a sum() is {bad} after {t} threads added 1", C::SUM_NAME));
        }
        let stats = measure(plan, progress, C::SUM_NAME, 1, 1, &|_| {
            || {
                black_box(counters.iter().fold(0u64, |acc, c| acc.wrapping_add(c.sum())));
            }
        });
        w.push(C::SUM_NAME, C::ROLE, t, stats);
    }
}

// ---------------------------------------------------------------- rwlocks

fn rwlock_mix(
    wl: &Workload,
    plan: &Plan,
    progress: &Progress,
    write_every: Option<u64>,
) -> WorkloadReport {
    let mut w = WorkloadReport::new(wl.id, wl.title);
    rwlock_rows::<OursRwLock<u64>>(&mut w, plan, progress, write_every);
    rwlock_rows::<StdRwLock<u64>>(&mut w, plan, progress, write_every);
    rwlock_rows::<ParkingLotRwLock<u64>>(&mut w, plan, progress, write_every);
    rwlock_rows::<ShardedRwLock<u64>>(&mut w, plan, progress, write_every);
    w.summarize_throughput();
    if write_every.is_none() {
        let (at, ours) = (plan.goal_threads(), OursRwLock::<u64>::NAME);
        w.goal_faster(ours, ShardedRwLock::<u64>::NAME, 3.0, at);
        w.goal_faster(ours, ParkingLotRwLock::<u64>::NAME, 20.0, at);
    }
    w
}

fn rwlock_rows<L: RwLockImpl<u64>>(
    w: &mut WorkloadReport,
    plan: &Plan,
    progress: &Progress,
    write_every: Option<u64>,
) {
    let lock = &CachePadded::new(L::new(0));
    for &t in &plan.threads {
        let stats = match write_every {
            None => measure(plan, progress, L::NAME, t, 64, &|_| {
                || {
                    lock.read(|v| black_box(*v));
                }
            }),
            Some(period) => measure(plan, progress, L::NAME, t, 64, &|thread| {
                // Threads write at staggered points of their own count.
                let mut until_write = 1 + (thread as u64 * 37) % period;
                move || {
                    until_write -= 1;
                    if until_write == 0 {
                        until_write = period;
                        lock.write(|v| *v += 1);
                    } else {
                        lock.read(|v| black_box(*v));
                    }
                }
            }),
        };
        w.push(L::NAME, L::ROLE, t, stats);
    }
}

fn write_idle_readers(wl: &Workload, plan: &Plan, progress: &Progress) -> WorkloadReport {
    let mut w = WorkloadReport::new(wl.id, wl.title);
    w.threads_label = "readers";
    w.time_label = "us/write";
    w.time_scale = 1e-3;
    write_idle_rows::<OursRwLock<u64>>(&mut w, plan, progress);
    write_idle_rows::<StdRwLock<u64>>(&mut w, plan, progress);
    write_idle_rows::<ParkingLotRwLock<u64>>(&mut w, plan, progress);
    write_idle_rows::<ShardedRwLock<u64>>(&mut w, plan, progress);
    w.summarize_throughput();
    w
}

fn write_idle_rows<L: RwLockImpl<u64>>(w: &mut WorkloadReport, plan: &Plan, progress: &Progress) {
    let lock = CachePadded::new(L::new(0));
    for &readers in &plan.threads {
        let samples: Vec<Sample> = (0..plan.reps)
            .map(|rep| {
                progress.start(format!(
                    "{}, writer with {readers} idle readers ({}/{})",
                    L::NAME,
                    rep + 1,
                    plan.reps
                ));
                let (have_read, finished) = (Barrier::new(readers + 1), Barrier::new(readers + 1));
                let sample = thread::scope(|s| {
                    for _ in 0..readers {
                        s.spawn(|| {
                            lock.read(|v| black_box(*v));
                            have_read.wait();
                            finished.wait();
                        });
                    }
                    have_read.wait();
                    let sample = harness::run(1, plan.slice, 1, &|_| || lock.write(|v| *v += 1));
                    finished.wait();
                    sample
                });
                progress.step(1);
                sample
            })
            .collect();
        w.push(L::NAME, L::ROLE, readers, Stats::of(&samples));
    }
}

// ---------------------------------------------------------------- CpuLocal

fn cpulocal_get(wl: &Workload, plan: &Plan, progress: &Progress) -> WorkloadReport {
    let mut w = WorkloadReport::new(wl.id, wl.title);
    slot_rows::<OursGet>(&mut w, plan, progress);
    slot_rows::<OursLock>(&mut w, plan, progress);
    slot_rows::<ThreadLocalGetOr>(&mut w, plan, progress);
    w.summarize_throughput();
    w
}

fn slot_rows<S: SlotImpl>(w: &mut WorkloadReport, plan: &Plan, progress: &Progress) {
    let slot = CachePadded::new(S::new());
    for &t in &plan.threads {
        let stats = measure(plan, progress, S::NAME, t, 256, &|_| {
            || {
                black_box(slot.access());
            }
        });
        w.push(S::NAME, S::ROLE, t, stats);
    }
}

fn alloc(wl: &Workload, plan: &Plan, progress: &Progress) -> WorkloadReport {
    let mut w = WorkloadReport::new(wl.id, wl.title);
    alloc_row::<PercpuAlloc>(&mut w, plan, progress);
    alloc_row::<CpuLocalNew>(&mut w, plan, progress);
    alloc_row::<ThreadLocalNew>(&mut w, plan, progress);
    w.summarize_throughput();
    w
}

fn alloc_row<A: AllocImpl>(w: &mut WorkloadReport, plan: &Plan, progress: &Progress) {
    let stats = measure(plan, progress, A::NAME, 1, 16, &|_| A::cycle);
    w.push(A::NAME, A::ROLE, 1, stats);
}

// ---------------------------------------------------------------- memory

fn memory(wl: &Workload, plan: &Plan, progress: &Progress) -> WorkloadReport {
    let mut w = WorkloadReport::new(wl.id, wl.title);
    let (counters, threads) = plan.memory;
    let sides = [
        (MemKind::Ours, "Counter", Role::Ours),
        (MemKind::Peer, ThreadLocalCounter::NAME, Role::Peer),
    ];
    for (kind, name, role) in sides {
        progress.start(format!("{name}, {counters} counters x {threads} threads"));
        match crate::memory::measure(kind, counters, threads) {
            Ok(m) => w.rows.push(Row {
                name,
                role,
                threads,
                speed: None,
                memory: Some(m),
                skipped: None,
            }),
            Err(why) => w.skip(name, role, threads, &why),
        }
        progress.step(1);
    }
    let bytes =
        |role| w.rows.iter().find(|r| r.role == role)?.memory.as_ref().map(|m| m.resident_bytes);
    if let (Some(ours), Some(peer)) = (bytes(Role::Ours), bytes(Role::Peer)) {
        w.summaries.push(Summary {
            ours: "Counter",
            threads,
            best_peer: ThreadLocalCounter::NAME,
            ratio: peer as f64 / ours.max(1) as f64,
            metric: "memory",
        });
    }
    w.notes.push(format!(
        "measured in a child process: resident set size with {threads} idle threads alive, then \
         after creating {counters} counters and every thread adding 1 to each (threads still \
         alive, spread over every CPU so each CPU's copy of ours is touched)"
    ));
    w
}
