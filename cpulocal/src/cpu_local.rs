//! [`CpuLocal<T>`]: a typed value per CPU, on top of [`Percpu`].

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::cpu;
use crate::percpu::{AllocError, Percpu};

/// One CPU's copy: the lock behind [`CpuLocal::lock`], then the value.
#[repr(C)]
struct Slot<T> {
    lock: Mutex<()>,
    value: UnsafeCell<T>,
}

/// How a `CpuLocal` has been used so far; shared references (`get`) and
/// exclusive ones (`lock`) must never meet on one value.
const UNUSED: u8 = 0;
const SHARED: u8 = 1;
const LOCKED: u8 = 2;

/// A value of type `T` for every CPU: percpu(9) with types.
///
/// Construction runs the per-CPU constructor eagerly, once for every CPU id
/// below [`cpu::count()`] (like NetBSD's `percpu_create`), so every later access
/// is a plain address computation. Dropping it drops every CPU's value.
///
/// Two ways in, chosen by how you use the value (one `CpuLocal` uses one):
///
/// - **Shared**: [`get`](Self::get), [`get_on`](Self::get_on) and
///   [`iter`](Self::iter) give `&T` (so `T: Sync`; use atomics or other
///   interior mutability). Other threads on the same CPU, and migrated
///   threads, may hold the same `&T` at the same time.
/// - **Locked**: [`lock`](Self::lock) and [`lock_on`](Self::lock_on) give a
///   guard with `&mut T` to one CPU's value, exclusive even if the thread
///   migrates while it holds it; contention is only with threads on, or
///   just come from, the same CPU.
///
/// Using both ways on one `CpuLocal` would hand out `&T` and `&mut T` to the
/// same value, so the second way panics. [`iter_mut`](Self::iter_mut)
/// (through `&mut self`) is always available.
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
pub struct CpuLocal<T: Send> {
    storage: Percpu,
    mode: AtomicU8,
    _marker: PhantomData<T>,
}

// SAFETY: values are reached from other threads through `&self` only as
// `&T` (get/get_on/iter: those methods require `T: Sync`) or as an exclusive
// `&mut T` under the slot's lock (lock/lock_on: needs `T: Send`).
unsafe impl<T: Send> Sync for CpuLocal<T> {}
// SAFETY: moving the CpuLocal moves ownership of every T (dropped wherever
// it is dropped).
unsafe impl<T: Send> Send for CpuLocal<T> {}

impl<T: Send + Default> CpuLocal<T> {
    /// Every CPU's value starts as `T::default()`.
    ///
    /// # Panics
    /// If per-CPU memory cannot be had; [`try_with_init`](Self::try_with_init)
    /// returns the error instead.
    pub fn new() -> CpuLocal<T> {
        CpuLocal::with_init(|_| T::default())
    }
}

impl<T: Send + Default> Default for CpuLocal<T> {
    fn default() -> Self {
        CpuLocal::new()
    }
}

impl<T: Send> CpuLocal<T> {
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

    /// Like [`with_init`](Self::with_init), but returns an [`AllocError`]
    /// (e.g. for an alignment above 4096) instead of panicking.
    pub fn try_with_init(mut init: impl FnMut(usize) -> T) -> Result<CpuLocal<T>, AllocError> {
        let storage = Percpu::alloc_aligned(size_of::<Slot<T>>(), align_of::<Slot<T>>())?;
        /// Drops the values made so far if `init` panics.
        struct Partial<'a, T> {
            storage: &'a Percpu,
            done: usize,
            _marker: PhantomData<T>,
        }
        impl<T> Drop for Partial<'_, T> {
            fn drop(&mut self) {
                for cpu in 0..self.done {
                    // SAFETY: slots below `done` were initialized and are
                    // not reachable by anyone else.
                    unsafe { self.storage.slot(cpu).cast::<Slot<T>>().drop_in_place() };
                }
            }
        }
        let mut partial = Partial::<T> { storage: &storage, done: 0, _marker: PhantomData };
        for cpu in 0..cpu::count() {
            let slot = Slot { lock: Mutex::new(()), value: UnsafeCell::new(init(cpu)) };
            // SAFETY: the slot's memory is allocated, aligned for Slot<T>,
            // and not yet initialized or shared.
            unsafe { storage.slot(cpu).cast::<Slot<T>>().write(slot) };
            partial.done = cpu + 1;
        }
        std::mem::forget(partial);
        Ok(CpuLocal { storage, mode: AtomicU8::new(UNUSED), _marker: PhantomData })
    }

    #[inline(always)]
    fn slot(&self, cpu: usize) -> &Slot<T> {
        // SAFETY: callers pass `cpu < cpu::count()`; that slot was
        // initialized in `try_with_init` and lives as long as `self`.
        unsafe { &*self.storage.slot(cpu).cast::<Slot<T>>() }
    }

    #[inline(always)]
    fn enter(&self, mode: u8) {
        if self.mode.load(Ordering::Relaxed) != mode {
            self.enter_slow(mode);
        }
    }

    #[cold]
    fn enter_slow(&self, mode: u8) {
        // One transition out of UNUSED ever happens (a single atomic's
        // modification order), so every later load sees the winner.
        match self.mode.compare_exchange(UNUSED, mode, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {}
            Err(m) if m == mode => {}
            Err(_) if mode == SHARED => {
                panic!(
                    "CpuLocal: get/get_on/iter on a CpuLocal used with lock(); use lock_on instead"
                )
            }
            Err(_) => panic!("CpuLocal: lock/lock_on on a CpuLocal used with get/get_on/iter"),
        }
    }

    /// The current CPU's value.
    ///
    /// Other threads may read the same value at the same time, and the
    /// thread may migrate while it holds the reference: mutate through
    /// atomics or other thread-safe interior mutability.
    ///
    /// # Panics
    /// If this `CpuLocal` has been used with [`lock`](Self::lock).
    #[inline]
    pub fn get(&self) -> &T
    where
        T: Sync,
    {
        self.enter(SHARED);
        // SAFETY: in SHARED mode nobody holds `&mut T` (see `enter`).
        unsafe { &*self.slot(cpu::current()).value.get() }
    }

    /// CPU `cpu`'s value, or `None` if `cpu >= cpu::count()`.
    ///
    /// # Panics
    /// If this `CpuLocal` has been used with [`lock`](Self::lock).
    pub fn get_on(&self, cpu: usize) -> Option<&T>
    where
        T: Sync,
    {
        if cpu >= cpu::count() {
            return None;
        }
        self.enter(SHARED);
        // SAFETY: in SHARED mode nobody holds `&mut T`.
        Some(unsafe { &*self.slot(cpu).value.get() })
    }

    /// Every CPU's value, with its CPU id, in ascending order.
    ///
    /// # Panics
    /// If this `CpuLocal` has been used with [`lock`](Self::lock).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (usize, &T)> + '_
    where
        T: Sync,
    {
        self.enter(SHARED);
        // SAFETY: in SHARED mode nobody holds `&mut T`.
        (0..cpu::count()).map(move |cpu| (cpu, unsafe { &*self.slot(cpu).value.get() }))
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
    pub fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = (usize, &mut T)> + '_ {
        let this = &*self;
        // SAFETY: `&mut self` excludes every other access; each slot is
        // distinct memory, yielded once.
        (0..cpu::count()).map(move |cpu| (cpu, unsafe { &mut *this.slot(cpu).value.get() }))
    }

    /// Exclusive access to the current CPU's value.
    ///
    /// The guard keeps the value of the CPU the thread was on when it called
    /// `lock`, even if the thread migrates: other threads locking that CPU's
    /// value wait until it is dropped.
    ///
    /// ```
    /// let c = cpulocal::CpuLocal::<Vec<u32>>::new();
    /// c.lock().push(7);
    /// let total: usize = (0..cpulocal::cpu::count()).map(|cpu| c.lock_on(cpu).unwrap().len()).sum();
    /// assert_eq!(total, 1);
    /// ```
    ///
    /// # Panics
    /// If this `CpuLocal` has been used with [`get`](Self::get),
    /// [`get_on`](Self::get_on) or [`iter`](Self::iter).
    #[inline]
    pub fn lock(&self) -> CpuLocalGuard<'_, T> {
        self.lock_slot(cpu::current())
    }

    /// Exclusive access to CPU `cpu`'s value, or `None` if
    /// `cpu >= cpu::count()`.
    ///
    /// # Panics
    /// As [`lock`](Self::lock).
    pub fn lock_on(&self, cpu: usize) -> Option<CpuLocalGuard<'_, T>> {
        (cpu < cpu::count()).then(|| self.lock_slot(cpu))
    }

    #[inline]
    fn lock_slot(&self, cpu: usize) -> CpuLocalGuard<'_, T> {
        self.enter(LOCKED);
        let slot = self.slot(cpu);
        // A panic while locked leaves the value as the panicking code left
        // it, as with a RefCell; there is no poisoning.
        let lock = slot.lock.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: in LOCKED mode every access to the value holds its mutex,
        // which we now hold.
        let value = unsafe { &mut *slot.value.get() };
        CpuLocalGuard { cpu, value, _lock: lock }
    }
}

impl<T: Send> Drop for CpuLocal<T> {
    fn drop(&mut self) {
        for cpu in 0..cpu::count() {
            // SAFETY: every slot below count() was initialized; `&mut self`
            // means nothing refers to it; it is dropped once.
            unsafe { self.storage.slot(cpu).cast::<Slot<T>>().drop_in_place() };
        }
    }
}

impl<T: Send> fmt::Debug for CpuLocal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode.load(Ordering::Relaxed) {
            UNUSED => "unused",
            SHARED => "shared",
            _ => "locked",
        };
        f.debug_struct("CpuLocal")
            .field("type", &std::any::type_name::<T>())
            .field("cpus", &cpu::count())
            .field("mode", &mode)
            .finish_non_exhaustive()
    }
}

/// Exclusive access to one CPU's value of a [`CpuLocal`], from
/// [`CpuLocal::lock`]. Not `Send`: it unlocks on the thread that locked.
#[must_use = "if unused the value is unlocked at once"]
#[clippy::has_significant_drop]
pub struct CpuLocalGuard<'a, T> {
    cpu: usize,
    value: &'a mut T,
    _lock: MutexGuard<'a, ()>,
}

impl<T> CpuLocalGuard<'_, T> {
    /// The CPU whose value this is. An associated function, so that it does
    /// not hide a method of `T`: `CpuLocalGuard::cpu(&guard)`.
    pub fn cpu(guard: &Self) -> usize {
        guard.cpu
    }
}

impl<T> Deref for CpuLocalGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T> DerefMut for CpuLocalGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for CpuLocalGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuLocalGuard").field("cpu", &self.cpu).field("value", &self.value).finish()
    }
}
