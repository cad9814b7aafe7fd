//! The untyped percpu(9) surface: allocation, zeroing, overlap, growth and
//! bad input.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;

use cpulocal::cpu;
use cpulocal::percpu::{self, AllocError, Percpu};

/// A small deterministic generator, so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Checks that every CPU's copy of `p` holds `byte` in every position.
fn check_all(p: &Percpu, byte: u8, what: &str) {
    p.foreach(|cpu, ptr| {
        // SAFETY: `size()` bytes at `ptr` are this test's allocation.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, p.size()) };
        if let Some(i) = bytes.iter().position(|&b| b != byte) {
            panic!("{what}: CPU {cpu} byte {i} of {} is {:#x}, want {byte:#x}", p.size(), bytes[i]);
        }
    });
}

fn fill_all(p: &Percpu, byte: u8) {
    // SAFETY: `size()` bytes at `ptr` are this test's allocation.
    p.foreach(|_, ptr| unsafe { ptr.write_bytes(byte, p.size()) });
}

/// Many threads allocate and free concurrently. Every fresh allocation must
/// read zero on every CPU (also when it reuses freed space), and each thread
/// writes its own pattern into all its live copies and checks it later: an
/// overlap with any other live allocation would overwrite one of them.
#[test]
fn concurrent_alloc_free_zeroed_and_disjoint() {
    let threads = 4;
    let rounds = common::scaled(3000);
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let mut live: Vec<(Percpu, u8)> = Vec::new();
                barrier.wait();
                for round in 0..rounds {
                    if live.len() < 32 && rng.below(3) != 0 {
                        let size = 1 + rng.below(300) as usize;
                        let align = 1 << rng.below(8);
                        let p = Percpu::alloc_aligned(size, align).expect("alloc");
                        assert_eq!(p.size(), size);
                        assert_eq!(p.get_remote(0).unwrap() as usize % align, 0, "misaligned");
                        check_all(&p, 0, "fresh allocation");
                        let byte = (t as u8 + 1) | ((round as u8) << 3);
                        fill_all(&p, byte);
                        live.push((p, byte));
                    } else if !live.is_empty() {
                        let i = rng.below(live.len() as u64) as usize;
                        let (p, byte) = live.swap_remove(i);
                        check_all(&p, byte, "live allocation before free");
                    }
                }
                for (p, byte) in &live {
                    check_all(p, *byte, "live allocation at the end");
                }
            });
        }
    });
}

/// Freed space is reused, and reads zero again when it is.
#[test]
fn reused_space_reads_zero() {
    for _ in 0..100 {
        let p = Percpu::alloc(40).unwrap();
        check_all(&p, 0, "allocation");
        fill_all(&p, 0xa5);
    }
}

/// Updates racing with growth are never lost, and traversals stay valid,
/// while another thread makes the regions grow by many megabytes.
#[test]
fn growth_loses_no_update_and_traversals_stay_safe() {
    // Alone in a process, so that the regions really grow.
    if !common::is_child() {
        return common::in_child("growth_loses_no_update_and_traversals_stay_safe", &[]);
    }
    let counter = Percpu::alloc_aligned(8, 8).unwrap();
    let word = |ptr: *mut u8| {
        // SAFETY: 8 aligned bytes of `counter`, used only atomically.
        unsafe { AtomicU64::from_ptr(ptr.cast()) }
    };
    let committed_before = percpu::stats().committed;
    let done = AtomicBool::new(false);
    let walking = AtomicBool::new(false);
    let adds = common::scaled(200_000);
    let grown = std::thread::scope(|s| {
        let grower = s.spawn(|| {
            while !walking.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            // 16 MiB per CPU in 4 KiB pieces: hundreds of commits.
            let held: Vec<Percpu> = (0..4096).map(|_| Percpu::alloc(4096).unwrap()).collect();
            done.store(true, Ordering::Release);
            held.len()
        });
        let walker = s.spawn(|| {
            let mut walks = 0u64;
            while !done.load(Ordering::Acquire) || walks == 0 {
                walking.store(true, Ordering::Release);
                let mut sum = 0;
                counter.foreach(|_, p| sum += word(p).load(Ordering::Relaxed));
                assert!(sum <= 2 * adds as u64);
                walks += 1;
            }
            walks
        });
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..adds {
                    word(counter.getref().as_ptr()).fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let grown = grower.join().unwrap();
        assert!(walker.join().unwrap() > 0);
        grown
    });
    assert_eq!(grown, 4096);
    let mut sum = 0;
    counter.foreach(|_, p| sum += word(p).load(Ordering::Relaxed));
    assert_eq!(sum, 2 * adds as u64, "an update was lost while the regions grew");
    assert!(percpu::stats().committed > committed_before, "the regions did not grow");
}

/// 1,000,000 eight-byte objects cost 8 MB per CPU, not a page or a cache
/// line each.
#[test]
fn a_million_counters_are_dense() {
    // Alone in a process: the statistics are process-wide.
    if !common::is_child() {
        return common::in_child("a_million_counters_are_dense", &[]);
    }
    let before = percpu::stats();
    let n = common::scaled(1_000_000);
    let all: Vec<Percpu> = (0..n).map(|_| Percpu::alloc(8).unwrap()).collect();
    let after = percpu::stats();
    let grew = after.in_use - before.in_use;
    assert!(grew >= 8 * n && grew < 8 * n + 8 * n / 10, "in use grew by {grew} for {n} objects");
    assert!(after.committed <= after.in_use * 2 + (1 << 20), "committed {after:?}");
    // Consecutive objects are 8 bytes apart in each region.
    let a = all[n / 2].get_remote(0).unwrap() as usize;
    let b = all[n / 2 + 1].get_remote(0).unwrap() as usize;
    assert_eq!(a.abs_diff(b), 8, "objects are not packed");
}

#[test]
fn bad_input_is_an_error() {
    assert_eq!(Percpu::alloc(0).unwrap_err(), AllocError::ZeroSize);
    assert_eq!(Percpu::alloc_aligned(8, 0).unwrap_err(), AllocError::BadAlign { align: 0 });
    assert_eq!(Percpu::alloc_aligned(8, 24).unwrap_err(), AllocError::BadAlign { align: 24 });
    assert_eq!(Percpu::alloc_aligned(8, 8192).unwrap_err(), AllocError::BadAlign { align: 8192 });
    let reserved = percpu::stats().reserved;
    assert!(matches!(Percpu::alloc(usize::MAX), Err(AllocError::TooLarge { .. })));
    assert!(matches!(Percpu::alloc(reserved + 1), Err(AllocError::TooLarge { .. })));
    // Messages say what was wrong.
    assert!(AllocError::BadAlign { align: 24 }.to_string().contains("24"));
    // The failures lost nothing: allocation still works and reads zero.
    let p = Percpu::alloc(16).unwrap();
    check_all(&p, 0, "after errors");
    assert!(p.get_remote(cpu::count()).is_none());
    assert!(p.get_remote(usize::MAX).is_none());
}

/// An allocation bigger than what is left fails cleanly, and everything
/// allocated before keeps working.
#[test]
fn exhausting_a_region_is_an_error_not_a_crash() {
    let reserved = percpu::stats().reserved;
    let keep = Percpu::alloc(8).unwrap();
    fill_all(&keep, 7);
    // `keep` holds part of the region, so a whole region's worth cannot fit.
    let err = Percpu::alloc(reserved).unwrap_err();
    assert!(matches!(err, AllocError::TooLarge { .. }), "{err}");
    check_all(&keep, 7, "earlier allocation");
    let after = Percpu::alloc(8).unwrap();
    check_all(&after, 0, "allocation after the failure");
}

#[test]
fn getref_points_at_the_current_cpu_copy() {
    let p = Percpu::alloc(8).unwrap();
    let cpus = cpu::allowed().unwrap();
    for (step, _) in cpus.iter().enumerate() {
        common::hop(&cpus, step);
        let r = p.getref();
        assert_eq!(r.cpu(), cpus[step % cpus.len()]);
        assert_eq!(r.as_ptr(), p.get_remote(r.cpu()).unwrap());
    }
    cpu::set_affinity(&cpus).unwrap();
}

/// Resident memory of this process, in pages (`/proc/self/statm`).
#[cfg(target_os = "linux")]
fn resident_pages() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Freed per-CPU memory goes back to the system: 64 MiB per CPU, written in
/// full and freed, leaves resident memory within a few pages of where it
/// started; the space is then reused (nothing more is committed).
#[test]
#[cfg(target_os = "linux")]
fn freed_memory_goes_back_to_the_system() {
    if !common::is_child() {
        return common::in_child("freed_memory_goes_back_to_the_system", &[]);
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let small = Percpu::alloc(8).unwrap(); // the regions exist
    let size = 64 << 20;
    let start = resident_pages();
    let big = Percpu::alloc_aligned(size, page.min(4096)).unwrap();
    big.foreach(|_, ptr| {
        for off in (0..size).step_by(page) {
            // SAFETY: `size` bytes per CPU, just allocated; this thread
            // alone uses them.
            unsafe { ptr.add(off).write(1) };
        }
    });
    let touched = resident_pages();
    let cpus = cpu::count();
    assert!(
        touched >= start + cpus * (size / page) * 9 / 10,
        "writing 64 MiB per CPU: {start} -> {touched} pages"
    );
    let committed = percpu::stats().committed;
    drop(big);
    let freed = resident_pages();
    eprintln!("resident pages: start {start}, touched {touched}, freed {freed}");
    assert!(freed <= start + 16, "freeing left {} pages resident", freed.saturating_sub(start));
    // The arena reuses the space, and what it hands out reads zero,
    // without becoming resident where no CPU touched it.
    let again = Percpu::alloc_aligned(size, page.min(4096)).unwrap();
    assert_eq!(percpu::stats().committed, committed, "freed space not reused");
    let reused = resident_pages();
    assert!(
        reused <= freed + 16,
        "reusing freed space made {} pages resident",
        reused.saturating_sub(freed)
    );
    again.foreach(|_, ptr| {
        for off in (0..size).step_by(page).chain([size - 1]) {
            // SAFETY: as above.
            assert_eq!(unsafe { ptr.add(off).read() }, 0, "byte {off} of a reused copy");
        }
    });
    drop((again, small));
}
