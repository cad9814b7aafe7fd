//! The `metrics` facade: `metrics::counter!(..).increment(1)` from every
//! thread, through this library's per-CPU recorder and through
//! `metrics-exporter-prometheus`'s, side by side.
//!
//! Each thread sets the recorder as its own default (the facade's
//! thread-local recorder), so both run in one process without a global one.
//! An operation is the whole macro call: the recorder looks the key up and
//! hands back a handle, which then increments, as in a program that calls
//! the macro where the event happens.

use metrics_exporter_prometheus::PrometheusBuilder;

use super::Role;
use crate::harness::Stats;
use crate::report::WorkloadReport;
use crate::workloads::{Plan, Workload};

/// How many recorders the workload runs (for the progress bar).
pub const RECORDERS: usize = 2;

const OURS: &str = "evcnt::Recorder";
const PEER: &str = "metrics-exporter-prometheus";

/// One operation, built on its worker thread, borrowing a recorder.
pub type Op<'r> = Box<dyn FnMut() + 'r>;

/// Measures one cell: a name, a thread count, and how each thread builds
/// its operation.
pub type Measure<'a> =
    &'a dyn for<'r> Fn(&str, usize, &(dyn Fn(usize) -> Op<'r> + Sync + 'r)) -> Stats;

/// Runs the workload; `measure` is the report's measuring loop.
pub fn run(wl: &Workload, plan: &Plan, measure: Measure<'_>) -> WorkloadReport {
    let mut w = WorkloadReport::new(wl.id, wl.title);
    let ours = cpulocal::evcnt::Recorder::new();
    let peer = PrometheusBuilder::new().build_recorder();
    let mut ours_ops = 0;
    for &t in &plan.threads {
        let stats = measure(OURS, t, &|_| increments(&ours));
        ours_ops += stats.ops;
        w.push(OURS, Role::Ours, t, stats);
    }
    for &t in &plan.threads {
        let stats = measure(PEER, t, &|_| increments(&peer));
        w.push(PEER, Role::Peer, t, stats);
    }
    w.summarize_throughput();
    w.notes.push(
        "each call clones and drops the handle's Arc (the facade's API), a shared cache line \
         for every recorder"
            .into(),
    );
    let mut text = Vec::new();
    let counted =
        ours.write_prometheus(&mut text).ok().and_then(|()| String::from_utf8(text).ok()).and_then(
            |t| t.lines().find_map(|l| l.strip_prefix("bench_requests ")?.parse::<u64>().ok()),
        );
    if counted != Some(ours_ops) {
        w.notes.push(format!("{OURS}: counted {counted:?} after {ours_ops} increments"));
    }
    w
}

/// The operation: one macro call against `recorder`, set as this thread's
/// default recorder for as long as the operation lives.
fn increments<R: metrics::Recorder + Sync>(recorder: &R) -> Op<'_> {
    let guard = metrics::set_default_local_recorder(recorder);
    Box::new(move || {
        let _keep = &guard;
        metrics::counter!("bench_requests").increment(1);
    })
}
