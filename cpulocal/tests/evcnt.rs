//! The event-counter registry and its readers: exact values under threads,
//! registration and removal, the `vmstat -e` table, Prometheus text checked
//! by a real parser, and the export file's life (permissions, removal at
//! drop and at exit, staleness after a kill).
#![cfg(all(target_os = "linux", not(miri)))]

mod common;
mod prom;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cpulocal::evcnt::{self, Event, EventCounter, ExportError, Kind, Snapshot};

fn value_of(s: &Snapshot, group: &str, name: &str) -> Option<u64> {
    s.events.iter().find(|e| e.group == group && e.name == name).map(|e| e.value)
}

#[test]
fn static_counters_are_exact_and_listed_from_first_use() {
    static UNUSED: EventCounter = EventCounter::new("reg-test", "never used");
    static USED: EventCounter = EventCounter::with_kind(Kind::Trap, "reg-test", "used");
    let cpus = common::allowed();
    std::thread::scope(|s| {
        for t in 0..4 {
            let cpus = &cpus;
            s.spawn(move || {
                for i in 0..20_000usize {
                    if i % 1000 == 0 {
                        common::hop(cpus, t + i / 1000);
                    }
                    USED.inc();
                }
            });
        }
    });
    assert_eq!(USED.value(), 80_000);
    let snap = evcnt::snapshot();
    assert_eq!(value_of(&snap, "reg-test", "used"), Some(80_000));
    assert_eq!(value_of(&snap, "reg-test", "never used"), None, "listed before first use");
    assert_eq!(UNUSED.value(), 0);
    let e = snap.events.iter().find(|e| e.name == "used").unwrap();
    assert_eq!((e.kind, e.alloc_failed), (Kind::Trap, false));
}

#[test]
fn dynamic_counters_are_listed_until_dropped_even_when_moved() {
    let c = EventCounter::dynamic(Kind::Misc, "dyn-test", String::from("moved"));
    assert_eq!(value_of(&evcnt::snapshot(), "dyn-test", "moved"), Some(0));
    c.add(5);
    let boxed = Box::new(c); // moving must not break the registry's view
    boxed.add(6);
    assert_eq!(value_of(&evcnt::snapshot(), "dyn-test", "moved"), Some(11));
    drop(boxed);
    assert_eq!(value_of(&evcnt::snapshot(), "dyn-test", "moved"), None);
}

#[test]
fn snapshots_race_with_counters_being_created_and_dropped() {
    // Snapshots read counters' words under the registry lock while other
    // threads create, count on and drop counters: no use after free (run
    // under Miri or ASan this is where it would show), and values are sane.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..2 {
            let stop = &stop;
            s.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let c = EventCounter::dynamic(Kind::Misc, "churn-test", format!("t{t}"));
                    c.add(3);
                    drop(c);
                }
            });
        }
        for _ in 0..2_000 {
            for e in evcnt::snapshot().events.iter().filter(|e| e.group == "churn-test") {
                assert!(e.value == 0 || e.value == 3, "{e:?}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

#[test]
fn the_table_is_sorted_aligned_and_has_rates() {
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    let before = Snapshot::new(
        at(100),
        vec![
            Event::new("net", "rx", Kind::Intr, 1_000),
            Event::new("vm", "faults", Kind::Trap, 50),
        ],
    );
    let now = Snapshot::new(
        at(104),
        vec![
            Event::new("vm", "faults", Kind::Trap, 40), // went down
            Event::new("net", "rx", Kind::Intr, 5_000),
            Event::new("a", "new\u{1b}[2J", Kind::Misc, 7), // new, hostile name
        ],
    );
    let mut out = Vec::new();
    now.write_table(&mut out, Some(&before)).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("event") && lines[0].ends_with("total rate type"), "{text}");
    assert!(lines[1].starts_with("a new\\u{1b}[2J"), "control characters not escaped: {text}");
    assert!(!text.contains('\u{1b}'));
    assert!(lines[2].starts_with("net rx") && lines[2].ends_with(" 5000 1000 intr"), "{text}");
    assert!(lines[3].starts_with("vm faults") && lines[3].ends_with(" - trap"), "{text}");
    assert!(lines[1].ends_with(" - misc"), "{text}");
    // Aligned: every column ends at the same place.
    let total_end = lines[0].find("total").unwrap() + "total".len();
    for l in &lines[1..] {
        assert_eq!(&l[total_end..total_end + 1], " ", "{text}");
        assert_ne!(&l[total_end - 1..total_end], " ", "{text}");
    }
    // Without a previous snapshot there is no rate column.
    let mut out = Vec::new();
    now.write_table(&mut out, None).unwrap();
    assert!(String::from_utf8(out).unwrap().starts_with("event"));
}

#[test]
fn prometheus_text_parses_with_escaped_labels() {
    let hostile = "quote\" back\\slash\nnewline";
    let snap = Snapshot::new(
        SystemTime::now(),
        vec![
            Event::new("g", hostile, Kind::Misc, 3),
            Event::new("g", "plain", Kind::Intr, u64::MAX),
            Event::new("g", "plain", Kind::Intr, 1), // same labels: summed (wrapping)
            Event::new("h", "plain", Kind::Trap, 9),
        ],
    );
    let mut out = Vec::new();
    snap.write_prometheus(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let samples = prom::parse(&text);
    assert_eq!(samples.len(), 3, "{text}");
    let find = |group: &str, name: &str| {
        samples
            .iter()
            .find(|s| s.label("group") == Some(group) && s.label("name") == Some(name))
            .unwrap_or_else(|| panic!("no {group}/{name} in {text}"))
    };
    let h = find("g", hostile);
    assert_eq!(h.family, evcnt::PROMETHEUS_FAMILY);
    assert_eq!(h.label("type"), Some("misc"));
    assert_eq!(h.number(), 3.0);
    assert_eq!(find("g", "plain").number(), 0.0);
    assert_eq!(find("h", "plain").number(), 9.0);
    // The looser parser other tools use reads it too.
    let loose = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(loose.samples.len(), 3);
}

/// The child side of the export tests: exports, counts, says its file, and
/// then exits as the parent says (`EXIT_HOW`).
#[test]
fn export_child() {
    if std::env::var_os("EVCNT_EXPORT_CHILD").is_none() {
        return;
    }
    static WORK: EventCounter = EventCounter::new("child", "work");
    WORK.add(77);
    let exporter = evcnt::export_every(Duration::from_millis(20)).unwrap();
    println!("FILE {}", exporter.path().display());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    if line.trim() == "forkuse" {
        println!("FORKUSE {}", fork_and_use(exporter));
        return;
    }
    std::mem::forget(exporter); // only exit may remove it now
    if line.trim() == "fork" {
        // A child forked from the exporter exits normally: its exit must
        // leave the parent's file alone.
        // SAFETY: the child only calls `exit`, which runs the atexit hooks.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the forked child.
            unsafe { libc::exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        println!("FORKED");
        line.clear();
        std::io::stdin().read_line(&mut line).unwrap();
    }
    if line.trim() == "exit" {
        std::process::exit(0); // a normal exit: atexit removes the file
    }
}

/// Forks 40 children while this process exports every 20 ms (with 20,000
/// counters, so that each write holds the locks a while) and another
/// thread makes and drops counters; each child takes a snapshot, makes a
/// counter, exports on its own account and drops the `Exporter` it
/// inherited. Returns "ok N, failed N, hung N" (a child that has not
/// exited within 20 s is killed and counted as hung; the first child that
/// fails or hangs ends the forking).
fn fork_and_use(exporter: evcnt::Exporter) -> String {
    // Each child drops its own copy; the parent drops its own at the end.
    let mut exporter = std::mem::ManuallyDrop::new(exporter);
    let many: Vec<EventCounter> =
        (0..20_000).map(|i| EventCounter::dynamic(Kind::Misc, "many", format!("c{i}"))).collect();
    many.iter().for_each(EventCounter::inc);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut ok, mut failed, mut hung) = (0, 0, 0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let c = EventCounter::dynamic(Kind::Misc, "churn", "c");
                c.inc();
            }
        });
        for _ in 0..40 {
            // SAFETY: the child uses only this library and exits with
            // `_exit`, the parent waits for it.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _ = evcnt::snapshot();
                    let c = EventCounter::dynamic(Kind::Misc, "forked", "c");
                    c.inc();
                    let own = evcnt::export_every(Duration::from_millis(20));
                    let code = if own.is_ok() { 0 } else { 3 };
                    drop(own);
                    // SAFETY: this process's copy, dropped once, here.
                    unsafe { std::mem::ManuallyDrop::drop(&mut exporter) };
                    code
                }))
                .unwrap_or(2);
                // SAFETY: ends the forked child without the parent's atexit
                // hooks or the harness.
                unsafe { libc::_exit(code) };
            }
            let started = std::time::Instant::now();
            let mut status = 0;
            loop {
                // SAFETY: polls the child forked above.
                let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if done == pid {
                    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                    break;
                }
                if started.elapsed() > Duration::from_secs(20) {
                    // SAFETY: kills and reaps the child forked above.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, &mut status, 0);
                    }
                    hung += 1;
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if failed + hung > 0 {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    drop(std::mem::ManuallyDrop::into_inner(exporter));
    format!("ok {ok}, failed {failed}, hung {hung}")
}

fn spawn_child() -> (std::process::Child, std::path::PathBuf) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["export_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("EVCNT_EXPORT_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    // The harness may print "test export_child ... " on the same line.
    let mut line = String::new();
    let path = loop {
        line.clear();
        assert_ne!(out.read_line(&mut line).unwrap(), 0, "child ended before exporting");
        if let Some(at) = line.find("FILE ") {
            break line[at + "FILE ".len()..].trim().into();
        }
    };
    // Keep reading what the child prints, so that it never writes to a
    // closed pipe; "FORKED" lines are passed on.
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if line.contains("FORKED") {
                let _ = FORKED.0.lock().unwrap().send(());
            }
            if let Some(at) = line.find("FORKUSE ") {
                let _ = FORKUSE.0.lock().unwrap().send(line[at + "FORKUSE ".len()..].trim().into());
            }
        }
    });
    (child, path)
}

type Channel<T> =
    (std::sync::Mutex<std::sync::mpsc::Sender<T>>, std::sync::Mutex<std::sync::mpsc::Receiver<T>>);

type Forked = Channel<()>;

/// The "FORKUSE" line of the child that forks and uses the registry.
static FORKUSE: std::sync::LazyLock<Channel<String>> = std::sync::LazyLock::new(|| {
    let (tx, rx) = std::sync::mpsc::channel();
    (std::sync::Mutex::new(tx), std::sync::Mutex::new(rx))
});

/// Every child's "FORKED" line (only one test forks).
static FORKED: std::sync::LazyLock<Forked> = std::sync::LazyLock::new(|| {
    let (tx, rx) = std::sync::mpsc::channel();
    (std::sync::Mutex::new(tx), std::sync::Mutex::new(rx))
});

#[test]
fn an_exporting_child_is_read_then_its_file_is_removed_at_exit() {
    let (mut child, path) = spawn_child();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "file mode");
    let dir = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700, "directory mode");
    let seen = evcnt::read_export(child.id(), None).unwrap();
    assert_eq!(value_of(&seen.snapshot, "child", "work"), Some(77));
    assert_eq!(seen.pid, child.id());
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"exit\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!path.exists(), "{} left behind after a normal exit", path.display());
    assert!(matches!(evcnt::read_export(child.id(), None), Err(ExportError::NotExported { .. })));
}

#[test]
fn a_forked_child_exiting_leaves_the_parents_file() {
    let (mut child, path) = spawn_child();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    stdin.write_all(b"fork\n").unwrap();
    // The child says FORKED once its forked child has exited.
    let forked = FORKED.1.lock().unwrap().recv_timeout(Duration::from_secs(120));
    assert!(forked.is_ok(), "the child never forked");
    assert!(path.exists(), "a forked child's exit removed its parent's export file");
    assert!(evcnt::read_export(child.id(), None).is_ok());
    stdin.write_all(b"exit\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!path.exists());
}

/// Children forked while the exporter and other threads use the registry
/// get it unlocked, export on their own, and drop the inherited
/// `Exporter` without touching the parent's thread or file.
#[test]
fn forked_children_use_the_registry_and_export() {
    let (mut child, path) = spawn_child();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    stdin.write_all(b"forkuse\n").unwrap();
    let said = FORKUSE.1.lock().unwrap().recv_timeout(Duration::from_secs(600));
    let said = said.expect("the child never reported its forks");
    assert_eq!(said, "ok 40, failed 0, hung 0", "children forked while others held the locks");
    assert!(child.wait().unwrap().success());
    assert!(!path.exists(), "the parent's dropped exporter left its file");
}

#[test]
fn a_killed_childs_file_is_reported_stale() {
    let (mut child, path) = spawn_child();
    assert!(evcnt::read_export(child.id(), None).is_ok());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(path.exists(), "a killed process cannot remove its file");
    match evcnt::read_export(child.id(), None) {
        Err(ExportError::Stale { why, .. }) => assert!(why.contains("gone"), "{why}"),
        other => panic!("a dead process's file was not reported stale: {other:?}"),
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_reader_asking_for_a_short_interval_gets_fresh_values() {
    let (mut child, _path) = spawn_child();
    // The child rewrites every 20 ms anyway; ask for 10 ms and check that
    // what is read was written within a few periods.
    let seen = evcnt::read_export(child.id(), Some(Duration::from_millis(10))).unwrap();
    // Poll (for up to a minute on a loaded machine) until it is rewritten.
    let rewritten = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let later = evcnt::read_export(child.id(), Some(Duration::from_millis(10))).unwrap();
        later.snapshot.taken > seen.snapshot.taken
    });
    assert!(rewritten, "the file was not rewritten");
    drop(child.stdin.take());
    child.wait().unwrap();
}

/// Counters that share a group, name and kind get each its own rate: the
/// n-th of them now with the n-th in the previous snapshot (the first with
/// the first was paired with all of them).
#[test]
fn counters_with_one_name_get_each_its_rate() {
    let at = |s| std::time::UNIX_EPOCH + Duration::from_secs(s);
    let before = Snapshot::new(
        at(10),
        vec![Event::new("q", "rx", Kind::Intr, 1_000_000), Event::new("q", "rx", Kind::Intr, 0)],
    );
    let now = Snapshot::new(
        at(11),
        vec![Event::new("q", "rx", Kind::Intr, 1_000_000), Event::new("q", "rx", Kind::Intr, 100)],
    );
    let mut out = Vec::new();
    now.write_table(&mut out, Some(&before)).unwrap();
    let text = String::from_utf8(out).unwrap();
    let rates: Vec<&str> =
        text.lines().skip(1).map(|l| l.split_whitespace().nth(3).unwrap()).collect();
    assert_eq!(rates, ["0", "100"], "{text}");
}
