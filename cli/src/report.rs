//! What a run found, as tables on stdout and as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::harness::Stats;
use crate::machine::Machine;
use crate::peers::Role;

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
    /// Where it ran.
    pub machine: Machine,
    /// `null` when the raw rseq limit ran, else why it could not.
    pub raw_rseq_unavailable: Option<String>,
    /// One entry per workload run.
    pub workloads: Vec<WorkloadReport>,
    /// Seconds the whole run took.
    pub wall_s: f64,
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
    /// Where it is judged.
    pub threads: Option<usize>,
    /// What was measured (same unit as `target`); `None` if it could not be.
    pub value: Option<f64>,
    /// The bound.
    pub target: f64,
    /// Whether `value` must be at least `target` (else at most).
    pub at_least: bool,
    /// Whether `value` is on the right side of `target`.
    pub met: Option<bool>,
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
        }
    }

    /// Adds a measured row.
    pub fn push(&mut self, name: &'static str, role: Role, threads: usize, stats: Stats) {
        self.rows.push(Row {
            name,
            role,
            threads,
            speed: Some(stats),
            memory: None,
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
            skipped: Some(why.to_string()),
        });
    }

    /// The measured row of `name` at `threads`.
    pub fn find(&self, name: &str, threads: usize) -> Option<&Stats> {
        self.rows.iter().find(|r| r.name == name && r.threads == threads)?.speed.as_ref()
    }

    /// Fills `summaries`: every ours row against the fastest peer at its
    /// thread count.
    pub fn summarize_throughput(&mut self) {
        let mut summaries = Vec::new();
        for ours in self.rows.iter().filter(|r| r.role == Role::Ours) {
            let Some(o) = &ours.speed else { continue };
            let best = self
                .rows
                .iter()
                .filter(|r| r.role == Role::Peer && r.threads == ours.threads)
                .filter_map(|r| Some((r.name, r.speed.as_ref()?.mops_total)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((peer, mops)) = best {
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
            value,
            target: factor,
            at_least: true,
            met: value.map(|v| v >= factor),
        });
    }

    /// Adds a goal: `ours` takes at most `factor` times the time per
    /// operation of `peer`.
    pub fn goal_within(&mut self, ours: &str, peer: &str, factor: f64, threads: Option<usize>) {
        let value = self.ratio(peer, ours, threads);
        self.goals.push(Goal {
            text: format!("{ours} within {factor}x of {peer}'s time per operation"),
            threads,
            value,
            target: factor,
            at_least: false,
            met: value.map(|v| v <= factor),
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
    /// The workload as text: title, table, summaries, goals, notes.
    pub fn render(&self, spread: bool) -> String {
        let mut out = format!("\n{}: {}\n", self.id, self.title);
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|r| r.threads); // stable: implementations keep their order
        let name = |r: &Row| format!("{}{}", r.role.prefix(), r.name);
        if rows.iter().any(|r| r.memory.is_some()) {
            let header =
                ["implementation", self.threads_label, "counters", "resident MiB", "bytes/counter"];
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| match (&r.memory, &r.skipped) {
                    (Some(m), _) => vec![
                        name(r),
                        m.threads.to_string(),
                        m.counters.to_string(),
                        mib(m.resident_bytes),
                        num(m.bytes_per_counter),
                    ],
                    (None, why) => vec![
                        name(r),
                        r.threads.to_string(),
                        format!("skipped: {}", why.as_deref().unwrap_or("?")),
                    ],
                })
                .collect();
            table(&mut out, &header, &cells);
        } else {
            let mut header =
                vec!["implementation", self.threads_label, self.time_label, "Mops/s total"];
            if spread {
                header.push("spread");
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| match (&r.speed, &r.skipped) {
                    (Some(s), _) => {
                        let mut cells = vec![
                            name(r),
                            r.threads.to_string(),
                            num(s.ns_per_op_per_thread * self.time_scale),
                            num(s.mops_total),
                        ];
                        if spread {
                            cells.push(format!("{:.1}%", s.spread_pct));
                        }
                        cells
                    }
                    (None, why) => vec![
                        name(r),
                        r.threads.to_string(),
                        format!("skipped: {}", why.as_deref().unwrap_or("?")),
                    ],
                })
                .collect();
            table(&mut out, &header, &cells);
        }
        self.render_summaries(&mut out);
        for g in &self.goals {
            let at = g.threads.map_or(String::new(), |t| format!(" at {t} {}", self.threads_label));
            let verdict = match (g.value, g.met) {
                (Some(v), Some(true)) => format!("{}x, met", num(v)),
                (Some(v), _) => format!("{}x, not met", num(v)),
                (None, _) if g.threads.is_none() => "needs a thread count above 1".to_string(),
                (None, _) => "not measured".to_string(),
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
                    let label = if i > 0 {
                        ""
                    } else if s.threads == 1 {
                        self.threads_label.trim_end_matches('s')
                    } else {
                        self.threads_label
                    };
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
        let mut out = format!(
            "cpulocal bench ({} run: {} ms x {} per measurement, median reported; threads {})\n",
            self.mode,
            num(self.slice_ms),
            self.reps,
            threads.join(", ")
        );
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
        out.push_str(
            "ns/op/thread = elapsed x threads / operations; Mops/s total = operations / elapsed / 1e6\n",
        );
        if self.reps > 2 {
            out.push_str("spread = (max - min) / median of the Mops/s of the repetitions\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
