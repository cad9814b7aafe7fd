//! `cpulocal bench`: the side-by-side report of `cpulocal` against the
//! peers a user would otherwise pick, on the user's own machine.
//!
//! - [`args`]: the command line.
//! - [`harness`]: the one harness every implementation runs through.
//! - [`peers`]: every implementation, one trait per kind of work.
//! - [`workloads`]: what is measured.
//! - [`periodic`]: the periodic writer's own harness.
//! - [`report`], [`plot`]: tables, JSON and SVG.
//! - [`memory`]: the resident-memory workload's child process.
#![warn(missing_docs, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

pub mod args;
pub mod harness;
pub mod machine;
pub mod memory;
pub mod peers;
pub mod periodic;
pub mod plot;
pub mod report;
pub mod stat;
pub mod workloads;

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use args::{BenchArgs, Command, UsageError, USAGE};
use report::Report;
use workloads::{Plan, Progress, Workload, WORKLOADS};

/// Runs the command line `args` (without the program name); returns the
/// exit status: 0 done, 1 failed, 2 bad usage.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let result = args::parse(args).map_err(Failure::Usage).and_then(|cmd| match cmd {
        Command::Help => {
            print!("{USAGE}");
            Ok(())
        }
        Command::Version => {
            println!("cpulocal {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::List => {
            for w in WORKLOADS {
                println!("{:<27} {}", w.id, w.title);
            }
            Ok(())
        }
        Command::MemChild { kind, counters, threads } => {
            std::process::exit(memory::child(kind, counters, threads).into())
        }
        Command::Bench(b) => bench(b),
        Command::Stat(rest) => stat::main(&rest).map_err(|e| match e {
            stat::StatError::Usage(m) => Failure::Usage(UsageError(m)),
            stat::StatError::Run(m) => Failure::Run(m),
        }),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            // Both forms, bench and stat: the mistake may be in either.
            let usage = USAGE.lines().take(2).collect::<Vec<_>>().join("\n");
            eprintln!("cpulocal: error: {e}\n{usage}\nTry 'cpulocal --help' for more information.");
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            eprintln!("cpulocal: error: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// Exit status 2.
    Usage(UsageError),
    /// Exit status 1.
    Run(String),
}

fn bench(a: BenchArgs) -> Result<(), Failure> {
    let started = Instant::now();
    let selected: Vec<&Workload> = WORKLOADS
        .iter()
        .filter(|w| a.filters.is_empty() || a.filters.iter().any(|f| w.id.contains(f.as_str())))
        .collect();
    if selected.is_empty() {
        let ids: Vec<&str> = WORKLOADS.iter().map(|w| w.id).collect();
        return Err(Failure::Usage(UsageError(format!(
            "--filter matches no workload (they are: {})",
            ids.join(", ")
        ))));
    }
    let cpus = machine::online_cpus();
    let (threads, rwlock_threads) = match &a.threads {
        Some(t) => (t.clone(), t.clone()),
        None => Plan::default_threads(cpus),
    };
    let plan = Plan {
        slice: a.slice.unwrap_or(a.mode.slice()),
        reps: a.reps.unwrap_or(a.mode.reps()),
        threads,
        rwlock_threads,
        cpus,
        memory: a.mode.memory_size(),
        periodic_writes: a.mode.periodic_writes(),
    };
    // Fail now, not after the run, if the outputs cannot be written.
    let create = |path: &Path| {
        File::create(path)
            .map_err(|e| Failure::Run(format!("cannot write {}: {e}", path.display())))
    };
    let json_file = a.json.as_deref().map(create).transpose()?;
    let plot_file = a.plot.as_deref().map(create).transpose()?;
    drop(plot_file);

    let mut report = Report {
        version: env!("CARGO_PKG_VERSION"),
        mode: a.mode.name(),
        slice_ms: plan.slice.as_secs_f64() * 1e3,
        reps: plan.reps,
        threads: plan.threads.clone(),
        rwlock_threads: plan.rwlock_threads.clone(),
        cpus,
        machine: machine::Machine::detect(),
        raw_rseq_unavailable: peers::RawRseq::new().err(),
        workloads: Vec::new(),
        wall_s: 0.0,
        noisy_cells: None,
        cells_with_spread: 0,
    };
    let style = report.style();
    let progress = Progress::new(selected.iter().map(|w| (w.steps)(&plan)).sum());
    progress.print(&report.header());
    for w in selected {
        progress.workload(w.id);
        let result = (w.run)(w, &plan, &progress);
        progress.print(&result.render(&style));
        report.workloads.push(result);
    }
    progress.finish();
    report.wall_s = started.elapsed().as_secs_f64();
    report.count_noise();
    println!("\n{}done in {:.1} s", report.footer(), report.wall_s);

    if let (Some(path), Some(file)) = (&a.json, json_file) {
        let mut out = BufWriter::new(file);
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                out.write_all(b"\n").and_then(|()| out.flush()).map_err(|e| e.to_string())
            })
            .map_err(|e| Failure::Run(format!("cannot write {}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &a.plot {
        plot::write_svg(&report, path)
            .map_err(|e| Failure::Run(format!("cannot draw {}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The workspace README's examples, compiled and run as doctests (the
/// library's own README is tested by the library).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct WorkspaceReadmeDoctests;
