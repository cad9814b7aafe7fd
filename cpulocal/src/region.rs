//! The per-CPU regions: one address range per CPU slot, all at the same
//! offsets.
//!
//! ```text
//!  base                base + unit          base + 2*unit
//!  | slot 0 (CPU 0)     | slot 1 (CPU 1)     | ... | spill slot |
//!  [committed|reserved] [committed|reserved]        [...]
//! ```
//!
//! The whole range is reserved once, without access, when the first object
//! is allocated. An offset from the [`Arena`] is valid in every slot; slot
//! `s`'s copy is at `base + offset + (s << unit_shift)`. Growing means
//! committing more pages at the end of every slot's committed prefix
//! (`mprotect`): nothing moves and nothing is copied, so addresses handed out
//! earlier stay valid, updates racing the growth land where they always
//! would, and a traversal reading any slot is safe throughout. See DESIGN.md
//! for why this replaces percpu(9)'s copy-and-swap.
//!
//! The slot size (`unit_shift`) is chosen when the range is reserved: 1 GiB
//! per slot if the system grants it, else half as much, and so on down to
//! `sys::MIN_UNIT_SHIFT` (`RLIMIT_AS`, small address spaces). A refused
//! reservation is remembered for [`RESERVE_RETRY`]: allocations meanwhile
//! fail at once with the same error, and the first one after it tries
//! again. (Each try is a dozen refused `mmap` calls, tens of microseconds;
//! a counter or lock whose per-CPU memory is refused falls back to shared
//! words and asks again at each use, so without this every count paid for
//! a try: a read lock + unlock 34 us against 6 ns for parking_lot's.)
//!
//! Freeing gives memory back: each time another [`RELEASE_MIN`] bytes have
//! been freed, the whole pages of every free run at least that long are
//! released (`MADV_DONTNEED`) in every slot; they read zero and cost memory
//! again only when reused. So at most `RELEASE_MIN` freed bytes (and runs
//! shorter than it) stay resident, and freeing small objects costs a system
//! call only once per `RELEASE_MIN` bytes freed.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use crate::arena::Arena;
use crate::cpu;
use crate::percpu::AllocError;
use crate::sys::{self, Reservation};

/// Bytes of address space per slot (fixed once the regions exist; before,
/// the largest size that will be tried).
#[inline(always)]
pub(crate) fn unit() -> usize {
    1 << sys::unit_shift()
}

/// Granularity of commits: every slot grows by at least this much at once.
const COMMIT_STEP: usize = 64 << 10;

/// Free runs at least this long have their whole pages given back to the
/// system, each time this many more bytes have been freed (module docs).
pub(crate) const RELEASE_MIN: usize = 64 << 10;

/// The largest alignment an allocation may ask for (slots are page-aligned).
pub(crate) const MAX_ALIGN: usize = 4096;

struct Regions {
    res: Reservation,
    slots: usize,
    unit: usize,
    page: usize,
    state: Mutex<State>,
}

struct State {
    arena: Arena,
    /// Bytes at the start of every slot that are readable and writable.
    committed: usize,
    /// Bytes freed since free runs were last released.
    unreleased: usize,
}

/// The regions, once reserved.
static REGIONS: OnceLock<Regions> = OnceLock::new();

/// How long a refused reservation is remembered (module docs).
pub(crate) const RESERVE_RETRY: Duration = Duration::from_millis(100);

/// Until when (in [`sys::monotonic_ns`]) the last refusal of the regions
/// stands; 0: none.
static REFUSED_UNTIL: AtomicU64 = AtomicU64::new(0);

/// Whether the last refusal to reserve the regions stands (a clock read).
fn refused_now() -> bool {
    let until = REFUSED_UNTIL.load(Ordering::Acquire);
    until != 0 && sys::monotonic_ns() < until
}

/// Whether the regions do not exist and the system's refusal to reserve
/// them stands: an allocation now would fail at once.
pub(crate) fn refusal_stands() -> bool {
    REGIONS.get().is_none() && refused_now()
}

fn regions() -> Result<&'static Regions, AllocError> {
    static RESERVING: Mutex<()> = Mutex::new(());
    /// The last refusal, repeated while it stands (read-locked by every
    /// allocation meanwhile: shared, they do not queue).
    static REFUSAL: RwLock<Option<AllocError>> = RwLock::new(None);
    let standing = || {
        refused_now().then(|| {
            let refusal = REFUSAL.read().unwrap_or_else(PoisonError::into_inner);
            refusal.clone().unwrap_or_else(|| AllocError::System("address space refused".into()))
        })
    };
    if let Some(regions) = REGIONS.get() {
        return Ok(regions);
    }
    if let Some(e) = standing() {
        return Err(e);
    }
    let _reserving = RESERVING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(regions) = REGIONS.get() {
        return Ok(regions);
    }
    // Refused to another thread while we waited for the lock?
    if let Some(e) = standing() {
        return Err(e);
    }
    let regions = match reserve() {
        Ok(regions) => regions,
        Err(e) => {
            *REFUSAL.write().unwrap_or_else(PoisonError::into_inner) = Some(e.clone());
            let retry = u64::try_from(RESERVE_RETRY.as_nanos()).unwrap_or(u64::MAX);
            REFUSED_UNTIL
                .store(sys::monotonic_ns().saturating_add(retry).max(1), Ordering::Release);
            return Err(e);
        }
    };
    // Every per-CPU address computation reads the shift: fix it before the
    // first object is handed out (publishing through REGIONS orders it).
    sys::set_unit_shift(regions.unit.trailing_zeros());
    let regions = REGIONS.get_or_init(|| regions);
    sys::at_fork(lock_before_fork, unlock_after_fork);
    Ok(regions)
}

thread_local! {
    /// The state lock [`lock_before_fork`] took, until the fork is over.
    static HELD_OVER_FORK: std::cell::RefCell<Option<std::sync::MutexGuard<'static, State>>> =
        const { std::cell::RefCell::new(None) };
}

/// Before `fork`: takes the state lock, so that no other thread holds it
/// while the process is copied. A child forked while another thread
/// allocated or freed per-CPU memory otherwise found it locked for good,
/// and its first allocation (a new `Counter`'s first add) waited forever.
/// The state lock is taken with no other lock of this crate held.
extern "C" fn lock_before_fork() {
    if let Some(regions) = REGIONS.get() {
        let state = regions.state.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = HELD_OVER_FORK.try_with(|held| *held.borrow_mut() = Some(state));
    }
}

/// After `fork`, on both sides: releases what [`lock_before_fork`] took.
extern "C" fn unlock_after_fork() {
    let _ = HELD_OVER_FORK.try_with(|held| drop(held.borrow_mut().take()));
}

/// Reserves the largest regions the system grants, or says why none.
#[cold]
fn reserve() -> Result<Regions, AllocError> {
    let slots = cpu::slots();
    let mut last = String::new();
    for shift in (sys::MIN_UNIT_SHIFT..=sys::MAX_UNIT_SHIFT).rev() {
        let unit = 1usize << shift;
        let Some(len) = slots.checked_mul(unit) else { continue };
        match Reservation::new(len) {
            Ok(res) => {
                return Ok(Regions {
                    res,
                    slots,
                    unit,
                    page: sys::page_size(),
                    state: Mutex::new(State {
                        arena: Arena::new(unit),
                        committed: 0,
                        unreleased: 0,
                    }),
                })
            }
            Err(e) => last = format!("cannot reserve {len} bytes of address space: {e}"),
        }
    }
    if last.is_empty() {
        last = format!("{slots} CPU slots overflow the address space");
    }
    Err(AllocError::System(last))
}

/// The lowest address of the regions (0 before they are reserved; this
/// reserves nothing).
pub(crate) fn lowest_address() -> usize {
    REGIONS.get().map_or(0, |r| r.res.base() as usize)
}

/// The address of `slot`'s copy, given slot 0's.
#[inline(always)]
pub(crate) fn slot_ptr(ptr0: NonNull<u8>, slot: usize) -> *mut u8 {
    ptr0.as_ptr().wrapping_add(slot << sys::unit_shift())
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
            give_back(regions, &mut state, offset, size);
            return Err(e);
        }
    }
    // SAFETY: `offset < unit` and the reservation spans `slots * unit` bytes.
    let ptr0 = unsafe { NonNull::new_unchecked(regions.res.base().add(offset)) };
    // Memory above the high-water mark was never handed out: still zero.
    // Below it, it may hold a freed object's bytes: clear every slot's copy.
    let dirty = end.min(high_water).saturating_sub(offset);
    if dirty > 0 {
        clear(regions, offset, dirty);
    }
    Ok(ptr0)
}

/// Zeroes `[offset, offset + len)` in every slot. A run of at least
/// [`RELEASE_MIN`] bytes has its whole pages released instead of written:
/// freed runs that long were released already (module docs), so writing
/// zeros would make every slot's copy resident again, copies that no CPU
/// may ever touch (a 256 MiB object reused on 2 CPUs: 769 MiB resident,
/// the spill slot's copy included, against 1 MiB).
///
/// The caller holds the state lock, and the range was just handed out by
/// the arena: nobody else has a byte in it.
fn clear(regions: &Regions, offset: usize, len: usize) {
    let end = offset + len;
    let (from, to) = (offset.next_multiple_of(regions.page), end & !(regions.page - 1));
    let pages = if len >= RELEASE_MIN && from < to { Some((from, to)) } else { None };
    for slot in 0..regions.slots {
        let base = slot * regions.unit;
        // SAFETY: `[offset, end)` is committed in every slot and belongs to
        // nobody else (above); `[from, to)` lies inside it.
        unsafe {
            let at = |o: usize| regions.res.base().add(base + o);
            match pages {
                Some((from, to)) if regions.res.release(base + from, to - from) => {
                    at(offset).write_bytes(0, from - offset);
                    at(to).write_bytes(0, end - to);
                }
                _ => at(offset).write_bytes(0, len),
            }
        }
    }
}

/// Commits every slot up to at least `end` bytes.
#[cold]
fn grow(regions: &Regions, state: &mut State, end: usize) -> Result<(), AllocError> {
    let want = end.next_multiple_of(COMMIT_STEP).max(state.committed * 2).min(regions.unit);
    let extra = want - state.committed;
    for slot in 0..regions.slots {
        #[cfg(test)]
        tests::inject_commit_failure(slot)?;
        regions
            .res
            .commit(slot * regions.unit + state.committed, extra)
            .map_err(|e| AllocError::System(format!("cannot commit per-CPU memory: {e}")))?;
    }
    // On failure above, some slots have more pages writable than
    // `committed` says: harmless (untouched pages cost nothing), and the
    // next growth commits them again.
    state.committed = want;
    Ok(())
}

/// Returns an allocation made by [`alloc`]; see [`give_back`] for when
/// pages go back to the system.
///
/// # Safety
/// `ptr0` and `size` come from one [`alloc`] call, and no copy is used again.
pub(crate) unsafe fn free(ptr0: NonNull<u8>, size: usize) {
    let Ok(regions) = regions() else { return };
    let offset = ptr0.as_ptr() as usize - regions.res.base() as usize;
    let mut state = regions.state.lock().unwrap_or_else(PoisonError::into_inner);
    give_back(regions, &mut state, offset, size);
}

/// Returns `[offset, offset + size)` to the arena; once another
/// [`RELEASE_MIN`] bytes have been freed, releases the whole pages of every
/// free run at least that long.
fn give_back(regions: &Regions, state: &mut State, offset: usize, size: usize) {
    state.arena.free(offset, size);
    state.unreleased += size;
    if state.unreleased < RELEASE_MIN {
        return;
    }
    state.unreleased = 0;
    let page = regions.page;
    for (start, end) in state.arena.free_blocks().filter(|(s, e)| e - s >= RELEASE_MIN) {
        let (from, to) = (start.next_multiple_of(page), end & !(page - 1));
        if from >= to {
            continue;
        }
        for slot in 0..regions.slots {
            // SAFETY: `[from, to)` lies inside a free run, below the
            // high-water mark (so committed), in every slot; no live object
            // has a byte there, and the state lock (held by our caller)
            // keeps the arena from handing it out meanwhile.
            // Pages not released keep their bytes: `alloc` clears them.
            unsafe { regions.res.release(slot * regions.unit + from, to - from) };
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// The slot whose commit fails in this thread's next growth.
        static FAIL_COMMIT_AT: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// The injection point in [`grow`]: fails (once) when committing `slot`
    /// was set up to fail on this thread.
    pub(super) fn inject_commit_failure(slot: usize) -> Result<(), AllocError> {
        if FAIL_COMMIT_AT.with(Cell::get) == Some(slot) {
            FAIL_COMMIT_AT.with(|f| f.set(None));
            return Err(AllocError::System("injected commit failure".into()));
        }
        Ok(())
    }

    /// A commit refused half-way through growing the slots fails that
    /// allocation only: the arena takes the offset back (nothing leaks), and
    /// the next allocation grows the regions and works.
    #[test]
    fn growth_that_fails_half_way_leaks_nothing() {
        let regions = regions().unwrap();
        let mut keep = Vec::new();
        // Allocate until the next allocation needs to grow; the lock is not
        // held across calls, so other tests may allocate meanwhile: retry.
        for _ in 0..100 {
            let (committed, _) = usage();
            let big = committed.max(COMMIT_STEP);
            let (_, used_before) = usage();
            FAIL_COMMIT_AT.with(|f| f.set(Some(regions.slots / 2)));
            let got = alloc(big, 8);
            let injected = FAIL_COMMIT_AT.with(|f| f.get()).is_none();
            FAIL_COMMIT_AT.with(|f| f.set(None));
            match got {
                Err(AllocError::System(msg)) if injected => {
                    assert_eq!(msg, "injected commit failure");
                    let (_, used_after) = usage();
                    // Other tests' allocations may come and go, but ours did
                    // not stay: nothing of `big` bytes is still counted.
                    assert!(used_after < used_before + big, "{used_before} -> {used_after}");
                    let p = alloc(big, 8).expect("allocation after an injected failure");
                    for slot in 0..regions.slots {
                        // SAFETY: `big` bytes per slot, just allocated.
                        unsafe {
                            let at = slot_ptr(p, slot);
                            assert_eq!(at.read(), 0);
                            assert_eq!(at.add(big - 1).read(), 0);
                            at.add(big - 1).write(1);
                        }
                    }
                    // SAFETY: allocated above, not used again.
                    unsafe { free(p, big) };
                    for (p, size) in keep {
                        // SAFETY: allocated below, not used again.
                        unsafe { free(p, size) };
                    }
                    return;
                }
                Ok(p) => keep.push((p, big)), // grew elsewhere first: again
                Err(e) => panic!("unexpected failure: {e}"),
            }
        }
        panic!("never managed to inject a failure");
    }

    /// Freeing a large allocation releases its pages; the space is reused.
    #[test]
    fn freed_pages_are_reused_zeroed() {
        let size = 4 * RELEASE_MIN;
        let p = alloc(size, 4096).unwrap();
        for slot in 0..cpu::slots() {
            // SAFETY: `size` bytes per slot, just allocated.
            unsafe { slot_ptr(p, slot).write_bytes(0xa5, size) };
        }
        // SAFETY: allocated above, not used again.
        unsafe { free(p, size) };
        let q = alloc(size, 4096).unwrap();
        for slot in 0..cpu::slots() {
            // SAFETY: `size` bytes per slot, just allocated.
            let bytes = unsafe { std::slice::from_raw_parts(slot_ptr(q, slot), size) };
            assert!(bytes.iter().all(|&b| b == 0), "reused memory not zero in slot {slot}");
        }
        // SAFETY: allocated above, not used again.
        unsafe { free(q, size) };
    }
}
