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
fn filter_and_threads_narrow_the_run() {
    let out = cpulocal(&["--smoke", "--filter", "alloc", "--threads", "1"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("\nalloc: ") && !stdout.contains("counter-add"), "{stdout}");
    assert!(stdout.contains("threads 1)"), "{stdout}");
}
