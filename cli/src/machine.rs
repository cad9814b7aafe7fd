//! What the report says about the machine, and what the process uses.

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
        }
    }
}

/// The CPUs this process may run on.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    ["model name", "Hardware", "cpu model", "Model", "CPU part"].iter().find_map(|key| {
        info.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
        })
    })
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
