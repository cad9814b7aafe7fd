//! `cpulocal stat PID`: another process's event counters, live, as
//! `vmstat -e` shows the kernel's.
//!
//! The process must publish them with `cpulocal::evcnt::export()` and run
//! as the same user.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use cpulocal::evcnt::{self, ExportError, Exported};

/// What `cpulocal stat --help` prints.
pub const USAGE: &str = "\
Usage: cpulocal stat PID [--interval SECS] [--once] [--prometheus]

Shows the event counters of process PID (which must call
cpulocal::evcnt::export() and run as the same user) with their totals and,
after the first refresh, their rates per second, refreshed in place every
interval like 'vmstat -e'. Stops when the process exits.

Options:
      --interval SECS    seconds between refreshes (default 1; fractions allowed)
      --once             print the table once and exit
      --prometheus       print the counters once in the Prometheus text format
  -h, --help             print this help and exit
";

/// The parsed command line of `cpulocal stat`.
#[derive(Clone, Debug, PartialEq)]
pub struct StatArgs {
    /// The process to watch.
    pub pid: u32,
    /// Time between refreshes.
    pub interval: Duration,
    /// Print once and exit.
    pub once: bool,
    /// Print once, in the Prometheus text format.
    pub prometheus: bool,
}

/// Why `cpulocal stat` stopped.
#[derive(Debug)]
pub enum StatError {
    /// A mistake on the command line (exit status 2).
    Usage(String),
    /// The counters could not be shown (exit status 1).
    Run(String),
}

/// Parses the arguments after `stat`; `Ok(None)` asks for the help.
///
/// # Errors
/// [`StatError::Usage`] for a missing or bad PID, a bad interval, or an
/// unknown option.
pub fn parse(args: &[String]) -> Result<Option<StatArgs>, StatError> {
    let usage = |msg: String| Err(StatError::Usage(msg));
    let mut pid = None;
    let mut interval = Duration::from_secs(1);
    let (mut once, mut prometheus) = (false, false);
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg, None),
        };
        match name {
            "-h" | "--help" => return Ok(None),
            "--once" | "--prometheus" if inline.is_some() => {
                return usage(format!("{name} takes no value"))
            }
            "--once" => once = true,
            "--prometheus" => prometheus = true,
            "--interval" => {
                let value = match inline.or_else(|| args.get(i).cloned()) {
                    Some(v) => v,
                    None => return usage("--interval needs SECS".into()),
                };
                if !arg.contains('=') {
                    i += 1;
                }
                interval = match value.parse::<f64>() {
                    Ok(s) if (0.01..=86_400.0).contains(&s) => Duration::from_secs_f64(s),
                    _ => {
                        return usage(format!(
                            "--interval: {value:?} is not a number of seconds from 0.01 to 86400"
                        ))
                    }
                };
            }
            _ if arg.starts_with('-') => return usage(format!("unknown option '{arg}'")),
            _ if pid.is_none() => match arg.parse::<u32>() {
                Ok(p) if p > 0 => pid = Some(p),
                _ => return usage(format!("'{arg}' is not a process id")),
            },
            _ => return usage(format!("unexpected argument '{arg}'")),
        }
    }
    match pid {
        Some(pid) => Ok(Some(StatArgs { pid, interval, once, prometheus })),
        None => usage("stat needs the PID of a process that exports its counters".into()),
    }
}

/// Runs `cpulocal stat` with the arguments after `stat`.
///
/// # Errors
/// [`StatError::Usage`] for a bad command line; [`StatError::Run`] when the
/// process does not export, its file is stale or malformed, or stdout
/// fails.
pub fn main(args: &[String]) -> Result<(), StatError> {
    let Some(a) = parse(args)? else {
        print!("{USAGE}");
        return Ok(());
    };
    let run = |e: ExportError| StatError::Run(e.to_string());
    let io = |e: io::Error| StatError::Run(format!("cannot write: {e}"));
    let mut out = io::stdout().lock();
    if a.prometheus || a.once {
        let now = evcnt::read_export(a.pid, None).map_err(run)?;
        if a.prometheus {
            now.snapshot.write_prometheus(&mut out).map_err(io)?;
        } else {
            write_header(&mut out, &now, None).map_err(io)?;
            now.snapshot.write_table(&mut out, None).map_err(io)?;
        }
        return out.flush().map_err(io);
    }
    let in_place = io::stdout().is_terminal();
    let mut previous: Option<Exported> = None;
    loop {
        let now = match evcnt::read_export(a.pid, Some(a.interval)) {
            Ok(now) => now,
            // It was running and has gone: that is the end, not a failure.
            Err(ExportError::NotExported { .. } | ExportError::Stale { .. })
                if previous.is_some() =>
            {
                writeln!(out, "process {} has exited", a.pid).map_err(io)?;
                return Ok(());
            }
            Err(e) => return Err(run(e)),
        };
        if in_place {
            // Home and clear, as `watch` does.
            write!(out, "\x1b[H\x1b[2J").map_err(io)?;
        } else if previous.is_some() {
            writeln!(out).map_err(io)?;
        }
        let before = previous.as_ref().map(|p| &p.snapshot);
        write_header(&mut out, &now, Some(a.interval)).map_err(io)?;
        now.snapshot.write_table(&mut out, before).map_err(io)?;
        out.flush().map_err(io)?;
        previous = Some(now);
        std::thread::sleep(a.interval);
    }
}

fn write_header(out: &mut impl Write, e: &Exported, every: Option<Duration>) -> io::Result<()> {
    let age = e.snapshot.taken.elapsed().unwrap_or_default();
    write!(
        out,
        "process {}: {} counters, read {:.1} s ago",
        e.pid,
        e.snapshot.events.len(),
        age.as_secs_f64()
    )?;
    match every {
        Some(d) => writeln!(out, ", every {} s", d.as_secs_f64()),
        None => writeln!(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_the_options() {
        let a = parse(&args("42 --interval 0.5 --once")).unwrap().unwrap();
        assert_eq!(
            a,
            StatArgs {
                pid: 42,
                interval: Duration::from_millis(500),
                once: true,
                prometheus: false
            }
        );
        let a = parse(&args("--prometheus --interval=2 7")).unwrap().unwrap();
        assert_eq!((a.pid, a.interval, a.prometheus), (7, Duration::from_secs(2), true));
        assert!(parse(&args("--help")).unwrap().is_none());
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "abc",
            "0",
            "1 2",
            "1 --interval",
            "1 --interval 0",
            "1 --interval x",
            "1 --bogus",
            "1 --once=yes",
        ] {
            assert!(matches!(parse(&args(bad)), Err(StatError::Usage(_))), "{bad:?} was accepted");
        }
    }
}
