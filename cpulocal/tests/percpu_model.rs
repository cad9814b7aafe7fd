//! A proptest state machine for per-CPU allocation: random sequences of
//! `alloc`, `free`, `realloc` (free, then allocate anew: the space it
//! reuses is dirty) and writes, run against a model of what is live.
//!
//! After every step: each live object's copy on every CPU holds exactly what
//! was last written to it (zero if nothing: a fresh or reallocated object
//! reads zero everywhere), no two live objects overlap, each is aligned as
//! asked, `get_remote` and `foreach` agree, and the regions' `in_use`
//! statistic is the model's total. `src/arena.rs` checks the offsets the
//! allocator picks; this checks the memory behind them, through the
//! public surface, including growth of the regions.
//!
//! The only test in its binary: `percpu::stats()` is process-wide.

use proptest::prelude::*;

use cpulocal::cpu;
use cpulocal::percpu::{self, Percpu};

#[derive(Clone, Debug)]
enum Op {
    /// `Percpu::alloc_aligned(size, align)`.
    Alloc { size: usize, align: usize },
    /// Drop a live object.
    Free(prop::sample::Index),
    /// Fill a live object with its pattern, then free it and allocate
    /// `size` bytes with the same alignment in its place.
    Realloc(prop::sample::Index, usize),
    /// Fill every CPU's copy of a live object with its own pattern.
    Write(prop::sample::Index),
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 1usize..=64,
        4 => 65usize..=600,
        // Past a commit step: the regions grow.
        1 => 60_000usize..=140_000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let align = prop::sample::select(vec![1usize, 2, 4, 8, 16, 64, 256, 4096]);
    prop_oneof![
        4 => (size(), align).prop_map(|(size, align)| Op::Alloc { size, align }),
        2 => any::<prop::sample::Index>().prop_map(Op::Free),
        2 => (any::<prop::sample::Index>(), size()).prop_map(|(i, s)| Op::Realloc(i, s)),
        3 => any::<prop::sample::Index>().prop_map(Op::Write),
    ]
}

/// A live object and what its copies should hold.
struct Live {
    p: Percpu,
    align: usize,
    /// The byte every copy is filled with (0 until written).
    byte: u8,
}

/// Every CPU's copy of `p`, as a byte slice.
fn copies(p: &Percpu) -> Vec<(usize, &[u8])> {
    let mut out = Vec::with_capacity(cpu::count());
    p.foreach(|c, at| {
        // SAFETY: `size()` bytes at each copy belong to `p`, which outlives
        // the slices; no one writes them while they are borrowed.
        out.push((c, unsafe { std::slice::from_raw_parts(at.cast_const(), p.size()) }));
    });
    out
}

fn fill(live: &mut Live, byte: u8) {
    let size = live.p.size();
    // SAFETY: `size()` bytes at each copy belong to this object, and only
    // this thread uses it.
    live.p.foreach(|_, at| unsafe { at.write_bytes(byte, size) });
    live.byte = byte;
}

fn alloc(size: usize, align: usize) -> Result<Live, TestCaseError> {
    let p = Percpu::alloc_aligned(size, align)
        .map_err(|e| TestCaseError::fail(format!("alloc({size}, {align}): {e}")))?;
    Ok(Live { p, align, byte: 0 })
}

/// Checks everything the module docs promise about the live objects.
fn check(live: &[Live], base_in_use: usize) -> Result<(), TestCaseError> {
    let mut ranges = Vec::with_capacity(live.len());
    for (i, l) in live.iter().enumerate() {
        let seen = copies(&l.p);
        prop_assert_eq!(seen.len(), cpu::count());
        for (c, bytes) in seen {
            prop_assert_eq!(l.p.get_remote(c), Some(bytes.as_ptr().cast_mut()));
            prop_assert_eq!(bytes.as_ptr() as usize % l.align, 0, "object {} misaligned", i);
            if let Some(at) = bytes.iter().position(|&b| b != l.byte) {
                return Err(TestCaseError::fail(format!(
                    "object {i} ({} bytes): CPU {c} byte {at} is {:#x}, want {:#x}",
                    l.p.size(),
                    bytes[at],
                    l.byte
                )));
            }
        }
        let start = l.p.get_remote(0).unwrap() as usize;
        ranges.push((start, start + l.p.size()));
    }
    // Copies of all objects sit at the same offsets in every CPU's region,
    // so disjoint copies on CPU 0 mean disjoint copies everywhere.
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        prop_assert!(w[0].1 <= w[1].0, "objects overlap: {:x?} and {:x?}", w[0], w[1]);
    }
    let in_use = live.iter().map(|l| l.p.size()).sum::<usize>();
    prop_assert_eq!(percpu::stats().in_use, base_in_use + in_use);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn allocations_match_the_model(ops in prop::collection::vec(op(), 1..120)) {
        let base_in_use = percpu::stats().in_use;
        let mut live: Vec<Live> = Vec::new();
        // Patterns differ from one write to the next, and are never zero.
        let mut next_byte = 0u8;
        let mut pattern = || {
            next_byte = next_byte % 255 + 1;
            next_byte
        };
        for op in ops {
            match op {
                Op::Alloc { size, align } => live.push(alloc(size, align)?),
                Op::Free(i) if !live.is_empty() => {
                    live.swap_remove(i.index(live.len()));
                }
                Op::Realloc(i, size) if !live.is_empty() => {
                    let i = i.index(live.len());
                    fill(&mut live[i], pattern());
                    let align = live[i].align;
                    drop(live.swap_remove(i));
                    live.push(alloc(size, align)?);
                }
                Op::Write(i) if !live.is_empty() => {
                    let i = i.index(live.len());
                    fill(&mut live[i], pattern());
                }
                Op::Free(_) | Op::Realloc(..) | Op::Write(_) => {}
            }
            check(&live, base_in_use)?;
        }
        drop(live);
        prop_assert_eq!(percpu::stats().in_use, base_in_use, "freed objects still counted");
    }
}
