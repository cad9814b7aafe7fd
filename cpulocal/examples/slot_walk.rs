//! What a walk over every CPU's copy of one object costs, by where the
//! copies sit: the library's layout (one region per CPU, 1 GiB apart, so
//! every copy has the same page offset) against copies shifted by a cache
//! line, or by a page and a line, per CPU.
//!
//! ```sh
//! cargo run --release -p cpulocal --example slot_walk                # 9 to 1,025 slots
//! cargo run --release -p cpulocal --example slot_walk -- 17 65       # any slot counts
//! ```
//!
//! It uses no per-CPU code: it reserves address space as the library does
//! (`MAP_NORESERVE`, so only the pages touched cost memory), writes one
//! `u64` per slot, then times a walk that reads them all twice, as
//! `RwLock::write` sums its unlock and then its lock counts. Copies at the
//! same page offset share one set of the L1 cache (8 or 12 ways), and past
//! a few hundred slots one set of the TLB; shifted copies spread over the
//! sets. Medians of five batches of about 20 ms.

use std::env;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Bytes between two slots' regions, as the library reserves them.
const UNIT: usize = 1 << 30;

/// Where in its region each slot's word sits (any offset would do).
const OFFSET: usize = 3 * 4096 + 256;

/// Extra bytes between one slot's word and the next's, on top of `UNIT`.
const SHIFTS: [(usize, &str); 3] = [(0, "none"), (64, "64 B"), (4096 + 64, "4 KiB + 64 B")];

fn main() {
    let mut counts = Vec::new();
    for arg in env::args().skip(1) {
        match arg.parse::<usize>() {
            Ok(n) if n > 0 => counts.push(n),
            _ => {
                eprintln!("slot_walk: expected slot counts (positive numbers), got {arg:?}");
                std::process::exit(2);
            }
        }
    }
    let counts = if counts.is_empty() { vec![9, 13, 17, 33, 65, 257, 1025] } else { counts };
    println!("ns per two-pass walk, by the shift between slots' copies");
    print!("{:>6}", "slots");
    for (_, name) in SHIFTS {
        print!("{name:>16}");
    }
    println!();
    for slots in counts {
        print!("{slots:>6}");
        for (shift, _) in SHIFTS {
            match walk_ns(slots, shift) {
                Some(ns) => print!("{ns:>16.1}"),
                None => print!("{:>16}", "no space"),
            }
        }
        println!();
    }
}

/// Median ns per two-pass walk over `slots` words, each `UNIT + shift`
/// bytes after the last; `None` if the address space cannot be reserved.
fn walk_ns(slots: usize, shift: usize) -> Option<f64> {
    let stride = UNIT + shift;
    let len = slots.checked_mul(stride)?.checked_add(UNIT)?;
    // SAFETY: a fresh private anonymous mapping, owned here and unmapped
    // below; no other code knows its address.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let words: Vec<*mut u64> =
        (0..slots).map(|s| base.cast::<u8>().wrapping_add(s * stride + OFFSET).cast()).collect();
    for &w in &words {
        // SAFETY: inside the mapping (`s * stride + OFFSET + 8 <= len`), aligned.
        unsafe { w.write_volatile(1) };
    }
    let walk = || {
        let mut sum = 0u64;
        for _ in 0..2 {
            for &w in &words {
                // SAFETY: as above.
                sum = sum.wrapping_add(unsafe { w.read_volatile() });
            }
        }
        black_box(sum);
    };
    let mut batches = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_millis(20) {
            for _ in 0..64 {
                walk();
            }
            n += 64;
        }
        batches.push(start.elapsed().as_nanos() as f64 / f64::from(n));
    }
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(base, len) };
    batches.sort_by(f64::total_cmp);
    Some(batches[batches.len() / 2])
}
