//! Typed values per CPU: [`CpuLocal<T>`] for shared access and
//! [`LockedCpuLocal<T>`] for exclusive access under a per-CPU lock.
//!
//! The two are separate types so that the compiler, not a run-time check,
//! keeps `&T` handed to several threads away from `&mut T`: a `CpuLocal` has
//! no `lock`, and a `LockedCpuLocal` has no `get`.
//!
//! ```compile_fail
//! // Shared values carry no lock, so there is nothing to lock.
//! let c = cpulocal::CpuLocal::<u64>::new();
//! let _ = c.lock();
//! ```
//!
//! ```compile_fail
//! // Locked values are reached only through a guard.
//! let c = cpulocal::LockedCpuLocal::<u64>::new();
//! let _ = c.get();
//! ```
//!
//! Both are made by a `const fn` and so can be `static`s: every CPU's value
//! is built on first use.
//!
//! ```
//! use cpulocal::{CpuLocal, LockedCpuLocal};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! static HITS: CpuLocal<AtomicU64> = CpuLocal::new();
//! static RECENT: LockedCpuLocal<Vec<u32>> = LockedCpuLocal::new();
//!
//! HITS.get().fetch_add(1, Ordering::Relaxed);
//! RECENT.lock().push(42);
//! assert_eq!(HITS.iter().map(|(_, h)| h.load(Ordering::Relaxed)).sum::<u64>(), 1);
//! ```

mod locked;

use std::fmt;
use std::iter::FusedIterator;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::cpu;
use crate::percpu::{current_slot, AllocError, LazyPercpu};

pub use locked::{CpuLocalGuard, LockedCpuLocal, LockedIntoIter, LockedIterMut};

/// A value of type `T` for every CPU, shared by the threads that run there:
/// percpu(9) with types.
///
/// [`get`](Self::get) gives `&T` to the current CPU's value,
/// [`get_on`](Self::get_on) to any CPU's, [`iter`](Self::iter) walks them
/// all. Other threads on the same CPU, and threads that migrated, may hold
/// the same `&T` at the same time, so mutate through atomics or other
/// thread-safe interior mutability; for a value you need `&mut` to (a `Vec`,
/// a `RefCell`'s job), use [`LockedCpuLocal`]. A value costs `size_of::<T>()`
/// bytes per CPU, in that CPU's own region: no lock, no padding.
///
/// [`new`](Self::new) is a `const fn`: the values (`T::default()`) are built
/// for every CPU id below [`cpu::count()`] on first use, exactly once even if
/// threads race to it. [`with_init`](Self::with_init) builds them at once
/// (like NetBSD's `percpu_create`), and
/// [`with_init_in_place`](Self::with_init_in_place) builds them where they
/// live, never on the stack. Dropping a `CpuLocal` drops every CPU's value.
///
/// ```
/// use cpulocal::CpuLocal;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let hits: CpuLocal<AtomicU64> = CpuLocal::new();
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| {
///             for _ in 0..1000 {
///                 hits.get().fetch_add(1, Ordering::Relaxed);
///             }
///         });
///     }
/// });
/// let total: u64 = hits.iter().map(|(_cpu, n)| n.load(Ordering::Relaxed)).sum();
/// assert_eq!(total, 4000);
/// ```
///
/// # Thread safety
///
/// A `CpuLocal<T>` can be shared between threads when `T: Send + Sync`:
/// `Sync` because threads on one CPU share its `&T`, `Send` because the
/// thread that first uses a `CpuLocal` builds the values and another may
/// drop them. A value that is not `Sync`, such as a `Cell`, would be a data
/// race here and does not compile:
///
/// ```compile_fail
/// use cpulocal::CpuLocal;
/// static FLAGS: CpuLocal<std::cell::Cell<bool>> = CpuLocal::new();
/// ```
pub struct CpuLocal<T> {
    /// Slot 0's value once every CPU's value is built (published with
    /// release ordering after the build); null before.
    values: AtomicPtr<u8>,
    /// The per-CPU bytes: `SIZE` bytes aligned for `T`, once per CPU.
    storage: LazyPercpu,
    /// Builds a CPU's value on first use; `None` for values built at
    /// construction, until [`clear`](Self::clear) sets it.
    init: Option<fn(usize) -> T>,
    /// Held while the values are built on first use.
    building: Mutex<()>,
    _owns: PhantomData<T>,
}

// SAFETY: through `&CpuLocal<T>`, threads get `&T` to the same values at the
// same time (`T: Sync`), and the first to use it builds every value, which
// another thread may later drop or move out (`T: Send`). `&mut T` is only
// had through `&mut self`.
unsafe impl<T: Send + Sync> Sync for CpuLocal<T> {}

fn default_value<T: Default>(_cpu: usize) -> T {
    T::default()
}

impl<T: Default> CpuLocal<T> {
    /// Every CPU's value is `T::default()`, built on first use.
    ///
    /// A `const fn`: no memory is allocated and no value built until the
    /// first [`get`](Self::get), [`get_on`](Self::get_on), iteration or
    /// [`try_get`](Self::try_get).
    /// That first use builds every CPU's value while other first users wait;
    /// a `T::default()` that uses the same `CpuLocal` deadlocks (as a
    /// `LazyLock` whose initializer forces itself would).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// static OPEN: cpulocal::CpuLocal<AtomicUsize> = cpulocal::CpuLocal::new();
    ///
    /// OPEN.get().fetch_add(1, Ordering::Relaxed);
    /// assert_eq!(OPEN.iter().len(), cpulocal::cpu::count());
    /// ```
    pub const fn new() -> CpuLocal<T> {
        CpuLocal::lazy(Some(default_value::<T>))
    }

    /// Drops every CPU's value; the next use builds them again, with
    /// `T::default()` (the memory stays allocated for them).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let mut c = cpulocal::CpuLocal::with_init(|_| AtomicU64::new(5));
    /// c.clear();
    /// assert!(c.iter().all(|(_, v)| v.load(Ordering::Relaxed) == 0));
    /// ```
    pub fn clear(&mut self) {
        if let Some(ptr0) = NonNull::new(std::mem::replace(self.values.get_mut(), ptr::null_mut()))
        {
            // SAFETY: the values were built and nothing borrows them
            // (`&mut self`); `values` is null now, so they are dropped once.
            unsafe { drop_values::<T>(ptr0, 0) };
        }
        self.init = Some(default_value::<T>);
    }
}

impl<T: Default> Default for CpuLocal<T> {
    /// [`CpuLocal::new`].
    fn default() -> Self {
        CpuLocal::new()
    }
}

/// Drops the values of CPUs `from..count()`, in order.
///
/// # Safety
/// Those values must be built and dropped nowhere else, before or after.
unsafe fn drop_values<T>(ptr0: NonNull<u8>, from: usize) {
    for cpu in from..cpu::count() {
        // SAFETY: the caller guarantees the value is built and ours to drop.
        unsafe { LazyPercpu::slot(ptr0, cpu).cast::<T>().drop_in_place() };
    }
}

impl<T> CpuLocal<T> {
    /// Bytes per CPU: a zero-sized `T` still takes one, as allocations
    /// cannot be empty.
    const SIZE: usize = if size_of::<T>() == 0 { 1 } else { size_of::<T>() };

    const fn lazy(init: Option<fn(usize) -> T>) -> CpuLocal<T> {
        CpuLocal {
            values: AtomicPtr::new(ptr::null_mut()),
            storage: LazyPercpu::new(Self::SIZE, align_of::<T>()),
            init,
            building: Mutex::new(()),
            _owns: PhantomData,
        }
    }

    /// Every CPU's value is `init(cpu)`, run now for each CPU id in order.
    ///
    /// ```
    /// let ids = cpulocal::CpuLocal::with_init(|cpu| cpu);
    /// assert!(ids.iter().all(|(cpu, &v)| cpu == v));
    /// ```
    ///
    /// # Panics
    /// If per-CPU memory cannot be had, or if `init` panics (the values made
    /// so far are dropped first).
    pub fn with_init(init: impl FnMut(usize) -> T) -> CpuLocal<T> {
        match CpuLocal::try_with_init(init) {
            Ok(c) => c,
            Err(e) => panic!("CpuLocal: {e}"),
        }
    }

    /// Like [`with_init`](Self::with_init), but returns the error instead of
    /// panicking when per-CPU memory cannot be had.
    ///
    /// ```
    /// #[repr(align(8192))]
    /// struct Page([u8; 8192]);
    /// assert!(cpulocal::CpuLocal::try_with_init(|_| Page([0; 8192])).is_err());
    /// assert!(cpulocal::CpuLocal::try_with_init(|cpu| cpu).is_ok());
    /// ```
    ///
    /// # Errors
    /// [`AllocError::BadAlign`] if `T` is aligned to more than 4096 bytes,
    /// [`AllocError::TooLarge`] if a `T` does not fit in a CPU's region, and
    /// [`AllocError::System`] if the system refuses the memory. `init` has
    /// not run then.
    ///
    /// # Panics
    /// If `init` panics (the values made so far are dropped first).
    pub fn try_with_init(mut init: impl FnMut(usize) -> T) -> Result<CpuLocal<T>, AllocError> {
        // SAFETY: the closure initializes its slot completely.
        unsafe {
            CpuLocal::try_with_init_in_place(|cpu, slot| {
                slot.write(init(cpu));
            })
        }
    }

    /// Builds every CPU's value where it lives, never on the stack: `init`
    /// gets CPU `cpu`'s slot, zero-filled, and must initialize it.
    ///
    /// For a large `T` (a buffer of a megabyte, say), building the value and
    /// then moving it, as [`with_init`](Self::with_init) does, needs that
    /// much stack in a debug build. Here `init` writes the fields in place,
    /// through raw pointers; for a `T` whose all-zero bytes are a valid value
    /// (integers, atomics, arrays of them) it may write nothing at all.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use cpulocal::CpuLocal;
    ///
    /// // 1 MiB per CPU, built on a thread with a 64 KiB stack.
    /// type Histogram = [AtomicU64; 131072];
    /// let h = std::thread::Builder::new()
    ///     .stack_size(64 << 10)
    ///     .spawn(|| {
    ///         // SAFETY: zero bytes are a valid array of AtomicU64.
    ///         unsafe { CpuLocal::<Histogram>::with_init_in_place(|_cpu, _zeroed| {}) }
    ///     })
    ///     .unwrap()
    ///     .join()
    ///     .unwrap();
    /// h.get()[7].fetch_add(1, Ordering::Relaxed);
    /// assert_eq!(h.iter().map(|(_, b)| b[7].load(Ordering::Relaxed)).sum::<u64>(), 1);
    /// ```
    ///
    /// # Safety
    /// When `init` returns, the slot must hold a valid `T`. (If `init`
    /// panics, the values already built are dropped and the one it was
    /// building is not.)
    ///
    /// # Panics
    /// If per-CPU memory cannot be had, or if `init` panics.
    pub unsafe fn with_init_in_place(init: impl FnMut(usize, &mut MaybeUninit<T>)) -> CpuLocal<T> {
        // SAFETY: the caller's promise, passed on.
        match unsafe { CpuLocal::try_with_init_in_place(init) } {
            Ok(c) => c,
            Err(e) => panic!("CpuLocal: {e}"),
        }
    }

    /// Like [`with_init_in_place`](Self::with_init_in_place), but returns the
    /// error instead of panicking when per-CPU memory cannot be had.
    ///
    /// ```
    /// use std::mem::MaybeUninit;
    /// # use cpulocal::CpuLocal;
    /// // SAFETY: every slot gets a value.
    /// let c = unsafe {
    ///     CpuLocal::try_with_init_in_place(|cpu, slot: &mut MaybeUninit<u64>| {
    ///         slot.write(cpu as u64 * 2);
    ///     })
    /// }
    /// .unwrap();
    /// assert_eq!(c.get_on(1).map(|v| *v), (cpulocal::cpu::count() > 1).then_some(2));
    /// ```
    ///
    /// # Errors
    /// As [`try_with_init`](Self::try_with_init).
    ///
    /// # Safety
    /// As [`with_init_in_place`](Self::with_init_in_place).
    pub unsafe fn try_with_init_in_place(
        init: impl FnMut(usize, &mut MaybeUninit<T>),
    ) -> Result<CpuLocal<T>, AllocError> {
        let mut this = CpuLocal::lazy(None);
        let ptr0 = this.storage.get_or_alloc()?;
        // SAFETY: freshly allocated, zero-filled, ours alone; the caller
        // guarantees `init` initializes each slot.
        unsafe { build_values(ptr0, init) };
        *this.values.get_mut() = ptr0.as_ptr();
        Ok(this)
    }

    /// Slot 0's value, building every CPU's value first if need be.
    #[inline(always)]
    fn built(&self) -> Result<NonNull<u8>, AllocError> {
        match NonNull::new(self.values.load(Ordering::Acquire)) {
            Some(ptr0) => Ok(ptr0),
            None => self.build(),
        }
    }

    #[inline]
    fn built_or_panic(&self) -> NonNull<u8> {
        match self.built() {
            Ok(ptr0) => ptr0,
            Err(e) => fail(e),
        }
    }

    /// The first use: allocates and builds every CPU's value, once.
    #[cold]
    #[inline(never)]
    fn build(&self) -> Result<NonNull<u8>, AllocError> {
        // A panic in `init` leaves nothing half-built (see `build_values`),
        // so a poisoned lock is still good.
        let _building = self.building.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ptr0) = NonNull::new(self.values.load(Ordering::Acquire)) {
            return Ok(ptr0);
        }
        let init = self.init.expect("a CpuLocal built at construction has values");
        let ptr0 = self.storage.get_or_alloc()?;
        // SAFETY: the slots hold no values (`values` is null, and every
        // builder holds `building`), nobody else reaches them before we
        // publish; the closure initializes each slot.
        unsafe {
            build_values(ptr0, |cpu, slot: &mut MaybeUninit<T>| {
                slot.write(init(cpu));
            })
        };
        self.values.store(ptr0.as_ptr(), Ordering::Release);
        Ok(ptr0)
    }

    /// The current CPU's value.
    ///
    /// Other threads may use the same value at the same time, and the
    /// thread may migrate while it holds the reference. The first use of a
    /// `CpuLocal` made by [`new`](Self::new) builds every CPU's value.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let bytes = cpulocal::CpuLocal::<AtomicU64>::new();
    /// bytes.get().fetch_add(512, Ordering::Relaxed);
    /// ```
    ///
    /// # Panics
    /// If the first use cannot allocate per-CPU memory;
    /// [`try_get`](Self::try_get) returns the error instead.
    #[inline]
    pub fn get(&self) -> &T {
        let ptr0 = self.built_or_panic();
        // SAFETY: every CPU id's value is built and lives as long as `self`;
        // `&mut` to it is only had through `&mut self`.
        unsafe { &*current_slot(ptr0).1.cast::<T>() }
    }

    /// The current CPU's value, or the reason the first use could not
    /// allocate per-CPU memory (the next use tries again).
    ///
    /// ```
    /// let c = cpulocal::CpuLocal::<u64>::new();
    /// assert_eq!(c.try_get().copied(), Ok(0));
    /// ```
    ///
    /// # Errors
    /// As [`try_with_init`](Self::try_with_init), on the first use.
    #[inline]
    pub fn try_get(&self) -> Result<&T, AllocError> {
        let ptr0 = self.built()?;
        // SAFETY: as in `get`.
        Ok(unsafe { &*current_slot(ptr0).1.cast::<T>() })
    }

    /// CPU `cpu`'s value, or `None` if `cpu >= cpu::count()`.
    ///
    /// ```
    /// let ids = cpulocal::CpuLocal::with_init(|cpu| cpu * 10);
    /// assert_eq!(ids.get_on(0), Some(&0));
    /// assert_eq!(ids.get_on(cpulocal::cpu::count()), None);
    /// ```
    ///
    /// # Panics
    /// As [`get`](Self::get).
    pub fn get_on(&self, cpu: usize) -> Option<&T> {
        if cpu >= cpu::count() {
            return None;
        }
        let ptr0 = self.built_or_panic();
        // SAFETY: as in `get`.
        Some(unsafe { &*LazyPercpu::slot(ptr0, cpu).cast::<T>() })
    }

    /// Every CPU's value, with its CPU id, in ascending order.
    ///
    /// ```
    /// let c = cpulocal::CpuLocal::with_init(|cpu| cpu as u64);
    /// let ids: Vec<u64> = c.iter().map(|(_, v)| *v).collect();
    /// assert_eq!(ids.len(), cpulocal::cpu::count());
    /// assert_eq!(ids[0], 0);
    /// ```
    ///
    /// # Panics
    /// As [`get`](Self::get).
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { ptr0: self.built_or_panic(), next: 0, end: cpu::count(), _marker: PhantomData }
    }

    /// Every CPU's value, mutably, with its CPU id.
    ///
    /// ```
    /// let mut c = cpulocal::CpuLocal::<u64>::new();
    /// for (cpu, v) in c.iter_mut() {
    ///     *v = cpu as u64;
    /// }
    /// assert_eq!(c.iter_mut().map(|(_, v)| *v).max(), Some(cpulocal::cpu::count() as u64 - 1));
    /// ```
    ///
    /// # Panics
    /// As [`get`](Self::get).
    pub fn iter_mut(&mut self) -> IterMut<'_, T> {
        IterMut { ptr0: self.built_or_panic(), next: 0, end: cpu::count(), _marker: PhantomData }
    }
}

#[cold]
#[inline(never)]
fn fail(e: AllocError) -> ! {
    panic!("CpuLocal: {e}")
}

/// Builds every CPU's value with `init`, dropping the ones built so far if
/// it panics.
///
/// # Safety
/// `ptr0` is a `LazyPercpu` allocation for `T` whose slots hold no values
/// and that nobody else reaches meanwhile; `init` leaves its slot holding a
/// valid `T`.
unsafe fn build_values<T>(ptr0: NonNull<u8>, mut init: impl FnMut(usize, &mut MaybeUninit<T>)) {
    /// Drops the values built so far if `init` panics.
    struct Partial<T> {
        ptr0: NonNull<u8>,
        done: usize,
        _owns: PhantomData<T>,
    }
    impl<T> Drop for Partial<T> {
        fn drop(&mut self) {
            for cpu in 0..self.done {
                // SAFETY: slots below `done` were built and nobody else
                // reaches them.
                unsafe { LazyPercpu::slot(self.ptr0, cpu).cast::<T>().drop_in_place() };
            }
        }
    }
    let mut partial = Partial::<T> { ptr0, done: 0, _owns: PhantomData };
    for cpu in 0..cpu::count() {
        // SAFETY: the slot is allocated and aligned for `T`, and ours alone.
        let slot = unsafe { &mut *LazyPercpu::slot(ptr0, cpu).cast::<MaybeUninit<T>>() };
        init(cpu, slot);
        partial.done = cpu + 1;
    }
    std::mem::forget(partial);
}

impl<T> Drop for CpuLocal<T> {
    fn drop(&mut self) {
        if let Some(ptr0) = NonNull::new(*self.values.get_mut()) {
            // SAFETY: every value was built; `&mut self` means nothing
            // refers to it; it is dropped once. The storage is freed after,
            // by the `LazyPercpu` field.
            unsafe { drop_values::<T>(ptr0, 0) };
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for CpuLocal<T> {
    /// The values by CPU id, if built.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CpuLocal");
        match NonNull::new(self.values.load(Ordering::Acquire)) {
            Some(ptr0) => {
                let iter = Iter::<T> { ptr0, next: 0, end: cpu::count(), _marker: PhantomData };
                d.field("values", &DebugValues(iter))
            }
            None => d.field("values", &format_args!("<not built>")),
        };
        d.finish()
    }
}

struct DebugValues<'a, T>(Iter<'a, T>);

impl<T: fmt::Debug> fmt::Debug for DebugValues<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.clone()).finish()
    }
}

/// The iterator of [`CpuLocal::iter`]: `(cpu, &value)` in ascending order.
pub struct Iter<'a, T> {
    ptr0: NonNull<u8>,
    next: usize,
    end: usize,
    _marker: PhantomData<&'a T>,
}

// SAFETY: an `Iter` hands out `&T`, like `std::slice::Iter`.
unsafe impl<T: Sync> Send for Iter<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Iter<'_, T> {}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = (usize, &'a T);

    fn next(&mut self) -> Option<(usize, &'a T)> {
        (self.next < self.end).then(|| {
            let cpu = self.next;
            self.next += 1;
            // SAFETY: values below `count()` are built and live for `'a`.
            (cpu, unsafe { &*LazyPercpu::slot(self.ptr0, cpu).cast::<T>() })
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.end - self.next, Some(self.end - self.next))
    }
}

impl<T> ExactSizeIterator for Iter<'_, T> {}
impl<T> FusedIterator for Iter<'_, T> {}

impl<T> Clone for Iter<'_, T> {
    fn clone(&self) -> Self {
        Iter { ..*self }
    }
}

impl<T> fmt::Debug for Iter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter").field("next", &self.next).field("end", &self.end).finish()
    }
}

/// The iterator of [`CpuLocal::iter_mut`]: `(cpu, &mut value)` in ascending
/// order.
pub struct IterMut<'a, T> {
    ptr0: NonNull<u8>,
    next: usize,
    end: usize,
    _marker: PhantomData<&'a mut T>,
}

// SAFETY: an `IterMut` hands out `&mut T` to distinct values, like
// `std::slice::IterMut`.
unsafe impl<T: Send> Send for IterMut<'_, T> {}
// SAFETY: through `&IterMut` nothing is reached.
unsafe impl<T: Sync> Sync for IterMut<'_, T> {}

impl<'a, T> Iterator for IterMut<'a, T> {
    type Item = (usize, &'a mut T);

    fn next(&mut self) -> Option<(usize, &'a mut T)> {
        (self.next < self.end).then(|| {
            let cpu = self.next;
            self.next += 1;
            // SAFETY: values below `count()` are built and live for `'a`,
            // borrowed exclusively (`&'a mut CpuLocal`); each is yielded once.
            (cpu, unsafe { &mut *LazyPercpu::slot(self.ptr0, cpu).cast::<T>() })
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.end - self.next, Some(self.end - self.next))
    }
}

impl<T> ExactSizeIterator for IterMut<'_, T> {}
impl<T> FusedIterator for IterMut<'_, T> {}

impl<T> fmt::Debug for IterMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IterMut").field("next", &self.next).field("end", &self.end).finish()
    }
}

/// The iterator of `CpuLocal`'s [`IntoIterator`]: `(cpu, value)` in
/// ascending order. Values it does not get to are dropped with it.
pub struct IntoIter<T> {
    /// Owns the storage; its `values` is null, so it drops no value itself.
    _local: CpuLocal<T>,
    ptr0: Option<NonNull<u8>>,
    next: usize,
}

// SAFETY: the iterator owns the values it yields (`T: Send`); through
// `&IntoIter` nothing is reached.
unsafe impl<T: Send> Send for IntoIter<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for IntoIter<T> {}

impl<T> Iterator for IntoIter<T> {
    type Item = (usize, T);

    fn next(&mut self) -> Option<(usize, T)> {
        let ptr0 = self.ptr0?;
        (self.next < cpu::count()).then(|| {
            let cpu = self.next;
            self.next += 1;
            // SAFETY: the value is built and moved out once: `next` moves
            // past it, and `Drop` drops only those after it.
            (cpu, unsafe { LazyPercpu::slot(ptr0, cpu).cast::<T>().read() })
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.ptr0.is_some() { cpu::count() - self.next } else { 0 };
        (left, Some(left))
    }
}

impl<T> ExactSizeIterator for IntoIter<T> {}
impl<T> FusedIterator for IntoIter<T> {}

impl<T> Drop for IntoIter<T> {
    fn drop(&mut self) {
        if let Some(ptr0) = self.ptr0 {
            // SAFETY: values from `next` on are built and not yet moved out.
            unsafe { drop_values::<T>(ptr0, self.next) };
        }
    }
}

impl<T> fmt::Debug for IntoIter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntoIter").field("next", &self.next).finish_non_exhaustive()
    }
}

impl<T> IntoIterator for CpuLocal<T> {
    type Item = (usize, T);
    type IntoIter = IntoIter<T>;

    /// Every CPU's value, moved out, with its CPU id.
    ///
    /// ```
    /// let c = cpulocal::CpuLocal::with_init(|cpu| vec![cpu]);
    /// let all: Vec<usize> = c.into_iter().flat_map(|(_, v)| v).collect();
    /// assert_eq!(all.len(), cpulocal::cpu::count());
    /// ```
    ///
    /// # Panics
    /// As [`get`](CpuLocal::get), if the values are not built yet.
    fn into_iter(mut self) -> IntoIter<T> {
        self.built_or_panic();
        let ptr0 = NonNull::new(std::mem::replace(self.values.get_mut(), ptr::null_mut()));
        IntoIter { _local: self, ptr0, next: 0 }
    }
}

impl<'a, T> IntoIterator for &'a CpuLocal<T> {
    type Item = (usize, &'a T);
    type IntoIter = Iter<'a, T>;

    /// [`CpuLocal::iter`].
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut CpuLocal<T> {
    type Item = (usize, &'a mut T);
    type IntoIter = IterMut<'a, T>;

    /// [`CpuLocal::iter_mut`].
    fn into_iter(self) -> IterMut<'a, T> {
        self.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn into_iter_drops_what_it_does_not_yield() {
        use std::sync::atomic::AtomicUsize;
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct D;
        impl Drop for D {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::Relaxed);
            }
        }
        let c = CpuLocal::with_init(|_| D);
        let mut it = c.into_iter();
        drop(it.next());
        assert_eq!(DROPS.load(Ordering::Relaxed), 1);
        drop(it);
        assert_eq!(DROPS.load(Ordering::Relaxed), cpu::count());
    }

    /// Every entry point over the raw slots, small enough for Miri
    /// (`cargo +nightly miri test -p cpulocal --lib cpu_local`), which checks
    /// the pointer work for undefined behaviour.
    #[test]
    fn every_access_path() {
        use std::sync::atomic::AtomicU64;
        static SHARED: CpuLocal<AtomicU64> = CpuLocal::new();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| SHARED.get().fetch_add(1, Ordering::Relaxed));
            }
        });
        assert_eq!(SHARED.iter().map(|(_, v)| v.load(Ordering::Relaxed)).sum::<u64>(), 3);

        let mut c = CpuLocal::with_init(|cpu| vec![cpu]);
        assert_eq!(c.get_on(0).map(Vec::len), Some(1));
        for (cpu, v) in &mut c {
            v.push(cpu);
        }
        assert!((&c).into_iter().all(|(cpu, v)| *v == [cpu, cpu]));
        assert!(format!("{c:?}").contains("values"));
        c.clear();
        assert!(c.iter().all(|(_, v)| v.is_empty()));
        let mut it = c.into_iter();
        assert_eq!(it.len(), cpu::count());
        let _ = it.next();
        drop(it);

        // SAFETY: every slot gets a value.
        let p = unsafe {
            CpuLocal::with_init_in_place(|cpu, s| {
                s.write(cpu as u8);
            })
        };
        assert_eq!(*p.try_get().unwrap() as usize, cpu::current());
        let zst = CpuLocal::<()>::new();
        assert_eq!(zst.iter().count(), cpu::count());

        let l = LockedCpuLocal::<Vec<u8>>::new();
        l.lock().push(1);
        let g = CpuLocalGuard::map(l.lock_on(0).unwrap(), |v| v);
        assert!(l.try_lock_on(0).is_none());
        drop(g);
        std::thread::scope(|s| {
            s.spawn(|| l.try_lock().map(|mut g| g.push(2)));
        });
        let total: usize = l.into_iter().map(|(_, v)| v.len()).sum();
        assert!((1..=2).contains(&total));
        // SAFETY: zero bytes are a valid `[u16; 8]`.
        let mut z = unsafe { LockedCpuLocal::<[u16; 8]>::with_init_in_place(|_, _| {}) };
        assert!(z.iter_mut().all(|(_, v)| *v == [0; 8]));

        let r = std::panic::catch_unwind(|| {
            CpuLocal::with_init(|cpu| if cpu + 1 == cpu::count() { panic!() } else { vec![cpu] })
        });
        assert!(r.is_err());
    }
}
