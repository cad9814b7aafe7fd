//! What a run found, as tables on stdout and as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::harness::Stats;
use crate::machine::Machine;
use crate::peers::Role;
use crate::periodic::WriterFigures;

/// A cell whose repetitions spread by more than this (percent of the
/// median) is marked noisy.
pub const NOISY_SPREAD_PCT: f64 = 25.0;

/// Everything one run measured; `--json` writes this.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `cpulocal-cli`'s version.
    pub version: &'static str,
    /// `smoke`, `default` or `full`.
    pub mode: &'static str,
    /// Milliseconds per measurement.
    pub slice_ms: f64,
    /// Measurements per cell; the median is reported.
    pub reps: usize,
    /// The thread counts measured.
    pub threads: Vec<usize>,
    /// The thread counts of the rwlock read/write mixes.
    pub rwlock_threads: Vec<usize>,
    /// CPUs this process may use: the periodic writer's readers are one and
    /// four per CPU.
    pub cpus: usize,
    /// Where it ran.
    pub machine: Machine,
    /// `null` when the raw rseq limit ran, else why it could not.
    pub raw_rseq_unavailable: Option<String>,
    /// One entry per workload run.
    pub workloads: Vec<WorkloadReport>,
    /// Seconds the whole run took.
    pub wall_s: f64,
    /// Cells whose spread exceeded [`NOISY_SPREAD_PCT`]; `null` when too few
    /// repetitions were made to tell (fewer than 3).
    pub noisy_cells: Option<usize>,
    /// Cells with a spread, noisy or not (none with fewer than 3
    /// repetitions).
    pub cells_with_spread: usize,
}

/// How a report is printed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    /// Show the spread column (3 repetitions or more).
    pub spread: bool,
    /// A smoke run: figures are a check of the machinery, goals get no
    /// verdict.
    pub smoke: bool,
}

/// One workload: a row per implementation and thread count.
#[derive(Debug, Serialize)]
pub struct WorkloadReport {
    /// The name `--filter` matches.
    pub id: &'static str,
    /// What one operation is.
    pub title: &'static str,
    /// What the thread column counts.
    pub threads_label: &'static str,
    /// The time column's heading (`ns_per_op_per_thread` in the JSON is
    /// always nanoseconds).
    pub time_label: &'static str,
    /// Multiplier from nanoseconds to the time column's unit.
    #[serde(skip)]
    pub time_scale: f64,
    /// The measurements.
    pub rows: Vec<Row>,
    /// Ours against the best peer.
    pub summaries: Vec<Summary>,
    /// The targets the issue tracker set, met or not.
    pub goals: Vec<Goal>,
    /// Anything odd seen while measuring.
    pub notes: Vec<String>,
    /// Cache-line hand-offs between two CPUs probed while measuring, where
    /// the workload probes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub line_transfers: Vec<TransferProbe>,
}

/// One probe of [`crate::machine::line_transfer_ns`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TransferProbe {
    /// The thread count of the round of repetitions it preceded.
    pub threads: usize,
    /// One way, nanoseconds.
    pub ns: f64,
    /// Ours' throughput over the best peer's in that round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ours_vs_best_peer: Option<f64>,
}

/// One implementation at one thread count.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The implementation.
    pub name: &'static str,
    /// Ours, the limit, or a peer.
    pub role: Role,
    /// Threads (or readers, or touching threads; see `threads_label`).
    pub threads: usize,
    /// Time and throughput figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<Stats>,
    /// Memory figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryFigures>,
    /// The periodic writer's figures (then `speed` is the readers').
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer: Option<WriterFigures>,
    /// Why this implementation did not run here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Resident memory of many counters touched by many threads.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryFigures {
    /// How many counters.
    pub counters: usize,
    /// How many threads touched every one of them, all alive at once.
    pub threads: usize,
    /// Resident bytes the counters added, from creation through every
    /// thread's first touch (threads' own stacks excluded).
    pub resident_bytes: i64,
    /// Of those, what creating the counters cost before any touch.
    pub created_bytes: i64,
    /// `resident_bytes / counters`.
    pub bytes_per_counter: f64,
    /// Resident bytes of the idle threads themselves (not counted above).
    pub thread_bytes: i64,
}

/// Ours against the best peer at one thread count.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Our implementation.
    pub ours: &'static str,
    /// At this thread count.
    pub threads: usize,
    /// The best peer there.
    pub best_peer: &'static str,
    /// Above 1, ours is better: throughput ours / peer's, or for memory
    /// bytes peer's / ours.
    pub ratio: f64,
    /// `throughput` or `memory`.
    pub metric: &'static str,
}

/// A target, and whether this run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    /// What the target is.
    pub text: String,
    /// Where it is judged; for a goal judged at every thread count, where
    /// the worst value was.
    pub threads: Option<usize>,
    /// Whether the goal holds at every thread count, `value` being the
    /// worst of them.
    pub everywhere: bool,
    /// What was measured (same unit as `target`); `None` if it could not be.
    pub value: Option<f64>,
    /// `x` (a ratio) or `%`.
    pub unit: &'static str,
    /// The bound.
    pub target: f64,
    /// Whether `value` must be at least `target` (else at most).
    pub at_least: bool,
    /// Whether `value` is on the right side of `target`.
    pub met: Option<bool>,
    /// What the value was measured against, where that varies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against: Option<&'static str>,
}

impl WorkloadReport {
    /// An empty report with a time column in ns per operation per thread.
    pub fn new(id: &'static str, title: &'static str) -> WorkloadReport {
        WorkloadReport {
            id,
            title,
            threads_label: "threads",
            time_label: "ns/op/thread",
            time_scale: 1.0,
            rows: Vec::new(),
            summaries: Vec::new(),
            goals: Vec::new(),
            notes: Vec::new(),
            line_transfers: Vec::new(),
        }
    }

    /// Notes the range of the [`line_transfers`](Self::line_transfers)
    /// probes per thread count, how many were slow (over twice the fastest
    /// of this workload: a workload slow throughout shows none as slow),
    /// and ours' median ratio to the best peer in fast and slow rounds.
    pub fn note_line_transfers(&mut self) {
        let all = &self.line_transfers;
        let Some(fastest) = all.iter().map(|p| p.ns).reduce(f64::min) else {
            return;
        };
        let mut threads: Vec<usize> = all.iter().map(|p| p.threads).collect();
        threads.dedup();
        let ranges: Vec<String> = threads
            .iter()
            .map(|&t| {
                let ns = all.iter().filter(|p| p.threads == t).map(|p| p.ns);
                let (lo, hi) = ns.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
                format!("{t}: {lo:.0}-{hi:.0}")
            })
            .collect();
        let is_slow = |p: &TransferProbe| p.ns > 2.0 * fastest;
        let slow = all.iter().filter(|p| is_slow(p)).count();
        let mut note = format!(
            "implementations take turns, one repetition each; a cache line handed between two \
             CPUs before each round took (threads: ns) {}",
            ranges.join(", ")
        );
        if slow > 0 {
            note.push_str(&format!(
                "; {slow} of {} rounds ran with slow hand-offs (over twice the fastest), which \
                 every implementation of the round met",
                all.len()
            ));
            // Median (the lower, for an even count) of ours' ratio to the
            // best peer over the rounds at `t` threads with slow hand-offs or not.
            let median_ratio = |t: usize, slow: bool| {
                let mut r: Vec<f64> = all
                    .iter()
                    .filter(|p| p.threads == t && is_slow(p) == slow)
                    .filter_map(|p| p.ours_vs_best_peer)
                    .collect();
                r.sort_by(f64::total_cmp);
                r.get(r.len().wrapping_sub(1) / 2).map_or("-".to_string(), |v| format!("{v:.2}x"))
            };
            let split: Vec<String> = threads
                .iter()
                .map(|&t| format!("{t}: {} / {}", median_ratio(t, false), median_ratio(t, true)))
                .collect();
            if all.iter().any(|p| p.ours_vs_best_peer.is_some()) {
                note.push_str(&format!(
                    "; ours over the best peer, median of the fast / the slow rounds (threads: \
                     ratios) {}",
                    split.join(", ")
                ));
            }
        }
        self.notes.push(note);
    }

    /// Adds a measured row.
    pub fn push(&mut self, name: &'static str, role: Role, threads: usize, stats: Stats) {
        self.rows.push(Row {
            name,
            role,
            threads,
            speed: Some(stats),
            memory: None,
            writer: None,
            skipped: None,
        });
    }

    /// Adds a row of the periodic writer: `reads` is the readers'
    /// throughput, `writer` the writer's figures.
    pub fn push_writer(
        &mut self,
        name: &'static str,
        role: Role,
        readers: usize,
        reads: Stats,
        writer: WriterFigures,
    ) {
        self.rows.push(Row {
            name,
            role,
            threads: readers,
            speed: Some(reads),
            memory: None,
            writer: Some(writer),
            skipped: None,
        });
    }

    /// Adds a row for an implementation that cannot run here.
    pub fn skip(&mut self, name: &'static str, role: Role, threads: usize, why: &str) {
        self.rows.push(Row {
            name,
            role,
            threads,
            speed: None,
            memory: None,
            writer: None,
            skipped: Some(why.to_string()),
        });
    }

    /// The measured row of `name` at `threads`.
    pub fn find(&self, name: &str, threads: usize) -> Option<&Stats> {
        self.rows.iter().find(|r| r.name == name && r.threads == threads)?.speed.as_ref()
    }

    /// The periodic writer's figures of `name` at `readers`.
    pub fn find_writer(&self, name: &str, readers: usize) -> Option<&WriterFigures> {
        self.rows.iter().find(|r| r.name == name && r.threads == readers)?.writer.as_ref()
    }

    /// The thread counts at which `name` was measured, ascending.
    fn threads_of(&self, name: &str) -> Vec<usize> {
        let mut t: Vec<usize> = self
            .rows
            .iter()
            .filter(|r| r.name == name && r.speed.is_some())
            .map(|r| r.threads)
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// The fastest peer at `threads`, and its throughput.
    fn best_peer(&self, threads: usize) -> Option<(&'static str, f64)> {
        self.rows
            .iter()
            .filter(|r| r.role == Role::Peer && r.threads == threads)
            .filter_map(|r| Some((r.name, r.speed.as_ref()?.mops_total)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Fills `summaries`: every ours row against the fastest peer at its
    /// thread count.
    pub fn summarize_throughput(&mut self) {
        let mut summaries = Vec::new();
        for ours in self.rows.iter().filter(|r| r.role == Role::Ours) {
            let Some(o) = &ours.speed else { continue };
            if let Some((peer, mops)) = self.best_peer(ours.threads) {
                summaries.push(Summary {
                    ours: ours.name,
                    threads: ours.threads,
                    best_peer: peer,
                    ratio: o.mops_total / mops,
                    metric: "throughput",
                });
            }
        }
        self.summaries = summaries;
    }

    /// Adds a goal: `ours` at least `factor` times the throughput of `peer`.
    pub fn goal_faster(&mut self, ours: &str, peer: &str, factor: f64, threads: Option<usize>) {
        let value = self.ratio(ours, peer, threads);
        self.goals.push(Goal {
            text: format!("{ours} >= {factor}x as fast as {peer}"),
            threads,
            everywhere: false,
            value,
            unit: "x",
            target: factor,
            at_least: true,
            met: value.map(|v| v >= factor),
            against: None,
        });
    }

    /// Adds a goal: `ours` takes at most `factor` times the time per
    /// operation of `peer`.
    pub fn goal_within(&mut self, ours: &str, peer: &str, factor: f64, threads: Option<usize>) {
        let value = self.ratio(peer, ours, threads);
        self.goals.push(Goal {
            text: format!("{ours} within {factor}x of {peer}'s time per operation"),
            threads,
            everywhere: false,
            value,
            unit: "x",
            target: factor,
            at_least: false,
            met: value.map(|v| v <= factor),
            against: None,
        });
    }

    /// Adds a goal judged at every thread count `ours` was measured at:
    /// `ours` at least `factor` times the throughput of the best peer there.
    /// The value is the worst ratio.
    pub fn goal_best_peer_everywhere(&mut self, ours: &'static str, factor: f64) {
        let values = self
            .threads_of(ours)
            .into_iter()
            .filter_map(|t| {
                let (peer, mops) = self.best_peer(t)?;
                Some((t, self.find(ours, t)?.mops_total / mops, Some(peer)))
            })
            .collect();
        let text = format!("{ours} >= {factor}x the best peer's throughput");
        self.goal_worst(text, values, factor, true, "x");
    }

    /// Adds a goal judged at every thread count: `ours` takes at most
    /// `factor` times the time per operation of `other`. The value is the
    /// worst ratio.
    pub fn goal_within_everywhere(&mut self, ours: &'static str, other: &str, factor: f64) {
        let values = self
            .threads_of(ours)
            .into_iter()
            .filter_map(|t| Some((t, self.ratio(other, ours, Some(t))?, None)))
            .collect();
        let text = format!("{ours} within {factor}x of {other}'s time per operation");
        self.goal_worst(text, values, factor, false, "x");
    }

    /// Adds a goal of the periodic writer, judged at every reader count:
    /// `ours` completes at least `pct` percent of the requested writes.
    pub fn goal_writes_done(&mut self, ours: &'static str, pct: f64) {
        let values = self
            .threads_of(ours)
            .into_iter()
            .filter_map(|t| Some((t, self.find_writer(ours, t)?.done_pct, None)))
            .collect();
        let text = format!("{ours} completes >= {pct}% of the requested writes");
        self.goal_worst(text, values, pct, true, "%");
    }

    /// Adds a goal of the periodic writer, judged at every reader count:
    /// the p99 write latency of `ours` at most `factor` times that of `peer`.
    pub fn goal_write_p99_within(&mut self, ours: &'static str, peer: &str, factor: f64) {
        let values = self
            .threads_of(ours)
            .into_iter()
            .filter_map(|t| {
                let o = self.find_writer(ours, t)?.latency_p99_ns?;
                let p = self.find_writer(peer, t)?.latency_p99_ns?;
                Some((t, o as f64 / p.max(1) as f64, None))
            })
            .collect();
        let text = format!("{ours}'s write p99 within {factor}x of {peer}'s");
        self.goal_worst(text, values, factor, false, "x");
    }

    /// Adds a goal whose value is the worst of `values` (thread count,
    /// value, measured against).
    fn goal_worst(
        &mut self,
        text: String,
        values: Vec<(usize, f64, Option<&'static str>)>,
        target: f64,
        at_least: bool,
        unit: &'static str,
    ) {
        let worst = values.into_iter().reduce(|a, b| {
            let b_worse = if at_least { b.1 < a.1 } else { b.1 > a.1 };
            if b_worse {
                b
            } else {
                a
            }
        });
        let value = worst.map(|w| w.1);
        self.goals.push(Goal {
            text,
            threads: worst.map(|w| w.0),
            everywhere: true,
            value,
            unit,
            target,
            at_least,
            met: value.map(|v| if at_least { v >= target } else { v <= target }),
            against: worst.and_then(|w| w.2),
        });
    }

    /// Throughput of `a` over that of `b` at `threads`.
    fn ratio(&self, a: &str, b: &str, threads: Option<usize>) -> Option<f64> {
        let t = threads?;
        Some(self.find(a, t)?.mops_total / self.find(b, t)?.mops_total)
    }
}

/// `x` to three significant digits (more for large whole numbers).
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "-".to_string();
    }
    let a = x.abs();
    let decimals = if a == 0.0 { 0 } else { (2 - a.log10().floor() as i32).clamp(0, 6) as usize };
    format!("{x:.decimals$}")
}

fn mib(bytes: i64) -> String {
    num(bytes as f64 / (1 << 20) as f64)
}

/// A throughput ratio (ours / peer's) in words.
fn faster(ratio: f64) -> String {
    if ratio >= 1.0 {
        format!("{}x faster", num(ratio))
    } else {
        format!("{}x slower", num(1.0 / ratio))
    }
}

/// A table with a left-aligned first column and right-aligned others.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[&str]| {
        let mut s = String::from("  ");
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - cell.chars().count();
            if i == 0 {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(out, header);
    for row in rows {
        line(out, &row.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

impl WorkloadReport {
    /// The thread column's label for `n` of them ("1 thread", "2 threads").
    fn label(&self, n: usize) -> &'static str {
        if n == 1 {
            self.threads_label.strip_suffix('s').unwrap_or(self.threads_label)
        } else {
            self.threads_label
        }
    }

    /// The workload as text: title, table, summaries, goals, notes.
    pub fn render(&self, style: &Style) -> String {
        let mut out = format!("\n{}: {}\n", self.id, self.title);
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|r| r.threads); // stable: implementations keep their order
        let name = |r: &Row| format!("{}{}", r.role.prefix(), r.name);
        let skipped = |r: &Row| {
            vec![
                name(r),
                r.threads.to_string(),
                format!("skipped: {}", r.skipped.as_deref().unwrap_or("?")),
            ]
        };
        let spread = |cells: &mut Vec<String>, s: &Stats| {
            if style.spread {
                cells.push(spread_cell(s.spread_pct));
            }
        };
        if rows.iter().any(|r| r.memory.is_some()) {
            let header =
                ["implementation", self.threads_label, "counters", "resident MiB", "bytes/counter"];
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| match &r.memory {
                    Some(m) => vec![
                        name(r),
                        m.threads.to_string(),
                        m.counters.to_string(),
                        mib(m.resident_bytes),
                        num(m.bytes_per_counter),
                    ],
                    None => skipped(r),
                })
                .collect();
            table(&mut out, &header, &cells);
        } else if rows.iter().any(|r| r.writer.is_some()) {
            let mut header = vec![self.threads_label, "reads Mops/s"];
            if style.spread {
                header.push("spread");
            }
            header.extend(["writes done", "write p50 us", "p99 us", "max us"]);
            header.insert(0, "implementation");
            let us = |ns: Option<u64>| ns.map_or("-".to_string(), |ns| num(ns as f64 / 1e3));
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| match (&r.speed, &r.writer) {
                    (Some(s), Some(w)) => {
                        let mut cells = vec![name(r), r.threads.to_string(), num(s.mops_total)];
                        spread(&mut cells, s);
                        cells.extend([
                            format!("{:.1}%", w.done_pct),
                            us(w.latency_p50_ns),
                            us(w.latency_p99_ns),
                            us(w.latency_max_ns),
                        ]);
                        cells
                    }
                    _ => skipped(r),
                })
                .collect();
            table(&mut out, &header, &cells);
        } else {
            let mut header =
                vec!["implementation", self.threads_label, self.time_label, "Mops/s total"];
            if style.spread {
                header.push("spread");
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| match &r.speed {
                    Some(s) => {
                        let mut cells = vec![
                            name(r),
                            r.threads.to_string(),
                            num(s.ns_per_op_per_thread * self.time_scale),
                            num(s.mops_total),
                        ];
                        spread(&mut cells, s);
                        cells
                    }
                    None => skipped(r),
                })
                .collect();
            table(&mut out, &header, &cells);
        }
        self.render_summaries(&mut out);
        for g in &self.goals {
            let at = match g.threads {
                Some(t) if !g.everywhere => format!(" at {t} {}", self.label(t)),
                _ if g.everywhere => format!(" at every {} count", self.label(1)),
                _ => String::new(),
            };
            let verdict = match g.value {
                Some(v) => {
                    let mut value = format!("{}{}", num(v), g.unit);
                    if let (true, Some(t)) = (g.everywhere, g.threads) {
                        let _ = write!(value, " at {t} {}", self.label(t));
                    }
                    if let Some(peer) = g.against {
                        let _ = write!(value, " (vs {peer})");
                    }
                    let verdict = match (style.smoke, g.met) {
                        (true, _) => "no verdict (smoke run)",
                        (false, Some(true)) => "met",
                        (false, _) => "not met",
                    };
                    format!("{value}, {verdict}")
                }
                None if g.threads.is_none() && !g.everywhere => {
                    "needs a thread count above 1".to_string()
                }
                None => "not measured".to_string(),
            };
            let _ = writeln!(out, "  goal: {}{at}: {verdict}", g.text);
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        out
    }

    fn render_summaries(&self, out: &mut String) {
        let mut names: Vec<&str> = self.summaries.iter().map(|s| s.ours).collect();
        names.dedup();
        for ours in names {
            let mine: Vec<&Summary> = self.summaries.iter().filter(|s| s.ours == ours).collect();
            if mine[0].metric == "memory" {
                for s in mine {
                    let share = if s.ratio >= 1.0 {
                        format!("1/{}", num(s.ratio))
                    } else {
                        format!("{}x", num(1.0 / s.ratio))
                    };
                    let _ = writeln!(
                        out,
                        "  summary: {ours} uses {share} of the memory of {} ({} {})",
                        s.best_peer, s.threads, self.threads_label
                    );
                }
                continue;
            }
            let parts: Vec<String> = mine
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let than = if i == 0 { " than the best peer" } else { "" };
                    let label = if i > 0 { "" } else { self.label(s.threads) };
                    let at = format!("at {} {label}", s.threads);
                    format!("{}{than} {} ({})", faster(s.ratio), at.trim_end(), s.best_peer)
                })
                .collect();
            let _ = writeln!(out, "  summary: {ours} is {}", parts.join(", "));
        }
    }
}

impl Report {
    /// The lines above the tables: the run and the machine.
    pub fn header(&self) -> String {
        let m = &self.machine;
        let threads: Vec<String> = self.threads.iter().map(usize::to_string).collect();
        let mut out = String::new();
        if self.mode == "smoke" {
            out.push_str(
                "SMOKE RUN: a check that every workload runs, not a measurement; the figures \
                 below mean nothing\n",
            );
        }
        let _ = writeln!(
            out,
            "cpulocal bench ({} run: {} ms x {} per measurement, median reported; threads {})",
            self.mode,
            num(self.slice_ms),
            self.reps,
            threads.join(", ")
        );
        if self.rwlock_threads != self.threads {
            let rw: Vec<String> = self.rwlock_threads.iter().map(usize::to_string).collect();
            let _ = writeln!(out, "rwlock read/write mixes: threads {}", rw.join(", "));
        }
        let _ = writeln!(
            out,
            "machine: {}, {} CPUs usable, {} CPU ids; {} {}",
            m.cpu_model, m.cpus, m.cpu_ids, m.os, m.arch
        );
        let raw = match &self.raw_rseq_unavailable {
            None => "runs (glibc's rseq area)".to_string(),
            Some(why) => format!("skipped: {why}"),
        };
        let _ = writeln!(out, "cpulocal backend: {}; raw rseq limit: {raw}", m.backend);
        if let Some(ns) = m.line_transfer_ns {
            let _ = writeln!(
                out,
                "cache line handed between the first two usable CPUs: {ns:.0} ns one way \
                 (moves on VMs when the host moves the vCPUs; lock figures move with it)"
            );
        }
        out.push_str(
            "ns/op/thread = elapsed x threads / operations; Mops/s total = operations / elapsed / 1e6\n",
        );
        if self.reps > 2 {
            let _ = writeln!(
                out,
                "spread = (max - min) / median of the Mops/s of the repetitions; above {}%: noisy",
                NOISY_SPREAD_PCT
            );
        }
        out
    }

    /// How the tables are printed for this run.
    pub fn style(&self) -> Style {
        Style { spread: self.reps > 2, smoke: self.mode == "smoke" }
    }

    /// Counts the noisy cells into `noisy_cells` and `cells_with_spread`.
    pub fn count_noise(&mut self) {
        let spreads: Vec<f64> = self
            .workloads
            .iter()
            .flat_map(|w| &w.rows)
            .filter_map(|r| Some(r.speed.as_ref()?.spread_pct))
            .collect();
        let judged = self.reps > 2;
        self.cells_with_spread = if judged { spreads.len() } else { 0 };
        self.noisy_cells =
            judged.then(|| spreads.iter().filter(|&&s| s > NOISY_SPREAD_PCT).count());
    }

    /// The lines below the tables: the goals met, how noisy the machine
    /// was, and for a smoke run what it was for. Call [`Report::count_noise`]
    /// first.
    pub fn footer(&self) -> String {
        let mut out = String::new();
        let goals: Vec<&Goal> = self.workloads.iter().flat_map(|w| &w.goals).collect();
        if self.mode == "smoke" {
            out.push_str(
                "smoke run: this checked that every workload runs; 5 ms x 1 per cell is far too \
                 short to measure anything, so the figures above mean nothing and no goal is \
                 judged\n",
            );
        } else if !goals.is_empty() {
            let met = goals.iter().filter(|g| g.met == Some(true)).count();
            let _ = writeln!(out, "goals: {met} of {} met in this run", goals.len());
        }
        match self.noisy_cells {
            Some(0) => {
                let _ = writeln!(
                    out,
                    "spread: every cell within {NOISY_SPREAD_PCT}% between repetitions"
                );
            }
            Some(noisy) => {
                let _ = writeln!(
                    out,
                    "warning: the machine was noisy: {noisy} of {} cells spread by more than \
                     {NOISY_SPREAD_PCT}% between repetitions (marked noisy); do not trust their \
                     figures, rerun them on a quiet machine",
                    self.cells_with_spread
                );
            }
            None if self.mode != "smoke" => out.push_str(
                "note: fewer than 3 repetitions per cell, so no spread: noise was not checked\n",
            ),
            None => {}
        }
        out
    }
}

/// A spread cell, with a warning past [`NOISY_SPREAD_PCT`].
fn spread_cell(pct: f64) -> String {
    if pct > NOISY_SPREAD_PCT {
        format!("{pct:.1}% noisy")
    } else {
        format!("{pct:.1}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_transfer_note_splits_fast_and_slow_rounds() {
        let probe = |threads, ns, ratio| TransferProbe { threads, ns, ours_vs_best_peer: ratio };
        let mut w = WorkloadReport::new("x", "x");
        w.note_line_transfers();
        assert!(w.notes.is_empty(), "no probes, no note");
        w.line_transfers = vec![
            probe(1, 22.0, Some(1.2)),
            probe(1, 25.0, Some(1.3)),
            probe(2, 201.0, Some(0.5)),
            probe(2, 23.0, Some(1.1)),
            probe(2, 198.0, Some(0.4)),
            probe(2, 190.0, None),
        ];
        w.note_line_transfers();
        let note = &w.notes[0];
        assert!(note.contains("(threads: ns) 1: 22-25, 2: 23-201"), "{note}");
        assert!(note.contains("3 of 6 rounds ran with slow hand-offs"), "{note}");
        // At 2 threads: fast rounds 1.1; slow 0.4, 0.5 (the lower median)
        // and one without a ratio.
        assert!(note.contains("(threads: ratios) 1: 1.20x / -, 2: 1.10x / 0.40x"), "{note}");
        let mut calm = WorkloadReport::new("x", "x");
        calm.line_transfers = vec![probe(2, 22.0, Some(1.0)), probe(2, 40.0, Some(1.0))];
        calm.note_line_transfers();
        assert!(!calm.notes[0].contains("slow"), "{}", calm.notes[0]);
    }

    #[test]
    fn three_significant_digits() {
        assert_eq!(num(0.6312), "0.631");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(123.45), "123");
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(f64::NAN), "-");
        assert_eq!(faster(2.5), "2.50x faster");
        assert_eq!(faster(0.01), "100x slower");
    }

    #[test]
    fn tables_align() {
        let mut out = String::new();
        table(
            &mut out,
            &["a", "b"],
            &[vec!["long name".into(), "1".into()], vec!["x".into(), "22".into()]],
        );
        assert_eq!(out, "  a           b\n  long name   1\n  x          22\n");
    }

    /// A cell measured at `mops` Mops/s whose repetitions spread by `spread`%.
    fn stats(threads: usize, mops: f64, spread: f64) -> Stats {
        Stats {
            ns_per_op_per_thread: threads as f64 * 1e3 / mops,
            mops_total: mops,
            spread_pct: spread,
            samples_mops: vec![mops],
            ops: 1,
        }
    }

    fn report(mode: &'static str, reps: usize, workloads: Vec<WorkloadReport>) -> Report {
        Report {
            version: "0",
            mode,
            slice_ms: 100.0,
            reps,
            threads: vec![1, 2],
            rwlock_threads: vec![1, 2],
            cpus: 2,
            machine: Machine {
                cpu_model: "test CPU".into(),
                cpus: 2,
                cpu_ids: 2,
                os: "linux".into(),
                arch: "x86_64".into(),
                backend: "rseq".into(),
                line_transfer_ns: Some(22.4),
            },
            raw_rseq_unavailable: None,
            workloads,
            wall_s: 1.0,
            noisy_cells: None,
            cells_with_spread: 0,
        }
    }

    #[test]
    fn a_spread_above_25_percent_is_marked_and_counted() {
        let mut w = WorkloadReport::new("w", "a workload");
        w.push("ours", Role::Ours, 1, stats(1, 100.0, 25.0));
        w.push("peer", Role::Peer, 1, stats(1, 50.0, 25.1));
        w.push("peer", Role::Peer, 2, stats(2, 50.0, 140.0));
        let style = Style { spread: true, smoke: false };
        let text = w.render(&style);
        let line = |name: &str, t: &str| {
            text.lines()
                .map(str::trim_start)
                .find(|l| {
                    l.strip_prefix(name).and_then(|rest| rest.split_whitespace().next()) == Some(t)
                })
                .unwrap_or_else(|| panic!("no row {name} {t} in\n{text}"))
                .to_string()
        };
        assert!(line("ours: ours", "1").ends_with("25.0%"), "{text}");
        assert!(line("peer", "1").ends_with("25.1% noisy"), "{text}");
        assert!(line("peer", "2").ends_with("140.0% noisy"), "{text}");

        let mut r = report("default", 3, vec![w]);
        r.count_noise();
        assert_eq!((r.noisy_cells, r.cells_with_spread), (Some(2), 3));
        let footer = r.footer();
        assert!(footer.contains("warning: the machine was noisy: 2 of 3 cells"), "{footer}");

        let mut quiet = WorkloadReport::new("w", "a workload");
        quiet.push("ours", Role::Ours, 1, stats(1, 100.0, 3.0));
        let mut r = report("default", 3, vec![quiet]);
        r.count_noise();
        assert_eq!(r.noisy_cells, Some(0));
        assert!(!r.footer().contains("noisy"), "{}", r.footer());
        assert!(r.footer().contains("every cell within 25%"), "{}", r.footer());
    }

    #[test]
    fn too_few_repetitions_say_noise_was_not_checked() {
        let mut w = WorkloadReport::new("w", "a workload");
        w.push("ours", Role::Ours, 1, stats(1, 100.0, 90.0));
        let mut r = report("default", 1, vec![w]);
        r.count_noise();
        assert_eq!((r.noisy_cells, r.cells_with_spread), (None, 0));
        assert!(r.footer().contains("noise was not checked"), "{}", r.footer());
        assert!(!r.style().spread);
    }

    #[test]
    fn worst_case_goals_name_where_they_are_judged() {
        let mut w = WorkloadReport::new("rw", "a lock");
        for (t, ours, a, b) in
            [(1, 300.0, 100.0, 200.0), (2, 90.0, 120.0, 100.0), (8, 50.0, 20.0, 10.0)]
        {
            w.push("ours", Role::Ours, t, stats(t, ours, 1.0));
            w.push("limit", Role::Limit, t, stats(t, ours * 2.0, 1.0));
            w.push("a", Role::Peer, t, stats(t, a, 1.0));
            w.push("b", Role::Peer, t, stats(t, b, 1.0));
        }
        w.goal_best_peer_everywhere("ours", 0.9);
        w.goal_within_everywhere("ours", "limit", 1.3);
        let g = &w.goals[0];
        assert_eq!(
            (g.threads, g.value, g.against, g.met),
            (Some(2), Some(0.75), Some("a"), Some(false))
        );
        let g = &w.goals[1];
        assert_eq!((g.threads, g.value, g.met), (Some(1), Some(2.0), Some(false)));
        let text = w.render(&Style::default());
        assert!(
            text.contains(
                "goal: ours >= 0.9x the best peer's throughput at every thread count: \
                 0.750x at 2 threads (vs a), not met"
            ),
            "{text}"
        );
        let smoke = w.render(&Style { spread: false, smoke: true });
        assert!(!smoke.contains("met\n"), "{smoke}");
        assert!(smoke.contains("0.750x at 2 threads (vs a), no verdict (smoke run)"), "{smoke}");

        // Raising ours everywhere meets it.
        let mut w2 = WorkloadReport::new("rw", "a lock");
        w2.push("ours", Role::Ours, 2, stats(2, 110.0, 1.0));
        w2.push("a", Role::Peer, 2, stats(2, 120.0, 1.0));
        w2.goal_best_peer_everywhere("ours", 0.9);
        assert_eq!(w2.goals[0].met, Some(true));
        // Nothing to judge: not measured, not met.
        let mut empty = WorkloadReport::new("rw", "a lock");
        empty.goal_best_peer_everywhere("ours", 0.9);
        assert_eq!((empty.goals[0].value, empty.goals[0].met), (None, None));
        assert!(empty.render(&Style::default()).contains(": not measured"));
    }

    #[test]
    fn periodic_writer_goals_and_table() {
        let figures = |done: u64, p99: u64| WriterFigures {
            period_us: 100.0,
            requested: 1000,
            done,
            done_pct: done as f64 / 10.0,
            latency_p50_ns: Some(p99 / 10),
            latency_p99_ns: Some(p99),
            latency_max_ns: Some(p99 * 3),
        };
        let mut w = WorkloadReport::new("periodic", "a writer");
        w.threads_label = "readers";
        w.push_writer("ours", Role::Ours, 2, stats(2, 500.0, 1.0), figures(990, 1_500));
        w.push_writer("pl", Role::Peer, 2, stats(2, 50.0, 1.0), figures(1000, 1_000));
        w.push_writer("ours", Role::Ours, 8, stats(8, 400.0, 1.0), figures(960, 9_000));
        w.push_writer("pl", Role::Peer, 8, stats(8, 40.0, 1.0), figures(1000, 2_000));
        w.goal_writes_done("ours", 95.0);
        w.goal_write_p99_within("ours", "pl", 2.0);
        let done = &w.goals[0];
        assert_eq!((done.threads, done.value, done.met), (Some(8), Some(96.0), Some(true)));
        let p99 = &w.goals[1];
        assert_eq!((p99.threads, p99.value, p99.met), (Some(8), Some(4.5), Some(false)));
        let text = w.render(&Style { spread: true, smoke: false });
        assert!(text.contains("write p50 us"), "{text}");
        let row = text.lines().find(|l| l.contains("ours:") && l.contains(" 8 ")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[cells.len() - 5..], ["1.0%", "96.0%", "0.900", "9.00", "27.0"], "{row}");
        assert!(
            text.contains(
                "completes >= 95% of the requested writes at every reader count: \
                               96.0% at 8 readers, met"
            ),
            "{text}"
        );
    }

    #[test]
    fn smoke_runs_say_they_are_not_measurements() {
        let mut w = WorkloadReport::new("w", "a workload");
        w.push("ours", Role::Ours, 1, stats(1, 100.0, 0.0));
        w.goal_faster("ours", "peer", 2.0, Some(1));
        let mut r = report("smoke", 1, vec![w]);
        r.count_noise();
        assert!(r
            .header()
            .starts_with("SMOKE RUN: a check that every workload runs, not a measurement"));
        assert!(r.footer().contains("the figures above mean nothing and no goal is judged"));
        assert!(!r.footer().contains("goals:"));
        let r = report("default", 3, Vec::new());
        assert!(!r.header().contains("SMOKE"));
    }
}
