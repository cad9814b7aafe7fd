//! The untyped percpu(9) surface: raw bytes that exist once per CPU.
//!
//! [`Percpu::alloc`] reserves `size` zeroed bytes at the same offset in every
//! CPU's region; [`Percpu::getref`] finds the current CPU's copy,
//! [`Percpu::get_remote`] any CPU's, [`Percpu::foreach`] walks them all.
//! Dropping the `Percpu` frees it (`percpu_free`).
//!
//! Unlike the kernel's `percpu_getref`, user space cannot stop the thread from
//! migrating: the copy a [`PercpuRef`] points at may belong to another CPU a
//! moment later, and other threads on that CPU use it too. Access it with
//! atomics or a lock, or use the typed layers ([`CpuLocal`](crate::CpuLocal),
//! [`Counter`](crate::Counter)) that do this for you.

use std::error::Error;
use std::fmt;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::{cpu, region, sys};

/// Why an allocation failed. Nothing was allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocError {
    /// A size of zero was asked for.
    ZeroSize,
    /// The alignment is not a power of two, or above the page size (4096).
    BadAlign {
        /// The alignment asked for.
        align: usize,
    },
    /// There is no room for `size` more bytes in the per-CPU regions.
    TooLarge {
        /// The size asked for.
        size: usize,
    },
    /// The system refused address space or memory.
    System(String),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::ZeroSize => f.write_str("per-CPU allocation of zero bytes"),
            AllocError::BadAlign { align } => write!(
                f,
                "per-CPU alignment {align} is not a power of two no larger than {}",
                region::MAX_ALIGN
            ),
            AllocError::TooLarge { size } => write!(
                f,
                "no room for {size} more bytes per CPU (each CPU's region holds {} bytes)",
                region::unit()
            ),
            AllocError::System(msg) => f.write_str(msg),
        }
    }
}

impl Error for AllocError {}

/// Memory use of the per-CPU regions, the same in every CPU's region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Bytes of each region that are readable and writable. They cost memory
    /// only where touched.
    pub committed: usize,
    /// Bytes of each region held by live allocations.
    pub in_use: usize,
    /// Bytes of address space reserved for each region.
    pub reserved: usize,
}

/// The current memory use of the per-CPU regions.
///
/// ```
/// let before = cpulocal::percpu::stats();
/// let p = cpulocal::percpu::Percpu::alloc(64).unwrap();
/// let after = cpulocal::percpu::stats();
/// assert!(after.in_use >= 64 && after.committed >= after.in_use);
/// # drop((before, p));
/// ```
pub fn stats() -> Stats {
    let (committed, in_use) = region::usage();
    Stats { committed, in_use, reserved: region::unit() }
}

/// `size` bytes, zero-filled, that exist once for every CPU id.
///
/// ```
/// use cpulocal::percpu::Percpu;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let p = Percpu::alloc(8).unwrap();
/// // Count on the current CPU's copy (atomically: the thread may migrate).
/// let r = p.getref();
/// // SAFETY: the copy is 8 zeroed, aligned bytes, used only through atomics.
/// unsafe { AtomicU64::from_ptr(r.as_ptr().cast()) }.fetch_add(1, Ordering::Relaxed);
/// drop(r); // putref
///
/// let mut total = 0;
/// p.foreach(|_cpu, ptr| {
///     // SAFETY: as above.
///     total += unsafe { AtomicU64::from_ptr(ptr.cast()) }.load(Ordering::Relaxed)
/// });
/// assert_eq!(total, 1);
/// ```
pub struct Percpu {
    /// Slot 0's copy; slot `s`'s is `region::slot_ptr(ptr0, s)`.
    ptr0: NonNull<u8>,
    size: usize,
}

// SAFETY: a Percpu owns an offset in memory that lives for the whole process;
// it hands out raw pointers only, whose use is the caller's responsibility.
unsafe impl Send for Percpu {}
// SAFETY: as above: `&Percpu` only computes addresses.
unsafe impl Sync for Percpu {}

impl Percpu {
    /// Allocates `size` zeroed bytes per CPU, aligned to
    /// `min(size.next_power_of_two(), 16)`.
    ///
    /// ```
    /// let p = cpulocal::percpu::Percpu::alloc(24).unwrap();
    /// assert_eq!(p.size(), 24);
    /// assert!(cpulocal::percpu::Percpu::alloc(0).is_err());
    /// ```
    ///
    /// # Errors
    /// As [`alloc_aligned`](Self::alloc_aligned); nothing is allocated.
    pub fn alloc(size: usize) -> Result<Percpu, AllocError> {
        let align = size.checked_next_power_of_two().unwrap_or(16).clamp(1, 16);
        Percpu::alloc_aligned(size, align)
    }

    /// Allocates `size` zeroed bytes per CPU at an address that is a multiple
    /// of `align` (a power of two, at most 4096) in every CPU's region.
    ///
    /// ```
    /// use cpulocal::percpu::{AllocError, Percpu};
    /// let p = Percpu::alloc_aligned(100, 64).unwrap();
    /// assert_eq!(p.getref().as_ptr() as usize % 64, 0);
    /// assert_eq!(Percpu::alloc_aligned(8, 3).unwrap_err(), AllocError::BadAlign { align: 3 });
    /// ```
    ///
    /// # Errors
    /// Nothing is allocated, and:
    /// - [`AllocError::ZeroSize`] if `size` is 0;
    /// - [`AllocError::BadAlign`] if `align` is not a power of two or is
    ///   above 4096;
    /// - [`AllocError::TooLarge`] if `size` bytes do not fit in what is
    ///   left of a CPU's region;
    /// - [`AllocError::System`] if the system refuses to commit the memory.
    pub fn alloc_aligned(size: usize, align: usize) -> Result<Percpu, AllocError> {
        if size == 0 {
            return Err(AllocError::ZeroSize);
        }
        if !align.is_power_of_two() || align > region::MAX_ALIGN {
            return Err(AllocError::BadAlign { align });
        }
        if size > region::unit() {
            return Err(AllocError::TooLarge { size });
        }
        let ptr0 = region::alloc(size, align)?;
        Ok(Percpu { ptr0, size })
    }

    /// The size of each CPU's copy, in bytes.
    ///
    /// ```
    /// assert_eq!(cpulocal::percpu::Percpu::alloc(100).unwrap().size(), 100);
    /// ```
    pub fn size(&self) -> usize {
        self.size
    }

    /// The current CPU's copy (`percpu_getref`). Dropping the reference is
    /// `percpu_putref`. The thread may migrate meanwhile: see the
    /// [module docs](self).
    ///
    /// ```
    /// let p = cpulocal::percpu::Percpu::alloc(8).unwrap();
    /// let r = p.getref();
    /// assert!(r.cpu() < cpulocal::cpu::count());
    /// assert_eq!(Some(r.as_ptr()), p.get_remote(r.cpu()));
    /// ```
    #[inline]
    pub fn getref(&self) -> PercpuRef<'_> {
        let (cpu, ptr) = current_slot(self.ptr0);
        PercpuRef { cpu, ptr, _marker: PhantomData }
    }

    /// The copy of CPU `cpu`, or `None` if `cpu >= cpu::count()`.
    ///
    /// ```
    /// let p = cpulocal::percpu::Percpu::alloc(8).unwrap();
    /// assert!(p.get_remote(0).is_some());
    /// assert!(p.get_remote(cpulocal::cpu::count()).is_none());
    /// ```
    #[inline]
    pub fn get_remote(&self, cpu: usize) -> Option<*mut u8> {
        (cpu < cpu::count()).then(|| self.slot(cpu))
    }

    /// Calls `f(cpu, ptr)` for every CPU id in ascending order
    /// (`percpu_foreach`). Safe while other objects are allocated and the
    /// regions grow.
    ///
    /// ```
    /// let p = cpulocal::percpu::Percpu::alloc(4).unwrap();
    /// let mut cpus = Vec::new();
    /// p.foreach(|cpu, ptr| {
    ///     // SAFETY: every copy is 4 zero-filled bytes; nobody else uses them.
    ///     assert_eq!(unsafe { ptr.cast::<u32>().read() }, 0);
    ///     cpus.push(cpu);
    /// });
    /// assert_eq!(cpus, (0..cpulocal::cpu::count()).collect::<Vec<_>>());
    /// ```
    pub fn foreach(&self, mut f: impl FnMut(usize, *mut u8)) {
        for cpu in 0..cpu::count() {
            f(cpu, self.slot(cpu));
        }
    }

    /// The copy in `slot` (a CPU id or [`cpu::spill_slot`]), unchecked.
    #[inline(always)]
    pub(crate) fn slot(&self, slot: usize) -> *mut u8 {
        region::slot_ptr(self.ptr0, slot)
    }

    /// Slot 0's copy, from which restartable sequences find the others.
    #[inline(always)]
    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr0.as_ptr()
    }
}

impl Drop for Percpu {
    fn drop(&mut self) {
        // SAFETY: `ptr0`/`size` came from `region::alloc`, and `&mut self`
        // means no `PercpuRef` borrows it any more.
        unsafe { region::free(self.ptr0, self.size) };
    }
}

impl fmt::Debug for Percpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Percpu").field("size", &self.size).field("ptr0", &self.ptr0).finish()
    }
}

/// The current CPU's copy of a [`Percpu`], from [`Percpu::getref`].
///
/// Tied to the thread that took it (it is not `Send`); dropping it is
/// `percpu_putref`.
#[must_use = "a PercpuRef is only useful for its pointer"]
pub struct PercpuRef<'a> {
    cpu: usize,
    ptr: *mut u8,
    _marker: PhantomData<(&'a Percpu, *mut ())>,
}

impl PercpuRef<'_> {
    /// The CPU whose copy this is (where the thread was when it took it).
    ///
    /// ```
    /// let p = cpulocal::percpu::Percpu::alloc(8).unwrap();
    /// assert!(p.getref().cpu() < cpulocal::cpu::count());
    /// ```
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// The copy: `size()` bytes, aligned as allocated, valid while the
    /// `Percpu` lives.
    ///
    /// ```
    /// let p = cpulocal::percpu::Percpu::alloc_aligned(64, 64).unwrap();
    /// assert_eq!(p.getref().as_ptr() as usize % 64, 0);
    /// ```
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl fmt::Debug for PercpuRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PercpuRef").field("cpu", &self.cpu).field("ptr", &self.ptr).finish()
    }
}

/// Slot 0's copy of a per-CPU object allocated on first use: null until
/// then, published once (see [`publish_lazily`]).
pub(crate) struct LazyPtr {
    /// Slot 0's copy, or null until allocated.
    ptr0: AtomicPtr<u8>,
}

impl LazyPtr {
    pub(crate) const fn new() -> LazyPtr {
        LazyPtr { ptr0: AtomicPtr::new(ptr::null_mut()) }
    }

    /// Slot 0's copy, if allocated. The acquire load pairs with the
    /// publishing exchange, so the zeroed bytes are visible.
    #[inline(always)]
    pub(crate) fn get(&self) -> Option<NonNull<u8>> {
        NonNull::new(self.ptr0.load(Ordering::Acquire))
    }

    /// Slot 0's copy, or null if not allocated yet (same ordering as
    /// [`get`](Self::get)).
    #[inline(always)]
    pub(crate) fn get_raw(&self) -> *mut u8 {
        self.ptr0.load(Ordering::Acquire)
    }

    /// Slot 0's copy, allocating `size` bytes aligned to `align` per CPU on
    /// first use (see [`publish_lazily`]).
    #[inline]
    pub(crate) fn get_or_alloc(
        &self,
        size: usize,
        align: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        match self.get() {
            Some(ptr0) => Ok(ptr0),
            None => publish_lazily(self, size, align),
        }
    }

    /// Slot 0's copy, if allocated, for the owner.
    pub(crate) fn get_mut(&mut self) -> Option<NonNull<u8>> {
        NonNull::new(*self.ptr0.get_mut())
    }
}

/// A [`Percpu`] that a `const fn` can make: the per-CPU bytes are allocated
/// on first use, so that per-CPU objects can live in a `static`.
///
/// The fast path is one load of the base pointer (a plain `mov` on x86-64)
/// and a test for null. Threads that race to the
/// first use each allocate; one publishes its allocation and the others
/// free theirs, so every thread sees the same zero-filled copies. A failed
/// allocation is not remembered here (the regions remember a refused
/// reservation for a moment, see `region`): the next use tries again.
pub(crate) struct LazyPercpu {
    ptr: LazyPtr,
    size: usize,
    align: usize,
}

impl LazyPercpu {
    /// `size` bytes aligned to `align` per CPU, allocated on first use.
    /// Invalid sizes or alignments are reported by [`get_or_alloc`].
    ///
    /// [`get_or_alloc`]: Self::get_or_alloc
    pub(crate) const fn new(size: usize, align: usize) -> LazyPercpu {
        LazyPercpu { ptr: LazyPtr::new(), size, align }
    }

    /// Slot 0's copy, if allocated.
    #[inline(always)]
    pub(crate) fn get(&self) -> Option<NonNull<u8>> {
        self.ptr.get()
    }

    /// The pointer and the fast path's bound.
    #[inline(always)]
    pub(crate) fn lazy_ptr(&self) -> &LazyPtr {
        &self.ptr
    }

    /// Slot 0's copy, allocating every CPU's copy on first use.
    #[inline]
    pub(crate) fn get_or_alloc(&self) -> Result<NonNull<u8>, AllocError> {
        match self.get() {
            Some(ptr0) => Ok(ptr0),
            None => self.alloc_slow(),
        }
    }

    #[cold]
    fn alloc_slow(&self) -> Result<NonNull<u8>, AllocError> {
        publish_lazily(&self.ptr, self.size, self.align)
    }

    /// As [`get_or_alloc`](Self::get_or_alloc), for callers with a way to
    /// go on without the memory: `None` at once, building no error, while
    /// the system's refusal of the regions stands.
    #[inline]
    pub(crate) fn get_or_try_alloc(&self) -> Option<NonNull<u8>> {
        match self.get() {
            Some(ptr0) => Some(ptr0),
            None if region::refusal_stands() => None,
            None => self.alloc_slow().ok(),
        }
    }

    /// The copy in `slot` (a CPU id or [`cpu::spill_slot`]) of slot 0's copy
    /// `ptr0`, unchecked.
    #[inline(always)]
    pub(crate) fn slot(ptr0: NonNull<u8>, slot: usize) -> *mut u8 {
        region::slot_ptr(ptr0, slot)
    }

    /// The size of each CPU's copy, in bytes.
    #[allow(dead_code)] // kept for the typed lazy layers to come
    pub(crate) fn size(&self) -> usize {
        self.size
    }
}

impl Drop for LazyPercpu {
    fn drop(&mut self) {
        if let Some(ptr0) = self.ptr.get_mut() {
            // SAFETY: `ptr0` was published by `publish_lazily(size, ..)`,
            // and `&mut self` means no copy is in use any more.
            unsafe { free_published(ptr0, self.size) };
        }
    }
}

/// Allocates `size` bytes aligned to `align` per CPU and publishes slot 0's
/// copy in `lazy`, unless another thread published first: then ours is
/// freed and theirs returned. The first use of a [`LazyPercpu`], shared
/// with per-CPU objects that know their size without storing it.
///
/// A small copy is kept off the page offset of `lazy`'s cache line (see
/// [`ALIAS_BITS`]), where the object's fast path loads its pointer (and a
/// lock its word) right after storing to a copy.
#[cold]
pub(crate) fn publish_lazily(
    lazy: &LazyPtr,
    size: usize,
    align: usize,
) -> Result<NonNull<u8>, AllocError> {
    let mut ours = Percpu::alloc_aligned(size, align)?;
    let home = lazy as *const LazyPtr as usize;
    if size <= 64 && shares_page_offset(ours.ptr0.as_ptr() as usize, home) {
        // The first is held while the next is placed, so the next lands
        // elsewhere; aligned to a line, it is a line away at least. Should
        // it share the offset too (a page apart), the first is kept.
        if let Ok(other) = Percpu::alloc_aligned(size, align.max(64)) {
            if !shares_page_offset(other.ptr0.as_ptr() as usize, home) {
                ours = other;
            }
        }
    }
    match lazy.ptr0.compare_exchange(
        ptr::null_mut(),
        ours.ptr0.as_ptr(),
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => {
            let published = ours.ptr0;
            std::mem::forget(ours);
            Ok(published)
        }
        // Another thread published first; `ours` is freed on return.
        // SAFETY: only non-null pointers are ever published.
        Err(theirs) => Ok(unsafe { NonNull::new_unchecked(theirs) }),
    }
}

/// The address bits within a page, at cache-line granularity, that the CPU
/// compares to decide whether a load may depend on an earlier store still
/// in flight. A load whose address matches a pending store's there, though
/// the pages differ ("4K aliasing"), waits for the store: a read lock and
/// unlock whose lock word shared its page offset with its counts took 1.42
/// to 1.52 ns instead of 1.15 on the development machine (AMD EPYC), and
/// the same store-then-load shape is in every per-CPU add.
const ALIAS_BITS: usize = 0xFC0;

/// Whether `a` and `b` sit at the same cache-line offset within their pages.
fn shares_page_offset(a: usize, b: usize) -> bool {
    (a ^ b) & ALIAS_BITS == 0
}

/// The current CPU and its copy, given slot 0's copy `ptr0` of a per-CPU
/// allocation: by the inline add's test where the thread's fast path is
/// armed (two loads, a comparison and a constant shift: see
/// `sys::rseq::fast_cpu`), else by [`cpu::current`], after which the thread
/// decides, once, whether it has the fast path. A hint, as
/// [`cpu::current`] is: the thread may move on as soon as this returns.
#[inline(always)]
pub(crate) fn current_slot(ptr0: NonNull<u8>) -> (usize, *mut u8) {
    match sys::rseq::fast_cpu(ptr0.as_ptr()) {
        Some(cpu) => (cpu, ptr0.as_ptr().wrapping_add(cpu << sys::rseq::SEQ_SHIFT)),
        None => current_slot_slow(ptr0),
    }
}

#[inline(never)]
fn current_slot_slow(ptr0: NonNull<u8>) -> (usize, *mut u8) {
    let cpu = cpu::current();
    if sys::rseq::HAS_PERCPU_OPS {
        cpu::arm_fast_path();
    }
    (cpu, region::slot_ptr(ptr0, cpu))
}

/// Frees what [`publish_lazily`] published.
///
/// # Safety
/// `ptr0` was published by `publish_lazily` with this `size`, and no copy
/// is used again.
pub(crate) unsafe fn free_published(ptr0: NonNull<u8>, size: usize) {
    // SAFETY: (the caller's) `ptr0`/`size` came from
    // `Percpu::alloc_aligned`, forgotten when published.
    unsafe { region::free(ptr0, size) };
}

impl fmt::Debug for LazyPercpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyPercpu")
            .field("size", &self.size)
            .field("ptr0", &self.ptr.ptr0.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{shares_page_offset, LazyPercpu};

    /// A lazily allocated copy never shares its cache line's page offset
    /// with its pointer (4K aliasing). The pointers sit at every line of a
    /// page in turn while the arena hands out copies one after another, so
    /// without the check some copy lands on its pointer's offset.
    #[test]
    fn lazy_copies_keep_off_their_pointers_page_offset() {
        let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        let mut shared = Vec::new();
        for round in 0..4 {
            // SAFETY: the layout has a non-zero size.
            let page = unsafe { std::alloc::alloc(layout) };
            assert!(!page.is_null());
            let lazies: Vec<*mut LazyPercpu> = (0..64)
                .map(|line| {
                    // SAFETY: line * 64 is within the page, aligned for a
                    // `LazyPercpu`, and each line holds one.
                    let at = unsafe { page.add(line * 64) }.cast::<LazyPercpu>();
                    // SAFETY: as above; the memory is ours and uninit.
                    unsafe { at.write(LazyPercpu::new(16, 16)) };
                    at
                })
                .collect();
            for (line, &lazy) in lazies.iter().enumerate() {
                // SAFETY: written above and not yet dropped.
                let lazy = unsafe { &*lazy };
                let copy = lazy.get_or_alloc().unwrap().as_ptr() as usize;
                let home = lazy.lazy_ptr() as *const _ as usize;
                if shares_page_offset(copy, home) {
                    shared.push((round, line, copy));
                }
            }
            for lazy in lazies {
                // SAFETY: each was written once above; dropping frees its copies.
                unsafe { lazy.drop_in_place() };
            }
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(page, layout) };
        }
        assert!(shared.is_empty(), "copies on their pointer's page offset: {shared:x?}");
    }

    #[test]
    fn lazy_allocates_once_zeroed_and_frees() {
        static LAZY: LazyPercpu = LazyPercpu::new(8, 8);
        assert!(LAZY.get().is_none());
        let ptrs: Vec<usize> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| LAZY.get_or_alloc().unwrap().as_ptr() as usize))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ptrs.windows(2).all(|w| w[0] == w[1]), "racing first uses disagree: {ptrs:?}");
        let ptr0 = LAZY.get().unwrap();
        for slot in 0..crate::cpu::slots() {
            // SAFETY: every slot's 8 bytes are allocated and aligned.
            assert_eq!(unsafe { LazyPercpu::slot(ptr0, slot).cast::<u64>().read() }, 0);
        }
        let local = LazyPercpu::new(4096, 4096);
        assert_eq!(local.get_or_alloc().unwrap().as_ptr() as usize % 4096, 0);
        drop(local);
        assert!(LazyPercpu::new(8, 3).get_or_alloc().is_err());
    }
}
