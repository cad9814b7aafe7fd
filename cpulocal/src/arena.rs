//! Offset allocator for the per-CPU unit (the role vmem(9) plays for percpu(9)).
//!
//! Invariants, kept by every method:
//! - `free` maps start -> end of each free block `[start, end)`: blocks are non-empty,
//!   disjoint and never adjacent (freeing coalesces), and all lie below `high`.
//! - Every byte below `high` is either allocated or in exactly one free block, so
//!   `used + (free bytes) == high`; no byte at or above `high` was ever handed out.
//! - `high <= limit`, and `high` never decreases.
//!
//! Because free blocks are maximal runs, first-fit over them followed by bump allocation
//! (starting inside a free block that ends at `high`) returns the lowest aligned offset
//! whose range overlaps no live allocation and ends at or below `limit`.

use std::collections::BTreeMap;

/// Offset allocator for the per-CPU unit: first-fit over an address-ordered free list, coalescing on free, bump allocation above the high-water mark.
#[derive(Debug)]
pub(crate) struct Arena {
    /// Free blocks below `high`, keyed by start offset, valued by end offset.
    free: BTreeMap<usize, usize>,
    high: usize,
    used: usize,
    limit: usize,
}

/// Rounds `x` up to a multiple of `align` (a power of two), or `None` on overflow.
fn align_up(x: usize, align: usize) -> Option<usize> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

impl Arena {
    /// An empty arena whose offsets stay below `limit` bytes.
    pub(crate) const fn new(limit: usize) -> Arena {
        Arena { free: BTreeMap::new(), high: 0, used: 0, limit }
    }

    /// Allocates `size` bytes aligned to `align` (power of two, size > 0: the caller checks).
    /// Returns the offset, or `None` when it does not fit below `limit`.
    pub(crate) fn alloc(&mut self, size: usize, align: usize) -> Option<usize> {
        debug_assert!(size > 0, "zero-sized allocation");
        debug_assert!(align.is_power_of_two(), "alignment {align} is not a power of two");
        // First fit among the free blocks below the high-water mark.
        let fit = self.free.iter().find_map(|(&start, &end)| {
            let at = align_up(start, align)?;
            (at.checked_add(size)? <= end).then_some((start, at))
        });
        let (base, at, end) = match fit {
            Some((start, at)) => (start, at, self.free[&start]),
            None => {
                // Bump from `high`, or from the start of a free block that ends there.
                let base = match self.free.last_key_value() {
                    Some((&start, &end)) if end == self.high => start,
                    _ => self.high,
                };
                let at = align_up(base, align)?;
                let end = at.checked_add(size)?;
                if end > self.limit {
                    return None;
                }
                self.high = end;
                (base, at, end)
            }
        };
        // Carve `[at, at + size)` out of `[base, end)`; padding and tail stay free.
        self.free.remove(&base);
        if base < at {
            self.free.insert(base, at);
        }
        if at + size < end {
            self.free.insert(at + size, end);
        }
        self.used += size;
        Some(at)
    }

    /// Returns `[offset, offset + size)` (exactly as allocated) to the free list,
    /// merging with free neighbours.
    pub(crate) fn free(&mut self, offset: usize, size: usize) {
        let mut start = offset;
        let mut end = offset + size;
        debug_assert!(size > 0 && end <= self.high && size <= self.used);
        if let Some((&prev, &prev_end)) = self.free.range(..offset).next_back() {
            debug_assert!(prev_end <= offset, "double free at {offset}");
            if prev_end == offset {
                self.free.remove(&prev);
                start = prev;
            }
        }
        debug_assert!(self.free.range(offset..end).next().is_none(), "double free at {offset}");
        if let Some(next_end) = self.free.remove(&end) {
            end = next_end;
        }
        self.free.insert(start, end);
        self.used -= size;
    }

    /// The free blocks `[start, end)` below the high-water mark, in address
    /// order (maximal runs: no two are adjacent).
    pub(crate) fn free_blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.free.iter().map(|(&start, &end)| (start, end))
    }

    /// High-water mark: no byte at or above it was ever handed out (so memory there is
    /// still zero). Never decreases.
    pub(crate) fn high_water(&self) -> usize {
        self.high
    }

    /// Bytes currently allocated (for stats/tests).
    pub(crate) fn in_use(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::Arena;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Checks the invariants documented at the top of the file.
    fn check_invariants(a: &Arena) {
        let mut prev_end = None;
        let mut free_bytes = 0;
        for (&start, &end) in &a.free {
            assert!(start < end && end <= a.high, "bad block [{start}, {end})");
            assert!(prev_end.is_none_or(|p| p < start), "uncoalesced at {start}");
            prev_end = Some(end);
            free_bytes += end - start;
        }
        assert_eq!(a.used + free_bytes, a.high);
        assert!(a.high <= a.limit);
    }

    /// Reference: the lowest `align`-aligned offset whose range misses every live
    /// allocation and ends at or below `limit`.
    fn model_fit(
        live: &BTreeMap<usize, usize>,
        size: usize,
        align: usize,
        limit: usize,
    ) -> Option<usize> {
        let mut cursor = 0usize;
        for (&off, &len) in live {
            let at = cursor.next_multiple_of(align);
            if at + size <= off {
                return Some(at);
            }
            cursor = off + len;
        }
        let at = cursor.next_multiple_of(align);
        (at + size <= limit).then_some(at)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(usize, usize),
        Free(prop::sample::Index),
    }

    fn op() -> impl Strategy<Value = Op> {
        let align = prop::sample::select(vec![1usize, 2, 4, 8, 16, 64, 4096]);
        prop_oneof![
            3 => (1usize..=256, align).prop_map(|(s, a)| Op::Alloc(s, a)),
            2 => any::<prop::sample::Index>().prop_map(Op::Free),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_model(limit in 1usize..=20_000, ops in prop::collection::vec(op(), 1..200)) {
            let mut arena = Arena::new(limit);
            let mut live = BTreeMap::new(); // offset -> size
            let mut high = 0;
            for op in ops {
                match op {
                    Op::Alloc(size, align) => {
                        let got = arena.alloc(size, align);
                        prop_assert_eq!(got, model_fit(&live, size, align, limit));
                        if let Some(at) = got {
                            prop_assert_eq!(at % align, 0);
                            prop_assert!(at + size <= limit);
                            let before = live.range(..at + size).next_back();
                            prop_assert!(before.is_none_or(|(&o, &l)| o + l <= at), "overlap at {}", at);
                            live.insert(at, size);
                            high = high.max(at + size);
                        }
                    }
                    Op::Free(idx) if !live.is_empty() => {
                        let (&at, &size) = live.iter().nth(idx.index(live.len())).unwrap();
                        live.remove(&at);
                        arena.free(at, size);
                    }
                    Op::Free(_) => {}
                }
                check_invariants(&arena);
                prop_assert!(arena.high_water() >= high, "high-water mark decreased");
                prop_assert_eq!(arena.high_water(), high);
                prop_assert_eq!(arena.in_use(), live.values().sum::<usize>());
            }
            for (at, size) in std::mem::take(&mut live) {
                arena.free(at, size);
            }
            check_invariants(&arena);
            prop_assert_eq!(arena.in_use(), 0);
            if high > 0 {
                prop_assert_eq!(arena.alloc(high, 1), Some(0), "free space not coalesced");
                prop_assert_eq!(arena.high_water(), high);
            }
        }
    }

    #[test]
    fn reuses_freed_space() {
        let mut a = Arena::new(1 << 16);
        let x = a.alloc(24, 8).unwrap();
        let y = a.alloc(100, 4).unwrap();
        let z = a.alloc(8, 8).unwrap();
        assert_eq!((x, y, z), (0, 24, 128));
        a.free(y, 100);
        assert_eq!(a.in_use(), 32);
        assert_eq!(a.alloc(100, 4), Some(y));
        assert_eq!(a.high_water(), 136);
        // Alignment padding stays free and is reused by a later small allocation.
        a.free(x, 24);
        assert_eq!(a.alloc(8, 16), Some(0));
        assert_eq!(a.alloc(8, 1), Some(8));
        check_invariants(&a);
    }

    #[test]
    fn bump_starts_inside_trailing_free_block() {
        let mut a = Arena::new(1 << 16);
        let x = a.alloc(8, 8).unwrap();
        let y = a.alloc(8, 8).unwrap();
        a.free(y, 8);
        assert_eq!(a.alloc(16, 8), Some(8));
        assert_eq!(a.high_water(), 24);
        a.free(x, 8);
        check_invariants(&a);
    }

    #[test]
    fn respects_limit() {
        let mut a = Arena::new(100);
        assert_eq!(a.alloc(101, 1), None);
        assert_eq!(a.alloc(60, 1), Some(0));
        assert_eq!(a.alloc(20, 128), None);
        assert_eq!(a.alloc(41, 1), None);
        assert_eq!((a.high_water(), a.in_use()), (60, 60));
        assert_eq!(a.free.len(), 0);
        assert_eq!(a.alloc(40, 1), Some(60));
        assert_eq!(a.alloc(1, 1), None);
        check_invariants(&a);
    }

    #[test]
    fn huge_requests_return_none() {
        let mut a = Arena::new(4096);
        assert_eq!(a.alloc(usize::MAX, 1), None);
        let mut a = Arena::new(usize::MAX);
        assert_eq!(a.alloc(1, 1), Some(0));
        assert_eq!(a.alloc(usize::MAX, 1), None);
        assert_eq!(a.alloc(1, 1 << (usize::BITS - 1)), Some(1 << (usize::BITS - 1)));
        assert_eq!(a.alloc(1, 1 << (usize::BITS - 1)), None);
        assert_eq!((a.high_water(), a.in_use()), ((1 << (usize::BITS - 1)) + 1, 2));
        check_invariants(&a);
    }
}
