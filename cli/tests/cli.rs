//! The `cpulocal` binary itself: usage errors, help, and a smoke run whose
//! JSON and SVG are checked.

use std::path::PathBuf;
use std::process::{Command, Output};

use cpulocal_cli::workloads::WORKLOADS;
use serde_json::Value;

fn cpulocal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cpulocal")).args(args).output().expect("run cpulocal")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh directory for this test's files.
fn scratch(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn help_exits_zero() {
    let out = cpulocal(&["--help"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("Usage: cpulocal"), "{stdout}");
    for option in ["--full", "--smoke", "--json", "--plot", "--filter", "--threads"] {
        assert!(stdout.contains(option), "--help does not mention {option}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "unknown option '--bogus'"),
        (&["frobnicate"], "unexpected argument 'frobnicate'"),
        (&["--json"], "--json needs a FILE"),
        (&["--threads", "0"], "--threads 0 is out of range"),
        (&["--threads", "two"], "--threads expects a whole number"),
        (&["--plot", "out.png"], "ending in .svg"),
        (&["--full", "--smoke"], "exclude each other"),
        (&["--smoke", "--filter", "no-such-workload"], "matches no workload"),
    ];
    for (args, message) in cases {
        let out = cpulocal(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr:?} lacks {message:?}");
        assert!(stderr.contains("Usage: cpulocal"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed {}", text(&out.stdout));
    }
}

#[test]
fn unwritable_output_fails_before_measuring() {
    let out = cpulocal(&["--smoke", "--json", "/nonexistent-dir/out.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot write /nonexistent-dir/out.json"));
    assert!(out.stdout.is_empty());
}

fn positive(v: &Value, key: &str) -> bool {
    v[key].as_f64().is_some_and(|x| x.is_finite() && x > 0.0)
}

#[test]
fn smoke_run_writes_json_and_svg() {
    let dir = scratch("smoke");
    let (json, svg) = (dir.join("out.json"), dir.join("out.svg"));
    let out =
        cpulocal(&["--smoke", "--json", json.to_str().unwrap(), "--plot", svg.to_str().unwrap()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["mode"], "smoke");
    assert!(positive(&report, "wall_s"));
    assert!(
        stdout.starts_with("SMOKE RUN: a check that every workload runs, not a measurement"),
        "{stdout}"
    );
    assert!(stdout.contains("the figures above mean nothing"), "{stdout}");
    assert!(!stdout.contains(", met\n") && !stdout.contains(", not met\n"), "{stdout}");
    let announced = stdout.find("memory: about to start two child processes").expect(&stdout);
    assert!(announced < stdout.find("\nmemory: resident").expect(&stdout), "{stdout}");
    let workloads = report["workloads"].as_array().unwrap();
    let ids: Vec<&str> = workloads.iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert_eq!(ids, WORKLOADS.iter().map(|w| w.id).collect::<Vec<_>>());
    for w in workloads {
        let id = w["id"].as_str().unwrap();
        assert!(stdout.contains(&format!("\n{id}: ")), "no table for {id}");
        let rows = w["rows"].as_array().unwrap();
        assert!(rows.iter().any(|r| r["role"] == "ours"), "{id}: no row of ours");
        assert!(rows.iter().any(|r| r["role"] == "peer"), "{id}: no peer row");
        assert!(!w["summaries"].as_array().unwrap().is_empty(), "{id}: no summary");
        for r in rows {
            let name = &r["name"];
            if r["role"] == "limit" && r["skipped"].is_string() {
                continue; // the raw rseq limit cannot run everywhere
            }
            assert!(r["skipped"].is_null(), "{id}/{name} skipped: {}", r["skipped"]);
            if id.starts_with("rwlock-periodic") {
                let wr = &r["writer"];
                let (requested, done) =
                    (wr["requested"].as_u64().unwrap(), wr["done"].as_u64().unwrap());
                assert!(requested > 0 && done <= requested, "{id}/{name}: {wr}");
                if done > 0 {
                    let ns = |k: &str| wr[k].as_u64().unwrap();
                    let (p50, p99, max) =
                        (ns("latency_p50_ns"), ns("latency_p99_ns"), ns("latency_max_ns"));
                    assert!(p50 <= p99 && p99 <= max, "{id}/{name}: {wr}");
                }
            }
            if id == "memory" {
                let m = &r["memory"];
                assert!(
                    positive(m, "resident_bytes") && positive(m, "bytes_per_counter"),
                    "{id}/{name}: {m}"
                );
            } else {
                let s = &r["speed"];
                assert!(
                    positive(s, "ns_per_op_per_thread") && positive(s, "mops_total"),
                    "{id}/{name}: {s}"
                );
            }
        }
        assert!(w["notes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| !n.as_str().unwrap().contains("sum() is")));
    }

    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("counter-add") && svg.contains("ours: Counter::add"));
}

#[test]
fn every_rwlock_workload_is_there() {
    let ids: Vec<&str> = WORKLOADS.iter().map(|w| w.id).collect();
    for id in [
        "rwlock-read",
        "rwlock-write-0.01pct",
        "rwlock-write-0.1pct",
        "rwlock-write-1pct",
        "rwlock-write-10pct",
        "rwlock-write-50pct",
        "rwlock-periodic-100us",
        "rwlock-periodic-1ms",
        "rwlock-periodic-10ms",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
}

#[test]
fn rwlock_mixes_take_the_given_threads() {
    let out = cpulocal(&["--smoke", "--filter", "rwlock-write-50pct", "--threads", "1,3"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let threads: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("ours: cpulocal::RwLock"))
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(threads, ["1", "3"], "{stdout}");
}

#[test]
fn filter_and_threads_narrow_the_run() {
    let out = cpulocal(&["--smoke", "--filter", "alloc", "--threads", "1"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("\nalloc: ") && !stdout.contains("counter-add"), "{stdout}");
    assert!(stdout.contains("threads 1)"), "{stdout}");
}

// ---------------------------------------------------------------- the periodic writer on fake locks

mod fake {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use cpulocal_cli::peers::{Role, RwLockImpl};

    /// A lock whose `write()` sleeps `first` before its first write and
    /// `every` before each of them, then hands over the value.
    pub struct SlowWriter {
        pub value: Mutex<u64>,
        pub reads: AtomicU64,
        pub writes: AtomicU64,
        pub first: Duration,
        pub every: Duration,
    }

    impl SlowWriter {
        pub fn new(first: Duration, every: Duration) -> SlowWriter {
            SlowWriter {
                value: Mutex::new(0),
                reads: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                first,
                every,
            }
        }
    }

    impl RwLockImpl<u64> for SlowWriter {
        const NAME: &'static str = "fake";
        const ROLE: Role = Role::Peer;
        fn new(_: u64) -> Self {
            SlowWriter::new(Duration::ZERO, Duration::ZERO)
        }
        fn read<R>(&self, f: impl FnOnce(&u64) -> R) -> R {
            self.reads.fetch_add(1, Ordering::Relaxed);
            f(&self.value.lock().unwrap())
        }
        fn write<R>(&self, f: impl FnOnce(&mut u64) -> R) -> R {
            if self.writes.fetch_add(1, Ordering::Relaxed) == 0 {
                std::thread::sleep(self.first);
            }
            std::thread::sleep(self.every);
            f(&mut self.value.lock().unwrap())
        }
    }
}

#[test]
fn periodic_writer_counts_every_write_and_read() {
    use cpulocal_cli::periodic::{self, WriterFigures};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    let lock = fake::SlowWriter::new(Duration::ZERO, Duration::ZERO);
    let period = Duration::from_millis(2);
    let s = periodic::run(&lock, 2, period, Duration::from_millis(40));
    assert_eq!(s.requested, 20);
    let done = s.latencies_ns.len() as u64;
    assert!((1..=s.requested).contains(&done), "{done} of {}", s.requested);
    assert_eq!(done, lock.writes.load(Ordering::Relaxed));
    assert_eq!(done, *lock.value.lock().unwrap());
    // Readers count in batches and stop only after the writer is done.
    assert_eq!(s.reads, lock.reads.load(Ordering::Relaxed));
    // The last write was due at most one period before the window's end.
    assert!(s.elapsed >= Duration::from_millis(38), "{:?}", s.elapsed);
    let f = WriterFigures::of(period, &[s.clone(), s]);
    assert_eq!((f.requested, f.done), (40, 2 * done));
}

#[test]
fn periodic_writer_drops_the_periods_a_slow_write_took() {
    use cpulocal_cli::periodic::{self, WriterFigures};
    use std::time::Duration;

    // The first write takes 10 periods: the writer must not make those up
    // with a burst of writes afterwards, so at least 9 periods go without.
    let ms = Duration::from_millis;
    let lock = fake::SlowWriter::new(ms(20), Duration::ZERO);
    let s = periodic::run(&lock, 1, ms(2), ms(60));
    assert_eq!(s.requested, 30);
    let done = s.latencies_ns.len() as u64;
    assert!((1..=s.requested - 9).contains(&done), "{done} writes done of {}", s.requested);
    // The first write's latency covers its whole wait, and is the maximum.
    assert!(s.latencies_ns[0] >= 20_000_000, "{:?}", s.latencies_ns);
    let f = WriterFigures::of(ms(2), &[s]);
    assert!(f.latency_max_ns.unwrap() >= 20_000_000, "{f:?}");
    assert!(f.done_pct <= 70.0, "{f:?}");

    // A write that always takes 3 periods gets at most one period in three.
    let lock = fake::SlowWriter::new(Duration::ZERO, ms(6));
    let s = periodic::run(&lock, 0, ms(2), ms(60));
    let done = s.latencies_ns.len() as u64;
    assert!((1..=11).contains(&done), "{done} writes done of {}", s.requested);
    assert!(s.latencies_ns.iter().all(|&ns| ns >= 6_000_000), "{:?}", s.latencies_ns);
    assert_eq!(s.reads, 0);
}

/// A lock whose writer gets in only once every reader thread has exited:
/// under steady readers, it starves its writer for good.
mod starving {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use cpulocal_cli::peers::{Role, RwLockImpl};

    pub struct StarvingLock {
        pub exited: Arc<AtomicU64>,
        pub writes: AtomicU64,
    }

    /// Counts its thread's exit.
    struct OnExit(Option<Arc<AtomicU64>>);

    impl Drop for OnExit {
        fn drop(&mut self) {
            if let Some(exited) = &self.0 {
                exited.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    thread_local! {
        static ON_EXIT: RefCell<OnExit> = const { RefCell::new(OnExit(None)) };
    }

    impl RwLockImpl<u64> for StarvingLock {
        const NAME: &'static str = "starving";
        const ROLE: Role = Role::Peer;
        fn new(_: u64) -> Self {
            StarvingLock { exited: Arc::new(AtomicU64::new(0)), writes: AtomicU64::new(0) }
        }
        fn read<R>(&self, f: impl FnOnce(&u64) -> R) -> R {
            ON_EXIT.with(|e| {
                e.borrow_mut().0.get_or_insert_with(|| self.exited.clone());
            });
            f(&0)
        }
        fn write<R>(&self, f: impl FnOnce(&mut u64) -> R) -> R {
            while self.exited.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            f(&mut 0)
        }
    }
}

#[test]
fn a_starved_writer_does_not_hang_the_run() {
    use cpulocal_cli::peers::RwLockImpl;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;
    use std::time::Duration;

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let lock = starving::StarvingLock::new(0);
        let s = cpulocal_cli::periodic::run(
            &lock,
            1,
            Duration::from_millis(10),
            Duration::from_millis(20),
        );
        let _ = tx.send((s, lock.writes.load(Ordering::SeqCst)));
    });
    // The run stops its readers 1 s after the window; a minute means it
    // never would.
    let (s, writes) = rx.recv_timeout(Duration::from_secs(60)).expect("the run hung");
    let done = s.latencies_ns.len() as u64;
    assert!((1..=2).contains(&done), "{done}");
    assert_eq!(done, writes);
}
