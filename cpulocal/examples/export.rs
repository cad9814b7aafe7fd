// Publish this process's counters for `cpulocal stat PID`, then read them
// back the way `cpulocal stat` does.
//
//     cargo run --example export -- --wait    # then: cpulocal stat PID

use std::time::Duration;

use cpulocal::evcnt::{self, EventCounter};

static JOBS: EventCounter = EventCounter::new("worker", "jobs done");

pub fn main() -> std::io::Result<()> {
    JOBS.add(100); // counted before the first write, so it is in the file
    let exporter = evcnt::export_every(Duration::from_millis(200))?;
    println!("pid {}: exporting to {}", std::process::id(), exporter.path().display());
    let wait = std::env::args().any(|a| a == "--wait");
    let rounds = if wait { u64::MAX } else { 3 };
    for _ in 0..rounds {
        JOBS.add(100);
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = evcnt::read_export(std::process::id(), None).map_err(std::io::Error::other)?;
    seen.snapshot.write_table(std::io::stdout().lock(), None)?;
    assert!(seen.snapshot.events.iter().any(|e| e.name == "jobs done"));
    // Dropping the exporter (or exiting normally) removes the file.
    drop(exporter);
    Ok(())
}
