//! The per-CPU regions: one address range per CPU slot, all at the same
//! offsets.
//!
//! ```text
//!  base                base + UNIT          base + 2*UNIT
//!  | slot 0 (CPU 0)     | slot 1 (CPU 1)     | ... | spill slot |
//!  [committed|reserved] [committed|reserved]        [...]
//! ```
//!
//! The whole range is reserved once, without access, when the first object
//! is allocated. An offset from the [`Arena`] is valid in every slot; slot
//! `s`'s copy is at `base + offset + (s << UNIT_SHIFT)`. Growing means
//! committing more pages at the end of every slot's committed prefix
//! (`mprotect`): nothing moves and nothing is copied, so addresses handed out
//! earlier stay valid, updates racing the growth land where they always
//! would, and a traversal reading any slot is safe throughout. See DESIGN.md
//! for why this replaces percpu(9)'s copy-and-swap.

use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::arena::Arena;
use crate::cpu;
use crate::percpu::AllocError;
use crate::sys::{self, Reservation};

/// Bytes of address space per slot.
pub(crate) const UNIT: usize = 1 << sys::UNIT_SHIFT;

/// Granularity of commits: every slot grows by at least this much at once.
const COMMIT_STEP: usize = 64 << 10;

/// The largest alignment an allocation may ask for (slots are page-aligned).
pub(crate) const MAX_ALIGN: usize = 4096;

struct Regions {
    res: Reservation,
    slots: usize,
    state: Mutex<State>,
}

struct State {
    arena: Arena,
    /// Bytes at the start of every slot that are readable and writable.
    committed: usize,
}

fn regions() -> Result<&'static Regions, AllocError> {
    static REGIONS: OnceLock<Result<Regions, String>> = OnceLock::new();
    REGIONS
        .get_or_init(|| {
            let slots = cpu::slots();
            let len = slots.checked_mul(UNIT).ok_or_else(|| {
                format!("{slots} CPU slots of {UNIT} bytes overflow the address space")
            })?;
            let res = Reservation::new(len)
                .map_err(|e| format!("cannot reserve {len} bytes of address space: {e}"))?;
            Ok(Regions {
                res,
                slots,
                state: Mutex::new(State { arena: Arena::new(UNIT), committed: 0 }),
            })
        })
        .as_ref()
        .map_err(|msg| AllocError::System(msg.clone()))
}

/// The address of `slot`'s copy, given slot 0's.
#[inline(always)]
pub(crate) fn slot_ptr(ptr0: NonNull<u8>, slot: usize) -> *mut u8 {
    ptr0.as_ptr().wrapping_add(slot << sys::UNIT_SHIFT)
}

/// Allocates `size` bytes aligned to `align` in every slot, all zero.
/// Returns slot 0's copy. The caller has validated `size` and `align`.
pub(crate) fn alloc(size: usize, align: usize) -> Result<NonNull<u8>, AllocError> {
    let regions = regions()?;
    let mut state = regions.state.lock().unwrap_or_else(PoisonError::into_inner);
    let high_water = state.arena.high_water();
    let offset = state.arena.alloc(size, align).ok_or(AllocError::TooLarge { size })?;
    let end = offset + size;
    if end > state.committed {
        if let Err(e) = grow(regions, &mut state, end) {
            state.arena.free(offset, size);
            return Err(e);
        }
    }
    // SAFETY: `offset < UNIT` and the reservation spans `slots * UNIT` bytes.
    let ptr0 = unsafe { NonNull::new_unchecked(regions.res.base().add(offset)) };
    // Memory above the high-water mark was never handed out: still zero.
    // Below it, it may hold a freed object's bytes: clear every slot's copy.
    let dirty = end.min(high_water).saturating_sub(offset);
    if dirty > 0 {
        for slot in 0..regions.slots {
            // SAFETY: `[offset, offset + size)` is committed in every slot
            // and belongs to nobody else (the arena just handed it out).
            unsafe { slot_ptr(ptr0, slot).write_bytes(0, dirty) };
        }
    }
    Ok(ptr0)
}

/// Commits every slot up to at least `end` bytes.
#[cold]
fn grow(regions: &Regions, state: &mut State, end: usize) -> Result<(), AllocError> {
    let want = end.next_multiple_of(COMMIT_STEP).max(state.committed * 2).min(UNIT);
    let extra = want - state.committed;
    for slot in 0..regions.slots {
        regions
            .res
            .commit(slot * UNIT + state.committed, extra)
            .map_err(|e| AllocError::System(format!("cannot commit per-CPU memory: {e}")))?;
    }
    state.committed = want;
    Ok(())
}

/// Returns an allocation made by [`alloc`].
///
/// # Safety
/// `ptr0` and `size` come from one [`alloc`] call, and no copy is used again.
pub(crate) unsafe fn free(ptr0: NonNull<u8>, size: usize) {
    let Ok(regions) = regions() else { return };
    let offset = ptr0.as_ptr() as usize - regions.res.base() as usize;
    let mut state = regions.state.lock().unwrap_or_else(PoisonError::into_inner);
    state.arena.free(offset, size);
}

/// Per-CPU bytes committed and in use, for statistics.
pub(crate) fn usage() -> (usize, usize) {
    match regions() {
        Ok(r) => {
            let state = r.state.lock().unwrap_or_else(PoisonError::into_inner);
            (state.committed, state.arena.in_use())
        }
        Err(_) => (0, 0),
    }
}
