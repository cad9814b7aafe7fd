//! What the report says about the machine, and what the process uses.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use serde::Serialize;

/// The machine the figures were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// From `/proc/cpuinfo`.
    pub cpu_model: String,
    /// CPUs this process may use (`available_parallelism`).
    pub cpus: usize,
    /// `cpulocal::cpu::count()`: possible CPU ids.
    pub cpu_ids: usize,
    /// Operating system and kernel release.
    pub os: String,
    /// Target architecture.
    pub arch: String,
    /// `cpulocal::cpu::backend()`.
    pub backend: String,
    /// [`line_transfer_ns`] at the start of the run.
    pub line_transfer_ns: Option<f64>,
}

impl Machine {
    /// Looks at this machine.
    pub fn detect() -> Machine {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| format!(" {}", s.trim()))
            .unwrap_or_default();
        Machine {
            cpu_model: cpu_model().unwrap_or_else(|| "unknown CPU".to_string()),
            cpus: online_cpus(),
            cpu_ids: cpulocal::cpu::count(),
            os: format!("{}{kernel}", std::env::consts::OS),
            arch: std::env::consts::ARCH.to_string(),
            backend: cpulocal::cpu::backend().to_string(),
            line_transfer_ns: line_transfer_ns(TRANSFER_ROUND_TRIPS),
        }
    }
}

/// The CPUs this process may run on.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The processor's name, and on x86 its family, model and stepping: a VM's
/// name ("AMD EPYC") can stand for processors of different generations,
/// whose costs differ: the development VM's restartable add took 0.4 ns
/// in one release's full run and 1.4 ns on family 25, model 1.
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |key: &str| {
        info.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key && !v.trim().is_empty()).then(|| v.trim().to_string())
        })
    };
    let name = ["model name", "Hardware", "cpu model", "Model", "CPU part"]
        .iter()
        .find_map(|key| field(key))?;
    Some(match (field("cpu family"), field("model"), field("stepping")) {
        (Some(family), Some(model), Some(stepping)) => {
            format!("{name} (family {family}, model {model}, stepping {stepping})")
        }
        _ => name,
    })
}

/// Round trips of one [`line_transfer_ns`] probe: 1 to 10 ms on the
/// development VM.
pub const TRANSFER_ROUND_TRIPS: u32 = 20_000;

/// How long one [`line_transfer_ns`] probe may take: on a busy machine the
/// players wait for each other's turns a scheduler slice at a time.
const TRANSFER_DEADLINE: Duration = Duration::from_millis(50);

/// How long a cache line takes to go from one CPU to another: two threads
/// pinned to the first two CPUs this process may use take turns
/// incrementing one word, `round_trips` times each (fewer if that takes
/// longer than 50 ms), and the time is divided by the hand-offs. `None`
/// with fewer than two usable CPUs or where threads cannot be pinned.
///
/// On a virtual machine this moves when the host moves the virtual CPUs
/// (on the 2-vCPU development VM between about 22 and 200 ns), and every
/// lock whose operations hand lines between CPUs moves with it; the report
/// records it next to the figures.
pub fn line_transfer_ns(round_trips: u32) -> Option<f64> {
    let cpus = cpulocal::cpu::allowed().ok()?;
    let pair = [*cpus.first()?, *cpus.get(1)?];
    let turns = round_trips.checked_mul(2)?;
    let word = CachePadded::new(AtomicU32::new(0));
    let stop = CachePadded::new(AtomicBool::new(false));
    let pinned = [AtomicBool::new(false), AtomicBool::new(false)];
    let start_line = Barrier::new(2);
    let elapsed = thread::scope(|s| {
        let players: Vec<_> = pair
            .iter()
            .enumerate()
            .map(|(me, &cpu)| {
                let (word, stop, pinned, start_line) = (&word, &stop, &pinned, &start_line);
                s.spawn(move || {
                    let ok = cpulocal::cpu::set_affinity(&[cpu]).is_ok();
                    pinned[me].store(ok, Ordering::Relaxed);
                    start_line.wait();
                    // Both pinned, or neither plays (a lone player would wait
                    // for its partner's turn forever).
                    if !pinned.iter().all(|p| p.load(Ordering::Relaxed)) {
                        return None;
                    }
                    let started = Instant::now();
                    // Player `me` moves on the even or the odd turns.
                    let mut turn = me as u32;
                    while turn < turns && !stop.load(Ordering::Relaxed) {
                        if word.load(Ordering::Acquire) == turn {
                            word.store(turn + 1, Ordering::Release);
                            turn += 2;
                            if turn % 512 < 2 && started.elapsed() > TRANSFER_DEADLINE {
                                stop.store(true, Ordering::Relaxed);
                            }
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                    Some(started.elapsed())
                })
            })
            .collect();
        let times: Vec<_> = players.into_iter().map(|p| p.join().ok().flatten()).collect();
        times.into_iter().collect::<Option<Vec<_>>>()?.into_iter().max()
    })?;
    let handed = word.load(Ordering::Relaxed);
    (handed > 0).then(|| elapsed.as_secs_f64() * 1e9 / f64::from(handed))
}

/// One more than the highest possible CPU id, from
/// `/sys/devices/system/cpu/possible` (e.g. `0-3,8`).
pub fn possible_cpus() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").ok()?;
    parse_cpu_list(&text).map(|max| max + 1)
}

fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut max = None;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let n: usize = part.rsplit('-').next()?.trim().parse().ok()?;
        max = Some(max.map_or(n, |m: usize| m.max(n)));
    }
    max
}

/// This process's resident set size in bytes.
///
/// From `Rss` in `/proc/self/smaps_rollup`, which walks the page tables and
/// is exact; `VmRSS` in `/proc/self/status` (the fallback) is a per-CPU
/// batched counter on recent kernels, off by up to a few hundred KiB.
pub fn resident_bytes() -> Option<u64> {
    let kib = |file: &str, key: &str| -> Option<u64> {
        let text = std::fs::read_to_string(file).ok()?;
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    let kib =
        kib("/proc/self/smaps_rollup", "Rss:").or_else(|| kib("/proc/self/status", "VmRSS:"))?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_transfer_probe() {
        let usable = cpulocal::cpu::allowed().map_or(0, |c| c.len());
        let ns = line_transfer_ns(1_000);
        if usable < 2 {
            assert_eq!(ns, None);
        } else {
            // A hand-off between CPUs takes more than nothing and, even
            // with the players descheduled now and then, far less than
            // 10 ms on average.
            let ns = ns.expect("two usable CPUs, yet no figure");
            assert!(ns > 0.0 && ns < 1e7, "{ns} ns");
        }
        assert_eq!(line_transfer_ns(u32::MAX), None, "turns overflow");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n"), Some(0));
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(11));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list(""), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn resident_grows_when_touched() {
        let before = resident_bytes().unwrap();
        // Written page by page through `black_box`, so that an optimized
        // build can neither drop the vector nor leave it untouched.
        let mut v = std::hint::black_box(vec![0u8; 32 << 20]);
        for page in v.chunks_mut(4096) {
            page[0] = 1;
        }
        let v = std::hint::black_box(v);
        let after = resident_bytes().unwrap();
        assert!(after >= before + (16 << 20), "{before} -> {after}");
        drop(v);
    }
}
