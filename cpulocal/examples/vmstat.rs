// Event counters by group and name, printed as `vmstat -e` prints the
// kernel's: totals, and rates per second between two snapshots.
//
//     cargo run --example vmstat

use std::time::Duration;

use cpulocal::evcnt::{self, EventCounter, Kind};

static RX: EventCounter = EventCounter::with_kind(Kind::Intr, "nic0", "rx packets");
static TX: EventCounter = EventCounter::with_kind(Kind::Intr, "nic0", "tx packets");
static CACHE_MISSES: EventCounter = EventCounter::new("cache", "misses");

pub fn main() -> std::io::Result<()> {
    let before = evcnt::snapshot();
    std::thread::scope(|s| {
        s.spawn(|| (0..5_000).for_each(|_| RX.inc()));
        s.spawn(|| (0..3_000).for_each(|_| TX.inc()));
        s.spawn(|| CACHE_MISSES.add(42));
    });
    std::thread::sleep(Duration::from_millis(20));
    evcnt::write_table(std::io::stdout().lock(), Some(&before))?;
    assert_eq!(RX.value(), 5_000);
    assert_eq!(TX.value(), 3_000);
    Ok(())
}
