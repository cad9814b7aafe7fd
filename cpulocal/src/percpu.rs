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
use std::ptr::NonNull;

use crate::{cpu, region};

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
                region::UNIT
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
    Stats { committed, in_use, reserved: region::UNIT }
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
    pub fn alloc_aligned(size: usize, align: usize) -> Result<Percpu, AllocError> {
        if size == 0 {
            return Err(AllocError::ZeroSize);
        }
        if !align.is_power_of_two() || align > region::MAX_ALIGN {
            return Err(AllocError::BadAlign { align });
        }
        if size > region::UNIT {
            return Err(AllocError::TooLarge { size });
        }
        let ptr0 = region::alloc(size, align)?;
        Ok(Percpu { ptr0, size })
    }

    /// The size of each CPU's copy, in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The current CPU's copy (`percpu_getref`). Dropping the reference is
    /// `percpu_putref`. The thread may migrate meanwhile: see the
    /// [module docs](self).
    #[inline]
    pub fn getref(&self) -> PercpuRef<'_> {
        let cpu = cpu::current();
        PercpuRef { cpu, ptr: self.slot(cpu), _marker: PhantomData }
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
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// The copy: `size()` bytes, aligned as allocated, valid while the
    /// `Percpu` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl fmt::Debug for PercpuRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PercpuRef").field("cpu", &self.cpu).field("ptr", &self.ptr).finish()
    }
}
