//! [`LockedCpuLocal<T>`]: a value per CPU, reached through a per-CPU lock.

use std::cell::UnsafeCell;
use std::fmt;
use std::iter::FusedIterator;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::ptr;
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use super::{CpuLocal, IntoIter, IterMut};
use crate::cpu;
use crate::percpu::AllocError;

/// One CPU's copy: its lock, then the value.
struct Locked<T> {
    lock: Mutex<()>,
    value: UnsafeCell<T>,
}

// SAFETY: through `&Locked<T>` the value is reached only under `lock`, by one
// thread at a time, like `Mutex<T>`: that needs only `T: Send`.
unsafe impl<T: Send> Sync for Locked<T> {}

impl<T: Default> Default for Locked<T> {
    fn default() -> Self {
        Locked::new(T::default())
    }
}

impl<T> Locked<T> {
    fn new(value: T) -> Locked<T> {
        Locked { lock: Mutex::new(()), value: UnsafeCell::new(value) }
    }

    /// Exclusive access for CPU `cpu`'s copy, once `lock` is held.
    fn guard<'a>(&'a self, cpu: usize, lock: MutexGuard<'a, ()>) -> CpuLocalGuard<'a, T> {
        // SAFETY: every access to the value holds its lock (or `&mut self`
        // of the whole `LockedCpuLocal`), and we hold it until the guard,
        // which ties the `&mut T` to the `MutexGuard`, is dropped.
        let value = unsafe { &mut *self.value.get() };
        CpuLocalGuard { cpu, value, _lock: lock }
    }

    #[inline]
    fn lock(&self, cpu: usize) -> CpuLocalGuard<'_, T> {
        // A panic while locked leaves the value as the panicking code left
        // it, as with a RefCell; there is no poisoning.
        self.guard(cpu, self.lock.lock().unwrap_or_else(PoisonError::into_inner))
    }

    #[inline]
    fn try_lock(&self, cpu: usize) -> Option<CpuLocalGuard<'_, T>> {
        match self.lock.try_lock() {
            Ok(lock) => Some(self.guard(cpu, lock)),
            Err(TryLockError::Poisoned(p)) => Some(self.guard(cpu, p.into_inner())),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

fn default_locked<T: Default>(_cpu: usize) -> Locked<T> {
    Locked::default()
}

/// A value of type `T` for every CPU, each behind its own lock: exclusive
/// access (`&mut T`) to the current CPU's value, for values that are not
/// thread-safe by themselves (a `Vec`, a `HashMap`, `Cell`s).
///
/// [`lock`](Self::lock) locks the value of the CPU the thread is on and
/// keeps it even if the thread migrates, so other threads wait only if they
/// run on, or just came from, the same CPU. [`lock_on`](Self::lock_on)
/// reaches any CPU's value, as a reader summing them all does. There is no
/// `get`: shared, lock-free access is [`CpuLocal`]'s, and the two never meet
/// on one value. Each CPU's value carries a `std::sync::Mutex<()>` (8 bytes
/// on Linux, then padding to `T`'s alignment).
///
/// There is no poisoning (as in parking_lot): a thread that panics while
/// holding a CPU's value leaves it as the panic left it, and the next
/// [`lock`](Self::lock) or [`lock_on`](Self::lock_on) gets it as it is.
/// Code whose updates must not be seen half done should catch the panic
/// and repair the value, or build the new value aside and swap it in.
///
/// Like [`CpuLocal`], [`new`](Self::new) is a `const fn` whose values are
/// built on first use, and it can be shared between threads when `T: Send`
/// (as a `Mutex<T>` can).
///
/// ```
/// use cpulocal::LockedCpuLocal;
///
/// // A per-CPU pool of buffers: each CPU's pool is a plain Vec.
/// static POOL: LockedCpuLocal<Vec<Vec<u8>>> = LockedCpuLocal::new();
///
/// let buf = POOL.lock().pop().unwrap_or_else(|| Vec::with_capacity(4096));
/// POOL.lock().push(buf);
/// let pooled: usize =
///     (0..cpulocal::cpu::count()).map(|cpu| POOL.lock_on(cpu).unwrap().len()).sum();
/// assert_eq!(pooled, 1);
/// ```
pub struct LockedCpuLocal<T> {
    inner: CpuLocal<Locked<T>>,
}

impl<T: Default> LockedCpuLocal<T> {
    /// Every CPU's value is `T::default()`, built on first use.
    ///
    /// ```
    /// static SEEN: cpulocal::LockedCpuLocal<Vec<u64>> = cpulocal::LockedCpuLocal::new();
    /// SEEN.lock().push(1);
    /// ```
    pub const fn new() -> LockedCpuLocal<T> {
        LockedCpuLocal { inner: CpuLocal::lazy(Some(default_locked::<T>)) }
    }

    /// Drops every CPU's value; the next use builds them again, with
    /// `T::default()`.
    ///
    /// ```
    /// let mut c = cpulocal::LockedCpuLocal::with_init(|_| vec![1, 2, 3]);
    /// c.clear();
    /// assert!(c.iter_mut().all(|(_, v)| v.is_empty()));
    /// ```
    pub fn clear(&mut self) {
        self.inner.clear();
    }
}

impl<T: Default> Default for LockedCpuLocal<T> {
    /// [`LockedCpuLocal::new`].
    fn default() -> Self {
        LockedCpuLocal::new()
    }
}

impl<T> LockedCpuLocal<T> {
    /// Every CPU's value is `init(cpu)`, run now for each CPU id in order.
    ///
    /// ```
    /// let c = cpulocal::LockedCpuLocal::with_init(|cpu| vec![cpu]);
    /// assert_eq!(*c.lock_on(0).unwrap(), [0]);
    /// ```
    ///
    /// # Panics
    /// If per-CPU memory cannot be had, or if `init` panics (the values made
    /// so far are dropped first).
    pub fn with_init(mut init: impl FnMut(usize) -> T) -> LockedCpuLocal<T> {
        LockedCpuLocal { inner: CpuLocal::with_init(|cpu| Locked::new(init(cpu))) }
    }

    /// Like [`with_init`](Self::with_init), but returns the error instead of
    /// panicking when per-CPU memory cannot be had.
    ///
    /// ```
    /// let c = cpulocal::LockedCpuLocal::try_with_init(|_| String::new()).unwrap();
    /// c.lock().push_str("ok");
    /// ```
    ///
    /// # Errors
    /// As [`CpuLocal::try_with_init`].
    ///
    /// # Panics
    /// If `init` panics (the values made so far are dropped first).
    pub fn try_with_init(
        mut init: impl FnMut(usize) -> T,
    ) -> Result<LockedCpuLocal<T>, AllocError> {
        Ok(LockedCpuLocal { inner: CpuLocal::try_with_init(|cpu| Locked::new(init(cpu)))? })
    }

    /// Builds every CPU's value where it lives, never on the stack; see
    /// [`CpuLocal::with_init_in_place`].
    ///
    /// ```
    /// // 1 MiB per CPU, built on a thread with a 64 KiB stack.
    /// let c = std::thread::Builder::new()
    ///     .stack_size(64 << 10)
    ///     .spawn(|| {
    ///         // SAFETY: zero bytes are a valid array of u8.
    ///         unsafe { cpulocal::LockedCpuLocal::<[u8; 1 << 20]>::with_init_in_place(|_, _| {}) }
    ///     })
    ///     .unwrap()
    ///     .join()
    ///     .unwrap();
    /// c.lock()[0] = 1;
    /// ```
    ///
    /// # Safety
    /// As [`CpuLocal::with_init_in_place`]: when `init` returns, the slot
    /// (zero-filled when `init` gets it) must hold a valid `T`.
    ///
    /// # Panics
    /// If per-CPU memory cannot be had, or if `init` panics.
    pub unsafe fn with_init_in_place(
        init: impl FnMut(usize, &mut MaybeUninit<T>),
    ) -> LockedCpuLocal<T> {
        // SAFETY: the caller's promise, passed on.
        match unsafe { LockedCpuLocal::try_with_init_in_place(init) } {
            Ok(c) => c,
            Err(e) => panic!("LockedCpuLocal: {e}"),
        }
    }

    /// Like [`with_init_in_place`](Self::with_init_in_place), but returns
    /// the error instead of panicking when per-CPU memory cannot be had.
    ///
    /// ```
    /// // SAFETY: every slot gets a value.
    /// let c = unsafe {
    ///     cpulocal::LockedCpuLocal::try_with_init_in_place(|cpu, slot| {
    ///         slot.write(cpu);
    ///     })
    /// };
    /// assert_eq!(*c.unwrap().lock_on(0).unwrap(), 0);
    /// ```
    ///
    /// # Errors
    /// As [`CpuLocal::try_with_init`].
    ///
    /// # Safety
    /// As [`with_init_in_place`](Self::with_init_in_place).
    pub unsafe fn try_with_init_in_place(
        mut init: impl FnMut(usize, &mut MaybeUninit<T>),
    ) -> Result<LockedCpuLocal<T>, AllocError> {
        let build = |cpu, slot: &mut MaybeUninit<Locked<T>>| {
            let slot = slot.as_mut_ptr();
            // SAFETY: `slot` is valid for writes and aligned; `UnsafeCell<T>`
            // and `MaybeUninit<T>` have `T`'s layout, so the value's field
            // is a `MaybeUninit<T>` that `init` initializes in place.
            unsafe {
                ptr::addr_of_mut!((*slot).lock).write(Mutex::new(()));
                init(cpu, &mut *ptr::addr_of_mut!((*slot).value).cast::<MaybeUninit<T>>());
            }
        };
        // SAFETY: `build` initializes both fields; the caller guarantees the
        // value's.
        Ok(LockedCpuLocal { inner: unsafe { CpuLocal::try_with_init_in_place(build)? } })
    }

    /// Exclusive access to the current CPU's value.
    ///
    /// The guard keeps the value of the CPU the thread was on when it called
    /// `lock`, even if the thread migrates: other threads locking that CPU's
    /// value wait until it is dropped. Locking a value the same thread
    /// already holds deadlocks (use [`try_lock`](Self::try_lock) where that
    /// can happen). The first use of a `LockedCpuLocal` made by
    /// [`new`](Self::new) builds every CPU's value.
    ///
    /// ```
    /// let c = cpulocal::LockedCpuLocal::<Vec<u32>>::new();
    /// c.lock().push(7);
    /// let total: usize = (0..cpulocal::cpu::count()).map(|cpu| c.lock_on(cpu).unwrap().len()).sum();
    /// assert_eq!(total, 1);
    /// ```
    ///
    /// # Panics
    /// If the first use cannot allocate per-CPU memory.
    #[inline]
    pub fn lock(&self) -> CpuLocalGuard<'_, T> {
        let cpu = cpu::current();
        self.inner.get_on(cpu).expect("current() < count()").lock(cpu)
    }

    /// Exclusive access to CPU `cpu`'s value, or `None` if
    /// `cpu >= cpu::count()`.
    ///
    /// ```
    /// let c = cpulocal::LockedCpuLocal::with_init(|cpu| cpu);
    /// assert_eq!(c.lock_on(0).map(|g| *g), Some(0));
    /// assert!(c.lock_on(cpulocal::cpu::count()).is_none());
    /// ```
    ///
    /// # Panics
    /// As [`lock`](Self::lock).
    pub fn lock_on(&self, cpu: usize) -> Option<CpuLocalGuard<'_, T>> {
        Some(self.inner.get_on(cpu)?.lock(cpu))
    }

    /// Exclusive access to the current CPU's value if nobody holds it now,
    /// else `None`. Never waits.
    ///
    /// ```
    /// let c = cpulocal::LockedCpuLocal::<u64>::new();
    /// let held = c.lock();
    /// let cpu = cpulocal::CpuLocalGuard::cpu(&held);
    /// assert!(c.try_lock_on(cpu).is_none());
    /// drop(held);
    /// assert!(c.try_lock_on(cpu).is_some());
    /// ```
    ///
    /// # Panics
    /// As [`lock`](Self::lock).
    #[inline]
    pub fn try_lock(&self) -> Option<CpuLocalGuard<'_, T>> {
        let cpu = cpu::current();
        self.inner.get_on(cpu).expect("current() < count()").try_lock(cpu)
    }

    /// Exclusive access to CPU `cpu`'s value if nobody holds it now; `None`
    /// if someone does or if `cpu >= cpu::count()`. Never waits.
    ///
    /// ```
    /// let c = cpulocal::LockedCpuLocal::<u64>::new();
    /// *c.try_lock_on(0).unwrap() += 1;
    /// assert!(c.try_lock_on(cpulocal::cpu::count()).is_none());
    /// ```
    ///
    /// # Panics
    /// As [`lock`](Self::lock).
    pub fn try_lock_on(&self, cpu: usize) -> Option<CpuLocalGuard<'_, T>> {
        self.inner.get_on(cpu)?.try_lock(cpu)
    }

    /// Every CPU's value in turn, each locked as the iterator comes to it
    /// ([`lock_on`](Self::lock_on) for every CPU id, ascending): a reader
    /// that sums or drains a pool from `&self`. Dropping each guard before
    /// taking the next holds one lock at a time; guards kept (collected)
    /// hold theirs, taken in ascending CPU order.
    ///
    /// ```
    /// use cpulocal::{CpuLocalGuard, LockedCpuLocal};
    ///
    /// let pool = LockedCpuLocal::<Vec<u32>>::new();
    /// pool.lock().extend([1, 2, 3]);
    /// let pooled: usize = pool.lock_each().map(|v| v.len()).sum();
    /// assert_eq!(pooled, 3);
    /// // Drain every CPU's share.
    /// let drained: Vec<u32> = pool.lock_each().flat_map(|mut v| std::mem::take(&mut *v)).collect();
    /// assert_eq!(drained, [1, 2, 3]);
    /// assert!(pool.lock_each().enumerate().all(|(cpu, v)| CpuLocalGuard::cpu(&v) == cpu && v.is_empty()));
    /// ```
    ///
    /// # Panics
    /// As [`lock`](Self::lock).
    pub fn lock_each(&self) -> impl ExactSizeIterator<Item = CpuLocalGuard<'_, T>> + '_ {
        (0..cpu::count())
            .map(move |cpu| self.lock_on(cpu).expect("every id below count() has a value"))
    }

    /// Every CPU's value, mutably, with its CPU id; `&mut self` needs no
    /// locks.
    ///
    /// ```
    /// let mut c = cpulocal::LockedCpuLocal::<u32>::new();
    /// for (cpu, v) in &mut c {
    ///     *v = cpu as u32;
    /// }
    /// assert_eq!(c.iter_mut().len(), cpulocal::cpu::count());
    /// ```
    ///
    /// # Panics
    /// As [`lock`](Self::lock).
    pub fn iter_mut(&mut self) -> LockedIterMut<'_, T> {
        LockedIterMut { inner: self.inner.iter_mut() }
    }
}

impl<T> fmt::Debug for LockedCpuLocal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedCpuLocal")
            .field("type", &std::any::type_name::<T>())
            .field("cpus", &cpu::count())
            .finish_non_exhaustive()
    }
}

impl<T> IntoIterator for LockedCpuLocal<T> {
    type Item = (usize, T);
    type IntoIter = LockedIntoIter<T>;

    /// Every CPU's value, moved out, with its CPU id.
    ///
    /// ```
    /// let c = cpulocal::LockedCpuLocal::with_init(|cpu| cpu);
    /// assert!(c.into_iter().all(|(cpu, v)| cpu == v));
    /// ```
    fn into_iter(self) -> LockedIntoIter<T> {
        LockedIntoIter { inner: self.inner.into_iter() }
    }
}

impl<'a, T> IntoIterator for &'a mut LockedCpuLocal<T> {
    type Item = (usize, &'a mut T);
    type IntoIter = LockedIterMut<'a, T>;

    /// [`LockedCpuLocal::iter_mut`].
    fn into_iter(self) -> LockedIterMut<'a, T> {
        self.iter_mut()
    }
}

/// The iterator of [`LockedCpuLocal::iter_mut`].
pub struct LockedIterMut<'a, T> {
    inner: IterMut<'a, Locked<T>>,
}

impl<'a, T> Iterator for LockedIterMut<'a, T> {
    type Item = (usize, &'a mut T);

    fn next(&mut self) -> Option<(usize, &'a mut T)> {
        self.inner.next().map(|(cpu, l)| (cpu, l.value.get_mut()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<T> ExactSizeIterator for LockedIterMut<'_, T> {}
impl<T> FusedIterator for LockedIterMut<'_, T> {}

impl<T> fmt::Debug for LockedIterMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedIterMut").field("inner", &self.inner).finish()
    }
}

/// The iterator of `LockedCpuLocal`'s [`IntoIterator`].
pub struct LockedIntoIter<T> {
    inner: IntoIter<Locked<T>>,
}

impl<T> Iterator for LockedIntoIter<T> {
    type Item = (usize, T);

    fn next(&mut self) -> Option<(usize, T)> {
        self.inner.next().map(|(cpu, l)| (cpu, l.value.into_inner()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<T> ExactSizeIterator for LockedIntoIter<T> {}
impl<T> FusedIterator for LockedIntoIter<T> {}

impl<T> fmt::Debug for LockedIntoIter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedIntoIter").field("inner", &self.inner).finish()
    }
}

/// Exclusive access to one CPU's value of a [`LockedCpuLocal`], from
/// [`lock`](LockedCpuLocal::lock) and its kin. Not `Send`: it unlocks on the
/// thread that locked.
///
/// Its functions are associated functions (`CpuLocalGuard::cpu(&guard)`),
/// so that they do not hide methods of `T`.
#[must_use = "if unused the value is unlocked at once"]
#[clippy::has_significant_drop]
pub struct CpuLocalGuard<'a, T> {
    cpu: usize,
    value: &'a mut T,
    _lock: MutexGuard<'a, ()>,
}

impl<'a, T> CpuLocalGuard<'a, T> {
    /// The CPU whose value this is.
    ///
    /// ```
    /// let c = cpulocal::LockedCpuLocal::<u8>::new();
    /// let g = c.lock_on(0).unwrap();
    /// assert_eq!(cpulocal::CpuLocalGuard::cpu(&g), 0);
    /// ```
    pub fn cpu(guard: &Self) -> usize {
        guard.cpu
    }

    /// A guard for a part of the value, holding the same lock.
    ///
    /// ```
    /// use cpulocal::{CpuLocalGuard, LockedCpuLocal};
    ///
    /// let stats = LockedCpuLocal::<(u64, Vec<u64>)>::new();
    /// let mut samples = CpuLocalGuard::map(stats.lock(), |(_, samples)| samples);
    /// samples.push(3);
    /// drop(samples);
    /// let n: usize = (0..cpulocal::cpu::count()).map(|c| stats.lock_on(c).unwrap().1.len()).sum();
    /// assert_eq!(n, 1);
    /// ```
    pub fn map<U>(guard: Self, f: impl FnOnce(&mut T) -> &mut U) -> CpuLocalGuard<'a, U> {
        let CpuLocalGuard { cpu, value, _lock } = guard;
        CpuLocalGuard { cpu, value: f(value), _lock }
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
