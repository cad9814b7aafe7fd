//! Portable fallback: other operating systems, and Miri.
//!
//! No rseq, no CPU id from the kernel, no asymmetric fence. The per-CPU
//! storage is one zeroed allocation made up front, and sleeping is a short
//! `sleep` (callers always re-check their condition).

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// log2 of the bytes of each CPU's region (16 MiB, allocated up front; most
/// allocators map it lazily). A refused allocation is retried with regions
/// half as large, down to [`MIN_UNIT_SHIFT`].
pub(crate) const MAX_UNIT_SHIFT: u32 = 24;

/// log2 of the smallest region per CPU tried (1 MiB).
pub(crate) const MIN_UNIT_SHIFT: u32 = 20;

pub(crate) fn page_size() -> usize {
    4096
}

/// Cross-calls are unsupported here, so nothing needs to notice a fork.
pub(crate) fn fork_generation() -> u64 {
    0
}

/// Unknown here.
/// No `fork` to guard against here: does nothing.
pub(crate) fn at_fork(_before: extern "C" fn(), _after: extern "C" fn()) {}

pub(crate) fn runnable_threads() -> Option<(usize, usize)> {
    None
}

pub(crate) fn possible_cpus() -> Option<usize> {
    None
}

pub(crate) fn configured_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[inline]
pub(crate) fn getcpu() -> Option<usize> {
    None
}

pub(crate) struct Reservation {
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the reservation is plain memory; it hands out raw pointers only.
unsafe impl Send for Reservation {}
// SAFETY: as above; `commit` does nothing.
unsafe impl Sync for Reservation {}

impl Reservation {
    pub(crate) fn new(len: usize) -> io::Result<Reservation> {
        let layout = Layout::from_size_align(len.max(1), 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc::alloc_zeroed(layout) };
        let base = NonNull::new(base).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Reservation { base, layout })
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub(crate) fn commit(&self, offset: usize, len: usize) -> io::Result<()> {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.layout.size()));
        Ok(())
    }

    /// Portable code cannot give pages back: does nothing, and returns
    /// false (the range keeps its contents).
    ///
    /// # Safety
    /// Nothing in the range is in use.
    pub(crate) unsafe fn release(&self, offset: usize, len: usize) -> bool {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.layout.size()));
        false
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

pub(crate) fn futex_wait(_word: &AtomicU32, _expected: u32, timeout: Option<Duration>) {
    let nap = Duration::from_micros(50);
    std::thread::sleep(timeout.map_or(nap, |t| t.min(nap)));
}

pub(crate) fn futex_wake(_word: &AtomicU32, _n: i32) {}

pub(crate) mod affinity {
    use std::io;

    fn unsupported() -> io::Error {
        io::Error::new(io::ErrorKind::Unsupported, "CPU affinity is not supported on this platform")
    }

    pub(crate) fn allowed(_tid: i32, _max_cpus: usize) -> io::Result<Vec<usize>> {
        Err(unsupported())
    }

    pub(crate) fn process_allowed(_max_cpus: usize) -> io::Result<Vec<usize>> {
        Err(unsupported())
    }

    pub(crate) fn set_current(_cpus: &[usize]) -> io::Result<()> {
        Err(unsupported())
    }
}

pub(crate) mod membarrier {
    pub(crate) fn available() -> bool {
        false
    }

    pub(crate) fn heavy() -> bool {
        false
    }

    /// A full fence issued by the calling thread.
    #[inline(always)]
    pub(crate) fn full_fence() {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

pub(crate) mod rseq {
    use std::ptr::NonNull;

    pub(crate) enum Area {}

    pub(crate) const HAS_PERCPU_OPS: bool = false;

    pub(crate) fn set_limit(_count: usize) {}

    pub(crate) const SEQ_SHIFT: u32 = super::MAX_UNIT_SHIFT;

    pub(crate) fn fast_path_decided() -> bool {
        true
    }

    pub(crate) fn arm_fast_path(_applies: bool) {}

    /// No inline fast path: always the slow path.
    #[inline(always)]
    pub(crate) unsafe fn percpu_add_fast<const OFFSET: usize>(_base: *mut u8, _value: u64) -> bool {
        false
    }

    /// No armed fast path: the caller finds the CPU the general way.
    #[inline(always)]
    pub(crate) fn fast_cpu(_base: *mut u8) -> Option<usize> {
        None
    }

    pub(crate) fn pin_code() -> bool {
        false
    }

    #[inline(always)]
    pub(crate) fn current_area() -> Option<NonNull<Area>> {
        None
    }

    pub(crate) fn cpu_id(area: NonNull<Area>) -> u32 {
        // SAFETY: `Area` is uninhabited, so no pointer to one can be valid.
        match *unsafe { area.as_ref() } {}
    }

    pub(crate) fn register_current_thread() -> Option<NonNull<Area>> {
        None
    }

    pub(crate) fn probe() -> bool {
        false
    }

    /// # Safety
    /// Never callable: no `Area` exists on this platform.
    pub(crate) unsafe fn percpu_add(area: NonNull<Area>, _base: *mut u8, _value: u64) {
        // SAFETY: `Area` is uninhabited, so no pointer to one can be valid.
        match *unsafe { area.as_ref() } {}
    }

    /// # Safety
    /// Never callable: no `Area` exists on this platform.
    pub(crate) unsafe fn percpu_cmpeqv_storev(
        area: NonNull<Area>,
        _base: *mut u8,
        _expect: u64,
        _newv: u64,
    ) -> Result<usize, u64> {
        // SAFETY: `Area` is uninhabited, so no pointer to one can be valid.
        match *unsafe { area.as_ref() } {}
    }

    /// # Safety
    /// Never callable: no `Area` exists on this platform.
    pub(crate) unsafe fn percpu_cmpnev_storeoffp_load(
        area: NonNull<Area>,
        _base: *mut u8,
        _expectnot: u64,
        _off: usize,
    ) -> (usize, u64) {
        // SAFETY: `Area` is uninhabited, so no pointer to one can be valid.
        match *unsafe { area.as_ref() } {}
    }

    /// # Safety
    /// Never callable: no `Area` exists on this platform.
    pub(crate) unsafe fn percpu_store_on(
        area: NonNull<Area>,
        _base: *mut u8,
        _cpu: u32,
        _value: u64,
    ) -> bool {
        // SAFETY: `Area` is uninhabited, so no pointer to one can be valid.
        match *unsafe { area.as_ref() } {}
    }

    /// # Safety
    /// Never callable: no `Area` exists on this platform.
    pub(crate) unsafe fn percpu_cmpeqv_storev_on(
        area: NonNull<Area>,
        _base: *mut u8,
        _cpu: u32,
        _expect: u64,
        _newv: u64,
    ) -> Result<(), Option<u64>> {
        // SAFETY: `Area` is uninhabited, so no pointer to one can be valid.
        match *unsafe { area.as_ref() } {}
    }

    /// # Safety
    /// Never callable: no `Area` exists on this platform.
    pub(crate) unsafe fn percpu_cmpnev_storeoffp_load_on(
        area: NonNull<Area>,
        _base: *mut u8,
        _cpu: u32,
        _expectnot: u64,
        _off: usize,
    ) -> Option<u64> {
        // SAFETY: `Area` is uninhabited, so no pointer to one can be valid.
        match *unsafe { area.as_ref() } {}
    }
}
