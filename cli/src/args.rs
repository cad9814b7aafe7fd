//! The command line, parsed by hand: `cpulocal [bench] [OPTIONS]`.
//!
//! Every mistake is a [`UsageError`]; `main` prints it with the usage line
//! and exits with status 2.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// What `--help` prints.
pub const USAGE: &str = "\
Usage: cpulocal [bench] [OPTIONS]
       cpulocal stat PID [--interval SECS] [--once] [--prometheus]

Runs every workload against every peer on this machine and prints one table
per workload on stdout (a progress bar with the time left goes to stderr).
Each workload is run with 1 thread, one per CPU, and 4 per CPU; the rwlock
read/write mixes also with 2 and 8 threads. The periodic writer always runs
against one and four reader threads per CPU. A cell whose repetitions spread
by more than 25% is marked noisy. The default run takes about a minute on two
CPUs; its memory workload briefly needs a few hundred MiB (--full: about 2 GiB).

Options:
      --full             longer run (1 s x 7 per measurement, about 18 minutes on
                         two CPUs), with the spread
      --smoke            tiny run of everything (5 ms x 1), to check that it
                         all runs: its figures are not measurements
      --json FILE        also write every figure to FILE as JSON
      --plot FILE.svg    also draw Mops/s against threads, one panel per workload
      --filter TEXT      only workloads whose name contains TEXT (repeatable)
      --threads LIST     thread counts, e.g. 1,2,8 (default: 1, CPUs, 4 x CPUs,
                         and for the rwlock mixes also 2 and 8)
      --time MS          milliseconds per measurement (overrides the mode's)
      --reps N           measurements per cell, median reported (overrides)
      --list             list the workloads and exit
  -h, --help             print this help and exit
  -V, --version          print the version and exit
";

/// How long and how often to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Everything, tiny: for CI.
    Smoke,
    /// What `cargo run --release` runs: about a minute on two cores.
    Default,
    /// Long runs, more repetitions, medians with their spread.
    Full,
}

impl Mode {
    /// The mode's name, as reported.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Smoke => "smoke",
            Mode::Default => "default",
            Mode::Full => "full",
        }
    }

    /// How long one measurement runs.
    pub fn slice(self) -> Duration {
        match self {
            Mode::Smoke => Duration::from_millis(5),
            Mode::Default => Duration::from_millis(100),
            Mode::Full => Duration::from_secs(1),
        }
    }

    /// Measurements per cell; the median is reported.
    pub fn reps(self) -> usize {
        match self {
            Mode::Smoke => 1,
            Mode::Default => 3,
            Mode::Full => 7,
        }
    }

    /// Counters and threads of the memory workload. The per-thread peer
    /// needs about 17 KiB per counter with 1,000 threads: the default run
    /// keeps that near 200 MiB, the full run goes to 1.7 GiB.
    pub fn memory_size(self) -> (usize, usize) {
        match self {
            Mode::Smoke => (2_000, 32),
            Mode::Default => (10_000, 1_000),
            Mode::Full => (100_000, 1_000),
        }
    }

    /// The fewest writes the periodic writer is asked for per measurement:
    /// a measurement lasts the longer of the slice and this many periods,
    /// so that a 10 ms period still gives a p99 worth reading.
    pub fn periodic_writes(self) -> u32 {
        match self {
            Mode::Smoke => 3,
            Mode::Default => 50,
            Mode::Full => 100,
        }
    }
}

/// Options of `cpulocal bench`.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchArgs {
    /// Smoke, default or full.
    pub mode: Mode,
    /// Where to write the JSON, if anywhere.
    pub json: Option<PathBuf>,
    /// Where to write the SVG plot, if anywhere.
    pub plot: Option<PathBuf>,
    /// Substrings of workload names; empty: every workload.
    pub filters: Vec<String>,
    /// Thread counts instead of 1, CPUs, 4 x CPUs.
    pub threads: Option<Vec<usize>>,
    /// Time per measurement instead of the mode's.
    pub slice: Option<Duration>,
    /// Measurements per cell instead of the mode's.
    pub reps: Option<usize>,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            mode: Mode::Default,
            json: None,
            plot: None,
            filters: Vec::new(),
            threads: None,
            slice: None,
            reps: None,
        }
    }
}

/// Which counter a memory child process measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// `cpulocal::Counter`.
    Ours,
    /// `thread_local::ThreadLocal<AtomicU64>`.
    Peer,
}

impl MemKind {
    /// The name on the child's command line.
    pub fn name(self) -> &'static str {
        match self {
            MemKind::Ours => "ours",
            MemKind::Peer => "peer",
        }
    }
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Run the report.
    Bench(BenchArgs),
    /// Print [`USAGE`].
    Help,
    /// Print the version.
    Version,
    /// List the workloads.
    List,
    /// `cpulocal stat`, with the arguments after `stat` (see [`crate::stat`]).
    Stat(Vec<String>),
    /// Hidden: measure one side of the memory workload in this process.
    MemChild {
        /// Ours or the per-thread peer.
        kind: MemKind,
        /// How many counters.
        counters: usize,
        /// How many threads touch each of them.
        threads: usize,
    },
}

/// A mistake on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn err<T>(msg: impl Into<String>) -> Result<T, UsageError> {
    Err(UsageError(msg.into()))
}

/// The most threads `--threads` accepts per entry.
const MAX_THREADS: usize = 4096;

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = OsString>>(argv: I) -> Result<Command, UsageError> {
    let args: Vec<String> = args_iter(argv).collect::<Result<_, _>>()?;
    if args.first().map(String::as_str) == Some("mem-child") {
        return parse_mem_child(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("stat") {
        return Ok(Command::Stat(args[1..].to_vec()));
    }
    let mut bench = BenchArgs::default();
    let mut mode: Option<&'static str> = None;
    let mut seen_command = false;
    let mut list = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        // `--name=value` or `--name value`.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = |what: &str| -> Result<String, UsageError> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            match args.get(i) {
                Some(v) if !v.starts_with("--") => {
                    i += 1;
                    Ok(v.clone())
                }
                _ => err(format!("{name} needs {what}")),
            }
        };
        let is_flag =
            matches!(name, "-h" | "--help" | "-V" | "--version" | "--list" | "--full" | "--smoke");
        if is_flag && inline.is_some() {
            return err(format!("{name} takes no value"));
        }
        match name {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--list" => list = true,
            "--full" | "--smoke" => {
                let this = if name == "--full" { "--full" } else { "--smoke" };
                match mode {
                    Some(m) if m != this => {
                        return err(format!("{m} and {this} exclude each other"))
                    }
                    _ => mode = Some(this),
                }
                bench.mode = if this == "--full" { Mode::Full } else { Mode::Smoke };
            }
            "--json" => bench.json = Some(PathBuf::from(non_empty(name, value("a FILE")?)?)),
            "--plot" => {
                let path = non_empty(name, value("a FILE.svg")?)?;
                if !path.to_ascii_lowercase().ends_with(".svg") {
                    return err(format!(
                        "--plot writes SVG: give a file name ending in .svg, not {path:?}"
                    ));
                }
                bench.plot = Some(PathBuf::from(path));
            }
            "--filter" => bench.filters.push(non_empty(name, value("a workload name")?)?),
            "--threads" => bench.threads = Some(parse_threads(&value("a LIST such as 1,2,8")?)?),
            "--time" => {
                let ms = parse_number(name, &value("milliseconds")?, 1, 3_600_000)?;
                bench.slice = Some(Duration::from_millis(ms as u64));
            }
            "--reps" => bench.reps = Some(parse_number(name, &value("a count")?, 1, 1000)?),
            _ if inline.is_some() => return err(format!("unknown option '{name}'")),
            "bench" if !seen_command => seen_command = true,
            "help" if !seen_command => return Ok(Command::Help),
            _ if arg.starts_with('-') && arg.len() > 1 => {
                return err(format!("unknown option '{arg}'"));
            }
            _ => return err(format!("unexpected argument '{arg}' (the only command is 'bench')")),
        }
    }
    if list {
        return Ok(Command::List);
    }
    Ok(Command::Bench(bench))
}

fn args_iter<I: IntoIterator<Item = OsString>>(
    args: I,
) -> impl Iterator<Item = Result<String, UsageError>> {
    args.into_iter().map(|a| {
        a.into_string().map_err(|a| UsageError(format!("argument {a:?} is not valid UTF-8")))
    })
}

fn non_empty(name: &str, v: String) -> Result<String, UsageError> {
    if v.is_empty() {
        return err(format!("{name} needs a non-empty value"));
    }
    Ok(v)
}

fn parse_number(name: &str, text: &str, min: usize, max: usize) -> Result<usize, UsageError> {
    match text.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(n) => err(format!("{name} {n} is out of range ({min} to {max})")),
        Err(_) => err(format!("{name} expects a whole number, not {text:?}")),
    }
}

/// `1,2,8` into `[1, 2, 8]`: sorted, without duplicates.
fn parse_threads(text: &str) -> Result<Vec<usize>, UsageError> {
    let mut threads = Vec::new();
    for part in text.split(',') {
        threads.push(parse_number("--threads", part, 1, MAX_THREADS)?);
    }
    threads.sort_unstable();
    threads.dedup();
    Ok(threads)
}

fn parse_mem_child(args: &[String]) -> Result<Command, UsageError> {
    let [kind, counters, threads] = args else {
        return err("usage: cpulocal mem-child ours|peer COUNTERS THREADS");
    };
    let kind = match kind.as_str() {
        "ours" => MemKind::Ours,
        "peer" => MemKind::Peer,
        other => return err(format!("mem-child: unknown kind {other:?} (ours or peer)")),
    };
    Ok(Command::MemChild {
        kind,
        counters: parse_number("COUNTERS", counters, 1, 100_000_000)?,
        threads: parse_number("THREADS", threads, 1, 100_000)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    fn bench(args: &[&str]) -> BenchArgs {
        match p(args) {
            Ok(Command::Bench(b)) => b,
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    #[test]
    fn no_arguments_is_the_default_bench() {
        assert_eq!(bench(&[]), BenchArgs::default());
        assert_eq!(bench(&["bench"]), BenchArgs::default());
    }

    #[test]
    fn options_with_values_both_spellings() {
        let b = bench(&["--json", "out.json", "--plot=p.svg", "--threads=8,1,2,2", "--smoke"]);
        assert_eq!(b.json, Some(PathBuf::from("out.json")));
        assert_eq!(b.plot, Some(PathBuf::from("p.svg")));
        assert_eq!(b.threads, Some(vec![1, 2, 8]));
        assert_eq!(b.mode, Mode::Smoke);
        let b = bench(&["--filter", "rwlock", "--filter=counter", "--time", "20", "--reps", "5"]);
        assert_eq!(b.filters, ["rwlock", "counter"]);
        assert_eq!(b.slice, Some(Duration::from_millis(20)));
        assert_eq!(b.reps, Some(5));
    }

    #[test]
    fn mistakes_are_usage_errors() {
        for bad in [
            &["--bogus"][..],
            &["-x"],
            &["frobnicate"],
            &["--json"],
            &["--json", "--smoke"],
            &["--plot", "p.png"],
            &["--threads", "0"],
            &["--threads", "1,x"],
            &["--threads", ""],
            &["--reps", "0"],
            &["--time", "fast"],
            &["--full", "--smoke"],
            &["--smoke=yes"],
            &["bench", "bench"],
        ] {
            assert!(p(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(p(&["--bogus"]).unwrap_err().0, "unknown option '--bogus'");
    }

    #[test]
    fn help_version_list() {
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        assert_eq!(p(&["--smoke", "-h"]), Ok(Command::Help));
        assert_eq!(p(&["help"]), Ok(Command::Help));
        assert_eq!(p(&["-V"]), Ok(Command::Version));
        assert_eq!(p(&["--list"]), Ok(Command::List));
    }

    #[test]
    fn mem_child() {
        assert_eq!(
            p(&["mem-child", "peer", "10", "2"]),
            Ok(Command::MemChild { kind: MemKind::Peer, counters: 10, threads: 2 })
        );
        assert!(p(&["mem-child", "both", "10", "2"]).is_err());
        assert!(p(&["mem-child", "ours"]).is_err());
    }
}
