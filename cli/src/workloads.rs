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
use crate::machine;
use crate::peers::{
    AllocImpl, CounterImpl, CpuLocalNew, NoLock, OursCounter, OursGet, OursLock, OursRwLock,
    ParkingLotRwLock, PercpuAlloc, RawRseq, Role, RwLockImpl, ShardedRwLock, SharedAtomic,
    SlotImpl, StdRwLock, StripedAtomic, ThreadLocalCounter, ThreadLocalGetOr, ThreadLocalNew,
};
use crate::periodic::{self, WriterFigures, WriterSample};
use crate::report::{num, Row, Summary, TransferProbe, WorkloadReport};

/// What to run, and for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Time per measurement.
    pub slice: Duration,
    /// Measurements per cell.
    pub reps: usize,
    /// Thread counts, ascending.
    pub threads: Vec<usize>,
    /// Thread counts of the rwlock read/write mixes, ascending.
    pub rwlock_threads: Vec<usize>,
    /// CPUs this process may use: the periodic writer runs one and four
    /// reader threads per CPU, and "one thread per CPU" goals are judged
    /// here.
    pub cpus: usize,
    /// Counters and threads of the memory workload.
    pub memory: (usize, usize),
    /// The periodic writer's fewest writes per measurement.
    pub periodic_writes: u32,
}

impl Plan {
    /// Where the goals are judged: two threads as the issue tracker set
    /// them, or if not measured the fewest threads above one.
    fn goal_threads(&self) -> Option<usize> {
        goal_threads_in(&self.threads)
    }

    /// The thread counts when none are given: 1, one per CPU and four per
    /// CPU for every workload; the rwlock mixes add 2 and 8, the counts the
    /// lock's targets are stated at.
    pub fn default_threads(cpus: usize) -> (Vec<usize>, Vec<usize>) {
        let threads = sorted(vec![1, cpus, 4 * cpus]);
        let rwlock = sorted(vec![1, 2, 8, cpus, 4 * cpus]);
        (threads, rwlock)
    }

    /// Planned milliseconds of `impls` implementations at every thread
    /// count: the unit of the progress bar.
    pub fn cells(&self, impls: usize) -> u64 {
        (impls * self.threads.len() * self.reps) as u64 * self.slice_ms()
    }

    /// [`Plan::cells`] for the rwlock mixes' thread counts.
    pub fn rwlock_cells(&self, impls: usize) -> u64 {
        (impls * self.rwlock_threads.len() * self.reps) as u64 * self.slice_ms()
    }

    /// The slice in whole milliseconds (at least 1).
    pub fn slice_ms(&self) -> u64 {
        self.slice.as_millis().max(1) as u64
    }

    /// The reader counts of the periodic writer: one and four per CPU.
    pub fn periodic_readers(&self) -> [usize; 2] {
        [self.cpus, 4 * self.cpus]
    }

    /// How long one measurement of the periodic writer lasts.
    pub fn periodic_window(&self, period: Duration) -> Duration {
        self.slice.max(period * self.periodic_writes)
    }

    /// Planned milliseconds of the periodic writer for `impls` peers.
    fn periodic_cost(&self, impls: usize, period: Duration) -> u64 {
        let ms = self.periodic_window(period).as_millis().max(1) as u64;
        (impls * 2 * self.reps) as u64 * ms
    }
}

/// 2 if `threads` has it, else the fewest above one.
fn goal_threads_in(threads: &[usize]) -> Option<usize> {
    if threads.contains(&2) {
        return Some(2);
    }
    threads.iter().copied().find(|&t| t > 1)
}

fn sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v.dedup();
    v
}

/// The progress bar on stderr (hidden when stderr is not a terminal).
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    /// The workload running now, shown before each message.
    workload: Cell<&'static str>,
}

impl Progress {
    /// A bar for `total` planned milliseconds of measurement.
    pub fn new(total: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{bar:24.cyan/blue} {percent:>3}% {elapsed:>3} gone, ~{eta} left  {wide_msg}",
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

    /// Advances the bar by `ms` planned milliseconds.
    fn step(&self, ms: u64) {
        self.bar.inc(ms);
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
    /// How long it is planned to take, in milliseconds (the progress bar's
    /// unit; [`Plan::cells`] computes it for the usual workloads).
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
        title: "read lock + unlock (0% writes)",
        steps: |p| p.rwlock_cells(5),
        run: |wl, p, g| rwlock_mix(wl, p, g, None),
    },
    Workload {
        id: "rwlock-write-0.01pct",
        title: "read lock + unlock, and a write lock + unlock every 10,000th operation",
        steps: |p| p.rwlock_cells(4),
        run: |wl, p, g| rwlock_mix(wl, p, g, Some(10_000)),
    },
    Workload {
        id: "rwlock-write-0.1pct",
        title: "read lock + unlock, and a write lock + unlock every 1,000th operation",
        steps: |p| p.rwlock_cells(4),
        run: |wl, p, g| rwlock_mix(wl, p, g, Some(1000)),
    },
    Workload {
        id: "rwlock-write-1pct",
        title: "read lock + unlock, and a write lock + unlock every 100th operation",
        steps: |p| p.rwlock_cells(4),
        run: |wl, p, g| rwlock_mix(wl, p, g, Some(100)),
    },
    Workload {
        id: "rwlock-write-10pct",
        title: "read lock + unlock, and a write lock + unlock every 10th operation",
        steps: |p| p.rwlock_cells(4),
        run: |wl, p, g| rwlock_mix(wl, p, g, Some(10)),
    },
    Workload {
        id: "rwlock-write-50pct",
        title: "read lock + unlock and write lock + unlock in turn",
        steps: |p| p.rwlock_cells(4),
        run: |wl, p, g| rwlock_mix(wl, p, g, Some(2)),
    },
    Workload {
        id: "rwlock-periodic-100us",
        title: "one writer wants the write lock every 100 us while reader threads read",
        steps: |p| p.periodic_cost(5, PERIODS[0]),
        run: |wl, p, g| periodic_writer(wl, p, g, PERIODS[0]),
    },
    Workload {
        id: "rwlock-periodic-1ms",
        title: "one writer wants the write lock every 1 ms while reader threads read",
        steps: |p| p.periodic_cost(5, PERIODS[1]),
        run: |wl, p, g| periodic_writer(wl, p, g, PERIODS[1]),
    },
    Workload {
        id: "rwlock-periodic-10ms",
        title: "one writer wants the write lock every 10 ms while reader threads read",
        steps: |p| p.periodic_cost(5, PERIODS[2]),
        run: |wl, p, g| periodic_writer(wl, p, g, PERIODS[2]),
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
        steps: |p| 3 * p.reps as u64 * p.slice_ms(),
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
        steps: |p| 2 * memory_cost_ms(p.memory),
        run: memory,
    },
];

/// The periodic writer's periods.
const PERIODS: [Duration; 3] =
    [Duration::from_micros(100), Duration::from_millis(1), Duration::from_millis(10)];

/// The progress bar's guess of how long one side of the memory workload
/// takes: about 1 s per 10 million counter touches, at least 100 ms.
fn memory_cost_ms((counters, threads): (usize, usize)) -> u64 {
    ((counters * threads) as u64 / 10_000).max(100)
}

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
            repetition(plan, progress, what, threads, rep, || {
                harness::run(threads, plan.slice, batch, make)
            })
        })
        .collect();
    Stats::of(&samples)
}

/// Runs repetition `rep` of `what` at `threads` threads, with the
/// progress bar told.
fn repetition(
    plan: &Plan,
    progress: &Progress,
    what: &str,
    threads: usize,
    rep: usize,
    run: impl FnOnce() -> Sample,
) -> Sample {
    let s = if threads == 1 { "" } else { "s" };
    progress.start(format!("{what}, {threads} thread{s} ({}/{})", rep + 1, plan.reps));
    let sample = run();
    progress.step(plan.slice_ms());
    sample
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
                progress.step(plan.reps as u64 * plan.slice_ms());
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
    let ours_lock = CachePadded::new(OursRwLock::<u64>::new(0));
    let std_lock = CachePadded::new(StdRwLock::<u64>::new(0));
    let parking_lot = CachePadded::new(ParkingLotRwLock::<u64>::new(0));
    let sharded = CachePadded::new(ShardedRwLock::<u64>::new(0));
    // The limit row only where there are no writes.
    let counters = write_every.is_none().then(|| match (OursCounter::new(), OursCounter::new()) {
        (Ok(a), Ok(b)) => Ok((CachePadded::new(a), CachePadded::new(b))),
        (Err(why), _) | (_, Err(why)) => Err(why),
    });
    let mut contenders = vec![rwlock_contender(&ours_lock, plan.slice, write_every)];
    match &counters {
        Some(Ok(counters)) => contenders.push(two_adds_contender(counters, plan.slice)),
        Some(Err(why)) => {
            for &t in &plan.rwlock_threads {
                w.skip(TWO_ADDS, Role::Limit, t, why);
            }
            progress.step(plan.rwlock_cells(1));
        }
        None => {}
    }
    contenders.push(rwlock_contender(&std_lock, plan.slice, write_every));
    contenders.push(rwlock_contender(&parking_lot, plan.slice, write_every));
    contenders.push(rwlock_contender(&sharded, plan.slice, write_every));
    measure_in_turns(&mut w, plan, progress, &contenders);
    w.summarize_throughput();
    let ours = OursRwLock::<u64>::NAME;
    w.goal_best_peer_everywhere(ours, 0.9);
    if write_every.is_none() {
        let one_per_cpu = plan.rwlock_threads.contains(&plan.cpus).then_some(plan.cpus);
        w.goal_faster(ours, ShardedRwLock::<u64>::NAME, 2.5, one_per_cpu);
        let at = goal_threads_in(&plan.rwlock_threads);
        w.goal_faster(ours, ParkingLotRwLock::<u64>::NAME, 20.0, at);
        w.goal_within_everywhere(ours, TWO_ADDS, 1.3);
        w.notes.push(format!(
            "limit: {TWO_ADDS} is the floor of a read lock + unlock on per-CPU counts: one add \
             to lock, one to unlock"
        ));
    }
    w.note_line_transfers();
    w
}

/// The limit row of the read workload.
const TWO_ADDS: &str = "two Counter::add";

/// One row of a comparison measured in turns: its name, its role, and one
/// repetition of its cell at a thread count.
struct Contender<'a> {
    name: &'static str,
    role: Role,
    sample: Box<dyn Fn(usize) -> Sample + 'a>,
}

/// Measures every contender at every rwlock thread count, one repetition
/// each in turn, so that whatever the machine does meanwhile (a VM whose
/// CPUs the host moves apart, another process) falls on each of them
/// alike; probes the cache-line hand-off before each round.
fn measure_in_turns(
    w: &mut WorkloadReport,
    plan: &Plan,
    progress: &Progress,
    contenders: &[Contender],
) {
    for &t in &plan.rwlock_threads {
        let mut samples: Vec<Vec<Sample>> = contenders.iter().map(|_| Vec::new()).collect();
        for rep in 0..plan.reps {
            let probe = machine::line_transfer_ns(machine::TRANSFER_ROUND_TRIPS);
            let mut ours = None;
            let mut best_peer = None::<f64>;
            for (c, out) in contenders.iter().zip(&mut samples) {
                let sample = repetition(plan, progress, c.name, t, rep, || (c.sample)(t));
                match c.role {
                    Role::Ours => ours = Some(sample.mops()),
                    Role::Peer => best_peer = Some(best_peer.unwrap_or(0.0).max(sample.mops())),
                    Role::Limit => {}
                }
                out.push(sample);
            }
            if let Some(ns) = probe {
                let ours_vs_best_peer = ours.zip(best_peer).map(|(o, p)| o / p.max(1e-9));
                w.line_transfers.push(TransferProbe { threads: t, ns, ours_vs_best_peer });
            }
        }
        for (c, out) in contenders.iter().zip(&samples) {
            w.push(c.name, c.role, t, Stats::of(out));
        }
    }
}

/// A lock's row of a read/write mix: every `write_every`th operation of
/// each thread is a write, the others reads (all reads if `None`).
fn rwlock_contender<L: RwLockImpl<u64>>(
    lock: &CachePadded<L>,
    slice: Duration,
    write_every: Option<u64>,
) -> Contender<'_> {
    let sample = move |t| match write_every {
        None => harness::run(t, slice, 64, &|_| {
            || {
                lock.read(|v| black_box(*v));
            }
        }),
        // A batch holds at most one write, so that a slow write delays the
        // end of a measurement by one write at most.
        Some(period) => harness::run(t, slice, period.min(64), &|thread| {
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
    Contender { name: L::NAME, role: L::ROLE, sample: Box::new(sample) }
}

/// Two `cpulocal::Counter::add`s on two counters: what a read lock and
/// unlock on per-CPU counts cannot go below.
fn two_adds_contender(
    counters: &(CachePadded<OursCounter>, CachePadded<OursCounter>),
    slice: Duration,
) -> Contender<'_> {
    let sample = move |t| {
        harness::run(t, slice, 64, &|_| {
            || {
                counters.0.add(1);
                counters.1.add(1);
            }
        })
    };
    Contender { name: TWO_ADDS, role: Role::Limit, sample: Box::new(sample) }
}

fn periodic_writer(
    wl: &Workload,
    plan: &Plan,
    progress: &Progress,
    period: Duration,
) -> WorkloadReport {
    let mut w = WorkloadReport::new(wl.id, wl.title);
    w.threads_label = "readers";
    periodic_rows::<OursRwLock<u64>>(&mut w, plan, progress, period);
    periodic_rows::<NoLock>(&mut w, plan, progress, period);
    periodic_rows::<StdRwLock<u64>>(&mut w, plan, progress, period);
    periodic_rows::<ParkingLotRwLock<u64>>(&mut w, plan, progress, period);
    periodic_rows::<ShardedRwLock<u64>>(&mut w, plan, progress, period);
    w.summarize_throughput();
    let ours = OursRwLock::<u64>::NAME;
    w.goal_writes_done(ours, 95.0);
    w.goal_write_p99_within(ours, ParkingLotRwLock::<u64>::NAME, 2.0);
    let window = plan.periodic_window(period);
    w.notes.push(format!(
        "{} ms x {} per cell, {} writes wanted in each; summaries compare read throughput; \
         write latency is from the call to write() to the lock in hand, over every repetition; \
         a write is missed when the writer wakes or gets the lock a period late: the no-lock \
         row shows what the timer and the scheduler alone allow",
        num(window.as_secs_f64() * 1e3),
        plan.reps,
        periodic::requested(period, window),
    ));
    w
}

fn periodic_rows<L: RwLockImpl<u64>>(
    w: &mut WorkloadReport,
    plan: &Plan,
    progress: &Progress,
    period: Duration,
) {
    let lock = CachePadded::new(L::new(0));
    let window = plan.periodic_window(period);
    for readers in plan.periodic_readers() {
        let samples: Vec<WriterSample> = (0..plan.reps)
            .map(|rep| {
                progress.start(format!(
                    "{}, writer with {readers} readers ({}/{})",
                    L::NAME,
                    rep + 1,
                    plan.reps
                ));
                let sample = periodic::run(&*lock, readers, period, window);
                progress.step(window.as_millis().max(1) as u64);
                sample
            })
            .collect();
        let reads: Vec<Sample> = samples
            .iter()
            .map(|s| Sample { threads: s.readers, ops: s.reads, elapsed: s.elapsed })
            .collect();
        let writer = WriterFigures::of(period, &samples);
        w.push_writer(L::NAME, L::ROLE, readers, Stats::of(&reads), writer);
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
                progress.step(plan.slice_ms());
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
    let bytes = crate::memory::estimate_bytes(counters, threads);
    progress.print(&format!(
        "\nmemory: about to start two child processes in turn, each with {threads} threads \
         touching {counters} counters; the larger (the per-thread peer) needs about {} MiB\n",
        num(bytes as f64 / (1 << 20) as f64)
    ));
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
                writer: None,
                skipped: None,
            }),
            Err(why) => w.skip(name, role, threads, &why),
        }
        progress.step(memory_cost_ms(plan.memory));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(slice_ms: u64, reps: usize, periodic_writes: u32) -> Plan {
        let (threads, rwlock_threads) = Plan::default_threads(2);
        Plan {
            slice: Duration::from_millis(slice_ms),
            reps,
            threads,
            rwlock_threads,
            cpus: 2,
            memory: (10, 2),
            periodic_writes,
        }
    }

    #[test]
    fn rwlock_mixes_add_2_and_8_threads_by_default() {
        assert_eq!(Plan::default_threads(2), (vec![1, 2, 8], vec![1, 2, 8]));
        assert_eq!(Plan::default_threads(1), (vec![1, 4], vec![1, 2, 4, 8]));
        assert_eq!(Plan::default_threads(16), (vec![1, 16, 64], vec![1, 2, 8, 16, 64]));
    }

    #[test]
    fn the_periodic_writer_runs_long_enough_for_its_writes() {
        let p = plan(100, 3, 50);
        assert_eq!(p.periodic_readers(), [2, 8]);
        assert_eq!(p.periodic_window(Duration::from_micros(100)), Duration::from_millis(100));
        assert_eq!(p.periodic_window(Duration::from_millis(10)), Duration::from_millis(500));
        // 4 locks x 2 reader counts x 3 repetitions x 500 ms.
        assert_eq!(p.periodic_cost(4, Duration::from_millis(10)), 12_000);
    }

    #[test]
    fn progress_counts_planned_milliseconds() {
        let p = plan(100, 3, 50);
        assert_eq!(p.cells(2), 2 * 3 * 3 * 100);
        assert_eq!(p.rwlock_cells(5), 5 * 3 * 3 * 100);
        // The default run, every workload, stays near a minute on 2 CPUs.
        let mut p = plan(100, 3, 50);
        p.memory = crate::args::Mode::Default.memory_size();
        let total: u64 = WORKLOADS.iter().map(|w| (w.steps)(&p)).sum();
        assert!((30_000..120_000).contains(&total), "{total} ms planned");
    }
}
