//! `cpulocal stat PID` against a child process that exports its counters:
//! the table, the Prometheus text, the live view ending when the child
//! exits, staleness after a kill, and usage errors.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use cpulocal::evcnt::{self, EventCounter, Kind};

fn cpulocal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cpulocal")).args(args).output().expect("run cpulocal")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The child: this test binary again, running `exporting_child`.
#[test]
fn exporting_child() {
    if std::env::var_os("STAT_TEST_CHILD").is_none() {
        return;
    }
    static REQUESTS: EventCounter = EventCounter::new("web", "requests");
    static FAULTS: EventCounter = EventCounter::with_kind(Kind::Trap, "vm", "faults \"minor\"");
    REQUESTS.add(1234);
    FAULTS.add(5);
    let exporter = evcnt::export_every(Duration::from_millis(50)).unwrap();
    println!("READY");
    // Count until told to stop (stdin closes).
    let stop = std::thread::spawn(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    });
    while !stop.is_finished() {
        REQUESTS.inc();
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(exporter);
}

fn spawn_child() -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["exporting_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("STAT_TEST_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // The harness may print "test exporting_child ... " on the same line.
    let mut line = String::new();
    while !line.contains("READY") {
        line.clear();
        assert_ne!(out.read_line(&mut line).unwrap(), 0, "child ended before exporting");
    }
    // Keep reading what the child prints, so that it never writes to a
    // closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    child
}

#[test]
fn once_and_prometheus_show_the_childs_counters() {
    let mut child = spawn_child();
    let pid = child.id().to_string();

    let out = cpulocal(&["stat", &pid, "--once"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let row = stdout
        .lines()
        .find(|l| l.starts_with("web requests"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let total: u64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(total >= 1234, "{stdout}");
    assert!(row.ends_with(" misc"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("vm faults \"minor\"") && l.ends_with(" trap")));

    let out = cpulocal(&["stat", &pid, "--prometheus"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let parsed = openmetrics_parser::prometheus::parse_prometheus(&stdout);
    assert!(parsed.is_ok(), "{parsed:?}\n{stdout}");
    let line = r#"evcnt_total{group="vm",name="faults \"minor\"",type="trap"} 5"#;
    assert!(stdout.lines().any(|l| l == line), "{stdout}");

    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_live_view_refreshes_with_rates_and_ends_when_the_child_exits() {
    let mut child = spawn_child();
    let pid = child.id().to_string();
    let mut stat = Command::new(env!("CARGO_BIN_EXE_cpulocal"))
        .args(["stat", &pid, "--interval", "0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read refreshes until the requests counter has moved across at least
    // three of them (however slowly a loaded machine runs them).
    let mut lines = BufReader::new(stat.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    let mut totals: Vec<u64> = Vec::new();
    while totals.len() < 3 || totals.last() <= totals.first() {
        let line = lines.next().expect("stat ended early").unwrap();
        if line.starts_with("web requests") {
            totals.push(line.split_whitespace().nth(2).unwrap().parse().unwrap());
        }
        stdout.push_str(&line);
        stdout.push('\n');
    }
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    for line in lines {
        stdout.push_str(&line.unwrap());
        stdout.push('\n');
    }
    let status = stat.wait().unwrap();
    assert!(status.success(), "{stdout}");
    assert!(stdout.trim_end().ends_with(&format!("process {pid} has exited")), "{stdout}");
    assert!(totals.windows(2).all(|w| w[0] <= w[1]), "totals went down: {stdout}");
    // The refreshes after the first show rates.
    assert!(stdout.contains("total rate type"), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "terminal control codes when stdout is a pipe");
}

#[test]
fn a_killed_process_is_reported_stale_not_shown() {
    let mut child = spawn_child();
    let pid = child.id().to_string();
    child.kill().unwrap();
    child.wait().unwrap();
    let out = cpulocal(&["stat", &pid, "--once"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stale") && stderr.contains("gone"), "{stderr}");
    assert!(!text(&out.stdout).contains("web requests"));
    // Clean up the file the killed child left.
    let path = stderr.split_whitespace().find(|w| w.contains("evcnt.")).unwrap();
    std::fs::remove_file(path).unwrap();
}

#[test]
fn usage_errors_and_unexported_processes() {
    let out = cpulocal(&["stat"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("PID"));
    let out = cpulocal(&["stat", "1", "--interval", "-3"]);
    assert_eq!(out.status.code(), Some(2));
    // The usage shown with a mistake in `stat` is stat's too.
    assert!(text(&out.stderr).contains("cpulocal stat PID"), "{}", text(&out.stderr));
    // This test process exports nothing.
    let me = std::process::id().to_string();
    let out = cpulocal(&["stat", &me, "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("does not export"), "{}", text(&out.stderr));
    let out = cpulocal(&["stat", "--help"]);
    assert!(out.status.success() && text(&out.stdout).starts_with("Usage: cpulocal stat"));
}
