//! Typed per-CPU operations, for building your own per-CPU structures.
//!
//! - [`PercpuU64`]: one `u64` per CPU. [`add`](PercpuU64::add) and
//!   [`compare_store`](PercpuU64::compare_store) act on the word of the CPU
//!   the thread runs on; [`load_on`](PercpuU64::load_on),
//!   [`iter`](PercpuU64::iter) and [`sum`](PercpuU64::sum) read any word.
//! - [`PercpuStack`]: a LIFO of boxed [`Node`]s per CPU, pushed and popped on
//!   the current CPU: a per-CPU free list, as in tcmalloc's per-CPU caches.
//!
//! # Operations on a given CPU
//!
//! [`PercpuU64::store_on`], [`PercpuStack::push_on`] and
//! [`PercpuStack::pop_on`] act on the word or list of the CPU named by the
//! caller, like librseq's operations with a `cpu` argument, and only if the
//! thread is running on that CPU when the operation takes effect; otherwise
//! they change nothing and report [`NotOnCpu`] (`push_on` hands the node
//! back). They serve code that knows where it runs: a thread pinned with
//! [`cpu::set_affinity`], a function sent with [`xcall`](crate::xcall), or a
//! loop that read [`cpu::current`] and retries when it migrated. A CPU's
//! word is never written from another CPU (see [the spill
//! word](#the-spill-word) below), so no operation reaches across CPUs.
//!
//! # How an operation runs
//!
//! With the [rseq backend](crate::cpu::Backend::Rseq) on x86_64, every
//! operation is one restartable sequence: it reads the CPU id, then loads,
//! compares and stores that CPU's word with plain instructions (no lock
//! prefix), and the kernel restarts it if the thread is preempted, migrated
//! or signalled before its final store. Elsewhere (the other backends, other
//! architectures, Miri) it is an atomic read-modify-write on the word of
//! [`cpu::current`], and [`PercpuStack::pop`] also takes
//! a small per-list lock (or, rather than wait for it, reports the list
//! empty). See DESIGN.md, "Restartable per-CPU operations".
//!
//! # The spill word
//!
//! Besides one word per CPU id, every object here has a *spill* word, at
//! index [`cpu::count()`](crate::cpu::count). Under the rseq backend a thread
//! that cannot run restartable sequences (one whose rseq registration
//! failed), or that runs on a CPU id at or beyond the count (a too-low
//! possible-CPU count, an rseq area unregistered behind the library's back),
//! updates the spill word, atomically, instead of a CPU's word: a plain store
//! from a sequence racing an atomic update of the same word would lose one of
//! them. Iteration and sums include the spill word.

use std::fmt;
use std::marker::PhantomData;
use std::mem::offset_of;
use std::ops::{Deref, DerefMut};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use crate::cpu::{self, Place};
use crate::percpu::{AllocError, LazyPercpu, LazyPtr, Percpu};
use crate::sys::rseq;

/// A `u64` for every CPU (plus the [spill word](self#the-spill-word)), all
/// zero at first.
///
/// Eight bytes per CPU: each CPU's word lives in that CPU's own region, so
/// there is no false sharing to pad against.
///
/// ```
/// use cpulocal::ops::PercpuU64;
///
/// let w = PercpuU64::new();
/// w.add(5);
/// // Claim the current CPU's word if it holds 5 (it may not: the thread can
/// // migrate between the two calls).
/// match w.compare_store(5, 7) {
///     Ok(cpu) => assert_eq!(w.load_on(cpu), Some(7)),
///     Err(actual) => assert_eq!(actual, 0),
/// }
/// assert!(w.sum() == 7 || w.sum() == 5);
/// ```
pub struct PercpuU64 {
    words: Percpu,
}

impl PercpuU64 {
    /// Every word at zero.
    ///
    /// ```
    /// let w = cpulocal::ops::PercpuU64::new();
    /// assert!(w.iter().all(|(_cpu, v)| v == 0));
    /// ```
    ///
    /// # Panics
    /// If per-CPU memory cannot be had; see [`PercpuU64::try_new`].
    pub fn new() -> PercpuU64 {
        PercpuU64::try_new().unwrap_or_else(|e| panic!("PercpuU64: {e}"))
    }

    /// Every word at zero, or the reason per-CPU memory could not be had.
    ///
    /// # Errors
    /// [`AllocError`] when the per-CPU regions have no room or the system
    /// refuses memory.
    ///
    /// ```
    /// let w = cpulocal::ops::PercpuU64::try_new().unwrap();
    /// assert_eq!(w.sum(), 0);
    /// ```
    pub fn try_new() -> Result<PercpuU64, AllocError> {
        Ok(PercpuU64 { words: Percpu::alloc_aligned(8, 8)? })
    }

    #[inline(always)]
    fn words(&self) -> Words {
        let ptr0 = NonNull::new(self.words.base()).expect("a Percpu's base is never null");
        // SAFETY: `words` is an 8-byte, 8-aligned, zeroed per-CPU allocation
        // that lives as long as `self`, updated only through `Words`.
        unsafe { Words::new(ptr0) }
    }

    /// Adds `value` (wrapping) to the current CPU's word. No ordering with
    /// other memory (like `fetch_add(value, Relaxed)`).
    ///
    /// ```
    /// let w = cpulocal::ops::PercpuU64::new();
    /// w.add(2);
    /// w.add(u64::MAX); // wraps: adds -1
    /// assert_eq!(w.sum(), 1);
    /// ```
    #[inline]
    pub fn add(&self, value: u64) {
        self.words().add(value);
    }

    /// If the current CPU's word holds `expected`, replaces it with `new`
    /// and returns `Ok(index)` of that word (a CPU id, the thread's stripe
    /// under the fallback backend, or `cpu::count()` for the
    /// [spill word](self#the-spill-word)); otherwise returns `Err(actual)`,
    /// the value the word held.
    ///
    /// Which CPU is "current" is decided inside the operation: it may differ
    /// from the one a preceding [`cpu::current`] or
    /// [`load_on`](Self::load_on) looked at, and then the comparison usually
    /// fails. The load acquires and the store releases (like
    /// `compare_exchange(expected, new, AcqRel, Acquire)`).
    ///
    /// # Errors
    /// `Err(actual)` when the current CPU's word did not hold `expected`.
    ///
    /// ```
    /// // An increment through compare-and-store: retry with what was seen.
    /// let w = cpulocal::ops::PercpuU64::new();
    /// let mut seen = 0;
    /// while let Err(actual) = w.compare_store(seen, seen + 1) {
    ///     seen = actual;
    /// }
    /// assert_eq!(w.sum(), 1);
    /// ```
    #[inline]
    pub fn compare_store(&self, expected: u64, new: u64) -> Result<usize, u64> {
        self.words().compare_store(expected, new)
    }

    /// The word at `index` (a CPU id, or `cpu::count()` for the spill word),
    /// or `None` if `index > cpu::count()`. An acquire load.
    ///
    /// ```
    /// let w = cpulocal::ops::PercpuU64::new();
    /// assert_eq!(w.load_on(0), Some(0));
    /// assert_eq!(w.load_on(cpulocal::cpu::count() + 1), None);
    /// ```
    pub fn load_on(&self, index: usize) -> Option<u64> {
        (index < cpu::slots()).then(|| self.words().load(index))
    }

    /// Every word with its index, ascending: the CPUs', then the spill word
    /// (index `cpu::count()`). Each is read once, when the iterator gets to
    /// it.
    ///
    /// ```
    /// let w = cpulocal::ops::PercpuU64::new();
    /// w.add(3);
    /// assert_eq!(w.iter().len(), cpulocal::cpu::count() + 1);
    /// // A word a thread subtracted from wraps: add them wrapping.
    /// assert_eq!(w.iter().fold(0u64, |t, (_, v)| t.wrapping_add(v)), 3);
    /// ```
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (usize, u64)> + '_ {
        let words = self.words();
        (0..cpu::slots()).map(move |i| (i, words.load(i)))
    }

    /// The wrapping sum of every word. Updates racing with it are either in
    /// it or not; with no concurrent updates it is exact.
    ///
    /// ```
    /// let w = cpulocal::ops::PercpuU64::new();
    /// std::thread::scope(|s| {
    ///     s.spawn(|| w.add(1));
    ///     s.spawn(|| w.add(2));
    /// });
    /// assert_eq!(w.sum(), 3);
    /// ```
    pub fn sum(&self) -> u64 {
        self.words().sum()
    }

    /// Sets every word to zero.
    ///
    /// ```
    /// let mut w = cpulocal::ops::PercpuU64::new();
    /// w.add(9);
    /// w.reset();
    /// assert_eq!(w.sum(), 0);
    /// ```
    pub fn reset(&mut self) {
        self.words().reset();
    }

    /// Stores `value` in CPU `cpu`'s word, if the thread runs on `cpu` when
    /// the store takes effect (see [operations on a given
    /// CPU](self#operations-on-a-given-cpu)). The store releases.
    ///
    /// ```
    /// use cpulocal::{cpu, ops::PercpuU64};
    ///
    /// let w = PercpuU64::new();
    /// w.add(5);
    /// // Reset the word this thread counted on, unless it has moved since.
    /// let here = cpu::current();
    /// if w.store_on(here, 0).is_ok() {
    ///     assert_eq!(w.load_on(here), Some(0));
    /// }
    /// assert!(w.store_on(cpu::count(), 1).is_err(), "no such CPU");
    /// ```
    ///
    /// # Errors
    /// [`NotOnCpu`] if the thread was not on `cpu` (or `cpu >= cpu::count()`,
    /// or, under the rseq backend, the thread can no longer run restartable
    /// sequences: late in its exit); the word is unchanged.
    pub fn store_on(&self, cpu: usize, value: u64) -> Result<(), NotOnCpu> {
        if cpu >= cpu::count() {
            return Err(NotOnCpu { cpu });
        }
        let stored = match cpu::place() {
            Place::Rseq(area) => {
                // SAFETY: as in `add`; `cpu` is below the possible-CPU count.
                unsafe { rseq::percpu_store_on(area, self.words().0.as_ptr(), cpu as u32, value) }
            }
            Place::Slot(slot) if slot == cpu => {
                self.words().word(slot).store(value, Ordering::Release);
                true
            }
            Place::Slot(_) => false,
        };
        stored.then_some(()).ok_or(NotOnCpu { cpu })
    }
}

/// The words of an 8-byte per-CPU allocation, by slot 0's address: the
/// operations [`PercpuU64`], [`Counter`](crate::Counter) and the event
/// counters share, whether their memory was allocated eagerly or on first
/// use.
#[derive(Clone, Copy)]
pub(crate) struct Words(NonNull<u8>);

impl Words {
    /// The words whose slot 0 is at `ptr0`.
    ///
    /// # Safety
    /// `ptr0` is slot 0's copy of a per-CPU allocation of 8 bytes aligned to
    /// 8, zeroed when allocated, that outlives every use of the returned
    /// value; its CPU words are only updated through `Words`.
    #[inline(always)]
    pub(crate) unsafe fn new(ptr0: NonNull<u8>) -> Words {
        Words(ptr0)
    }

    /// The word at `index`, unchecked: `index < cpu::slots()`.
    #[inline(always)]
    fn word(&self, index: usize) -> &AtomicU64 {
        // SAFETY: (`Words::new`) every slot holds 8 bytes aligned to 8 that
        // live as long as the allocation; they are only accessed atomically
        // (or by single-instruction restartable sequences, atomic too).
        unsafe { AtomicU64::from_ptr(LazyPercpu::slot(self.0, index).cast()) }
    }

    /// See [`PercpuU64::add`].
    #[inline(always)]
    pub(crate) fn add(self, value: u64) {
        match cpu::place() {
            // SAFETY: `area` is this thread's; every slot's word is valid;
            // with Place::Rseq, CPU words are only updated by sequences.
            Place::Rseq(area) => unsafe { rseq::percpu_add(area, self.0.as_ptr(), value) },
            Place::Slot(slot) => {
                self.word(slot).fetch_add(value, Ordering::Relaxed);
            }
        }
    }

    /// See [`PercpuU64::compare_store`].
    #[inline(always)]
    pub(crate) fn compare_store(self, expected: u64, new: u64) -> Result<usize, u64> {
        match cpu::place() {
            // SAFETY: as in `add`.
            Place::Rseq(area) => unsafe {
                rseq::percpu_cmpeqv_storev(area, self.0.as_ptr(), expected, new)
            },
            Place::Slot(slot) => self
                .word(slot)
                .compare_exchange(expected, new, Ordering::AcqRel, Ordering::Acquire)
                .map(|_| slot),
        }
    }

    /// The word at `index`, which must be below `cpu::slots()`. An acquire
    /// load.
    #[inline]
    pub(crate) fn load(self, index: usize) -> u64 {
        assert!(index < cpu::slots(), "word {index} of {}", cpu::slots());
        self.word(index).load(Ordering::Acquire)
    }

    /// The wrapping sum of every word.
    pub(crate) fn sum(self) -> u64 {
        (0..cpu::slots()).fold(0u64, |acc, i| acc.wrapping_add(self.load(i)))
    }

    /// Sets every word to zero. Only for owners with exclusive access:
    /// a store racing a restartable sequence loses one of them.
    pub(crate) fn reset(self) {
        for i in 0..cpu::slots() {
            self.word(i).store(0, Ordering::Relaxed);
        }
    }
}

/// Per-CPU words allocated on first use, for `const` constructors: only the
/// base pointer, 8 bytes, since the size is known ([`Counter`] holds one).
///
/// [`Counter`]: crate::Counter
pub(crate) struct LazyWords {
    /// Slot 0's word, or null until allocated, and the fast path's bound.
    ptr: LazyPtr,
}

impl LazyWords {
    pub(crate) const fn new() -> LazyWords {
        LazyWords { ptr: LazyPtr::new() }
    }

    /// The words, if allocated: one load (plain on x86-64) and a test. The
    /// acquire pairs with the publishing exchange, so the zeroes are seen.
    #[inline(always)]
    pub(crate) fn get(&self) -> Option<Words> {
        // SAFETY: a published pointer is an 8-byte, 8-aligned, zeroed
        // per-CPU allocation, freed only when `self` is dropped.
        self.ptr.get().map(|p| unsafe { Words::new(p) })
    }

    /// See [`add_inline`].
    #[inline(always)]
    pub(crate) fn add_inline(&self, value: u64) -> bool {
        add_inline(&self.ptr, value)
    }

    /// The words, allocating them on first use.
    pub(crate) fn get_or_alloc(&self) -> Result<Words, AllocError> {
        let ptr0 = self.ptr.get_or_alloc(8, 8)?;
        // SAFETY: as in `get`.
        Ok(unsafe { Words::new(ptr0) })
    }

    /// As [`get_or_alloc`](Self::get_or_alloc), for callers with a way to
    /// go on without the words: `None` at once, building no error, while
    /// the system's refusal of the regions stands.
    pub(crate) fn get_or_try_alloc(&self) -> Option<Words> {
        if let Some(words) = self.get() {
            return Some(words);
        }
        if crate::region::refusal_stands() {
            return None;
        }
        self.get_or_alloc().ok()
    }
}

/// Adds `value` to the current CPU's copy of the lazily allocated per-CPU
/// word `ptr` if that can be done inline: the restartable fast path on
/// x86-64 (once the thread's slow path armed it), else [`Words::add`]. False
/// when the caller must take its slow path: allocate, or let
/// [`Words::add`] find the thread's place and then
/// [`cpu::arm_fast_path`].
///
/// `ptr` must be (the pointer of) an 8-byte, 8-aligned per-CPU word whose
/// CPU words are only updated through [`Words`], freed only with its owner.
#[inline(always)]
pub(crate) fn add_inline(ptr: &LazyPtr, value: u64) -> bool {
    if rseq::HAS_PERCPU_OPS {
        // SAFETY: null, or a published word per slot, alive as long as
        // `ptr`'s owner, whose CPU words are only updated through `Words`
        // (restartable sequences).
        return unsafe { rseq::percpu_add_fast::<0>(ptr.get_raw(), value) };
    }
    let Some(ptr0) = ptr.get() else { return false };
    // SAFETY: as above.
    unsafe { Words::new(ptr0) }.add(value);
    true
}

impl Drop for LazyWords {
    fn drop(&mut self) {
        if let Some(ptr0) = self.ptr.get_mut() {
            // SAFETY: published by `publish_lazily(.., 8, 8)`; `&mut self`
            // means no word is in use any more.
            unsafe { crate::percpu::free_published(ptr0, 8) };
        }
    }
}

impl Default for PercpuU64 {
    fn default() -> Self {
        PercpuU64::new()
    }
}

impl fmt::Debug for PercpuU64 {
    /// The non-zero words, by index.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PercpuU64").field("words", &NonZeroWords(self)).finish()
    }
}

struct NonZeroWords<'a>(&'a PercpuU64);

impl fmt::Debug for NonZeroWords<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().filter(|&(_, v)| v != 0)).finish()
    }
}

/// An element of a [`PercpuStack`]: a value, and the link the stack threads
/// through it (so pushing and popping allocate nothing).
///
/// ```
/// use cpulocal::ops::Node;
///
/// let mut node = Box::new(Node::new(String::from("buffer")));
/// node.push_str(" reused"); // Node<T> derefs to T
/// assert_eq!(node.into_inner(), "buffer reused");
/// ```
pub struct Node<T> {
    /// The next node down while this one is in a stack; meaningless outside.
    next: AtomicPtr<Node<T>>,
    value: T,
}

impl<T> Node<T> {
    /// A node holding `value`, in no stack.
    ///
    /// ```
    /// let node = cpulocal::ops::Node::new(7u32);
    /// assert_eq!(*node, 7);
    /// ```
    pub fn new(value: T) -> Node<T> {
        Node { next: AtomicPtr::new(ptr::null_mut()), value }
    }

    /// The value (call it on a popped `Box<Node<T>>` directly).
    ///
    /// ```
    /// use cpulocal::ops::{Node, PercpuStack};
    /// let stack = PercpuStack::new();
    /// stack.push(Box::new(Node::new(vec![1u8])));
    /// # let mut stack = stack;
    /// let v: Vec<u8> = stack.drain().next().unwrap().into_inner();
    /// assert_eq!(v, [1]);
    /// ```
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for Node<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Node<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Node<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("value", &self.value).finish()
    }
}

/// One CPU's list: the head word (what the sequences update), then the lock
/// that serializes atomic-path pops.
#[repr(C, align(16))]
struct Slot {
    /// The top node's address (`*mut Node<T>`), or 0 when empty.
    head: AtomicU64,
    /// 1 while an atomic-path pop runs on this list. Unused on CPU lists
    /// that restartable sequences own.
    popping: AtomicU32,
}

/// A LIFO of boxed [`Node`]s for every CPU (plus the
/// [spill list](self#the-spill-word)): a per-CPU free list.
///
/// [`push`](Self::push) puts a node on the current CPU's list and
/// [`pop`](Self::pop) takes the top node of the current CPU's list, so nodes
/// mostly go back to threads on the CPU that last freed them. A pop does not
/// look at other CPUs' lists: it returns `None` when the current CPU's list
/// (and the spill list) is empty even if other CPUs' lists are not.
/// [`drain`](Self::drain) empties them all. Dropping the stack drops every
/// node left in it.
///
/// A stack costs 24 bytes per CPU, in each CPU's own region: the list's
/// head and pop lock, and a word of [`len`](Self::len)'s count.
///
/// ```
/// use cpulocal::ops::{Node, PercpuStack};
///
/// let mut free: PercpuStack<[u8; 64]> = PercpuStack::new();
/// free.push(Box::new(Node::new([0; 64])));
/// // A thread on the same CPU gets it back; after a migration, pop finds
/// // another CPU's list (here, empty) and we allocate.
/// let buf = free.pop().unwrap_or_else(|| Box::new(Node::new([0; 64])));
/// free.push(buf);
/// assert!((1..=2).contains(&free.drain().count()));
/// ```
///
/// It is `Send` and `Sync` when `T: Send`, as nodes move between threads
/// whole and are never shared:
///
/// ```
/// fn shared<S: Send + Sync>() {}
/// shared::<cpulocal::ops::PercpuStack<Vec<u8>>>();
/// ```
///
/// ```compile_fail
/// fn shared<S: Sync>() {}
/// shared::<cpulocal::ops::PercpuStack<std::rc::Rc<u8>>>();
/// ```
///
/// # Why it is safe
///
/// Popping reads the `next` link of the node on top. With restartable
/// sequences that read happens inside the sequence, on the CPU whose list it
/// is: had anyone else run on that CPU since the sequence read the top (and
/// perhaps popped and freed that node), the sequence would have restarted
/// instead. Atomic-path pops on one list take its lock, so among them no node
/// can be popped (and freed, or pushed back: the ABA problem) between reading
/// the top and swinging the head; pushes need no lock, as a push that races
/// a pop only makes the pop's compare-exchange fail and retry.
pub struct PercpuStack<T> {
    slots: Percpu,
    /// Pushes minus pops, counted per CPU (on whichever CPU the thread is
    /// on after the push or pop, which need not be the list's).
    len: PercpuU64,
    _owns: PhantomData<Box<Node<T>>>,
}

// SAFETY: the stack owns its nodes; moving it moves them (needs `T: Send`).
unsafe impl<T: Send> Send for PercpuStack<T> {}
// SAFETY: through `&PercpuStack` nodes are moved in (push) and out (pop),
// whole, between threads, never shared: like `Mutex<Vec<Box<T>>>`, this
// needs only `T: Send`. The lists are updated by restartable sequences or
// atomics (see the type docs).
unsafe impl<T: Send> Sync for PercpuStack<T> {}

impl<T> PercpuStack<T> {
    /// Every CPU's list empty.
    ///
    /// ```
    /// let free = cpulocal::ops::PercpuStack::<[u8; 256]>::new();
    /// assert!(free.pop().is_none());
    /// ```
    ///
    /// # Panics
    /// If per-CPU memory cannot be had; see [`PercpuStack::try_new`].
    pub fn new() -> PercpuStack<T> {
        PercpuStack::try_new().unwrap_or_else(|e| panic!("PercpuStack: {e}"))
    }

    /// Every CPU's list empty, or the reason per-CPU memory could not be had.
    ///
    /// ```
    /// let free = cpulocal::ops::PercpuStack::<String>::try_new()?;
    /// assert_eq!(free.len(), 0);
    /// # Ok::<(), cpulocal::AllocError>(())
    /// ```
    ///
    /// # Errors
    /// [`AllocError::TooLarge`] or [`AllocError::System`] if the per-CPU
    /// regions have no room left or the system refuses the memory.
    pub fn try_new() -> Result<PercpuStack<T>, AllocError> {
        let slots = Percpu::alloc_aligned(size_of::<Slot>(), align_of::<Slot>())?;
        Ok(PercpuStack { slots, len: PercpuU64::try_new()?, _owns: PhantomData })
    }

    /// The list at `index`, unchecked: `index < cpu::slots()`.
    #[inline(always)]
    fn slot(&self, index: usize) -> &Slot {
        // SAFETY: every slot holds a zeroed (empty, unlocked) `Slot`, aligned,
        // living as long as `self`, and only accessed atomically (or by
        // restartable sequences, on the head of CPU slots).
        unsafe { &*self.slots.slot(index).cast::<Slot>() }
    }

    /// Puts `node` on top of the current CPU's list.
    ///
    /// ```
    /// use cpulocal::ops::{Node, PercpuStack};
    /// let free = PercpuStack::new();
    /// free.push(Box::new(Node::new(0u64)));
    /// assert_eq!(free.len(), 1);
    /// ```
    #[inline]
    pub fn push(&self, node: Box<Node<T>>) {
        self.push_raw(Box::into_raw(node));
        self.len.add(1);
    }

    #[inline]
    fn push_raw(&self, node: *mut Node<T>) {
        match cpu::place() {
            Place::Rseq(area) => {
                // Guess the top from the CPU we are on; a wrong guess (we
                // migrated, or someone pushed or popped) fails the
                // compare-and-store, which tells us the right one.
                let mut top = self.slot(cpu::current()).head.load(Ordering::Relaxed);
                loop {
                    // SAFETY: we own `node` until the store publishes it.
                    unsafe { (*node).next.store(top as *mut Node<T>, Ordering::Relaxed) };
                    // SAFETY: `area` is this thread's; with Place::Rseq, CPU
                    // heads are only updated by sequences. The store of
                    // `next` above comes first in program order, and x86
                    // stores are not reordered, so a popper sees it.
                    let pushed = unsafe {
                        rseq::percpu_cmpeqv_storev(area, self.slots.base(), top, node as u64)
                    };
                    match pushed {
                        Ok(_) => return,
                        Err(actual) => top = actual,
                    }
                }
            }
            Place::Slot(slot) => self.push_atomic(slot, node),
        }
    }

    /// Takes the top node of the current CPU's list, if any (or, failing
    /// that, of the spill list).
    ///
    /// Off the rseq path, a pop that finds another pop on the same list in
    /// progress spins briefly and then returns `None` rather than wait for
    /// it. So `pop`, like `push`, never blocks and may be called from a
    /// signal handler.
    ///
    /// ```
    /// use cpulocal::ops::{Node, PercpuStack};
    /// let free = PercpuStack::new();
    /// free.push(Box::new(Node::new(1u8)));
    /// // Unless the thread moved to another CPU in between, it gets it back.
    /// if let Some(node) = free.pop() {
    ///     assert_eq!(node.into_inner(), 1);
    /// }
    /// ```
    #[inline]
    pub fn pop(&self) -> Option<Box<Node<T>>> {
        let node = match cpu::place() {
            Place::Rseq(area) => {
                // SAFETY: `area` is this thread's; with Place::Rseq, CPU heads
                // are only updated by sequences; a non-zero head is a node in
                // this list, live (owned by the stack) until popped, whose
                // `next` link is at offset `offset_of!(Node<T>, next)`.
                let (_, top) = unsafe {
                    rseq::percpu_cmpnev_storeoffp_load(
                        area,
                        self.slots.base(),
                        0,
                        offset_of!(Node<T>, next),
                    )
                };
                match top {
                    0 => self.pop_atomic(cpu::spill_slot()),
                    top => top as *mut Node<T>,
                }
            }
            Place::Slot(slot) => self.pop_atomic(slot),
        };
        self.popped(node)
    }

    /// The popped `node`, owned, if not null; counts the pop.
    #[inline]
    fn popped(&self, node: *mut Node<T>) -> Option<Box<Node<T>>> {
        if node.is_null() {
            return None;
        }
        self.len.add(1u64.wrapping_neg());
        // SAFETY: a popped node came from `Box::into_raw` in `push`, and
        // popping handed its ownership to us alone.
        Some(unsafe { Box::from_raw(node) })
    }

    /// Puts `node` on top of CPU `cpu`'s list, if the thread runs on `cpu`
    /// when the push takes effect (see [operations on a given
    /// CPU](self#operations-on-a-given-cpu)).
    ///
    /// ```
    /// use cpulocal::{cpu, ops::{Node, PercpuStack}};
    ///
    /// let free = PercpuStack::new();
    /// let node = Box::new(Node::new([0u8; 64]));
    /// // Give the buffer to this CPU's list; if the thread moved meanwhile,
    /// // to the list of wherever it is now.
    /// if let Err(node) = free.push_on(cpu::current(), node) {
    ///     free.push(node);
    /// }
    /// assert_eq!(free.len(), 1);
    /// ```
    ///
    /// # Errors
    /// Hands `node` back if the thread was not on `cpu` (or
    /// `cpu >= cpu::count()`, or, under the rseq backend, the thread can no
    /// longer run restartable sequences); the list is unchanged.
    pub fn push_on(&self, cpu: usize, node: Box<Node<T>>) -> Result<(), Box<Node<T>>> {
        if cpu >= cpu::count() {
            return Err(node);
        }
        let node = Box::into_raw(node);
        // SAFETY: `node` came from `Box::into_raw` just above and was not
        // published: it is still ours to hand back.
        let give_back = || Err(unsafe { Box::from_raw(node) });
        match cpu::place() {
            Place::Rseq(area) => {
                let mut top = self.slot(cpu).head.load(Ordering::Relaxed);
                loop {
                    // SAFETY: we own `node` until the store publishes it.
                    unsafe { (*node).next.store(top as *mut Node<T>, Ordering::Relaxed) };
                    // SAFETY: as in `push`; `cpu` is below the possible-CPU
                    // count.
                    let pushed = unsafe {
                        rseq::percpu_cmpeqv_storev_on(
                            area,
                            self.slots.base(),
                            cpu as u32,
                            top,
                            node as u64,
                        )
                    };
                    match pushed {
                        Ok(()) => break,
                        Err(Some(actual)) => top = actual,
                        Err(None) => return give_back(),
                    }
                }
            }
            Place::Slot(slot) if slot == cpu => self.push_atomic(slot, node),
            Place::Slot(_) => return give_back(),
        }
        self.len.add(1);
        Ok(())
    }

    /// Takes the top node of CPU `cpu`'s list, if the thread runs on `cpu`
    /// when the pop takes effect (see [operations on a given
    /// CPU](self#operations-on-a-given-cpu)): `Ok(None)` if that list is
    /// empty. Unlike [`pop`](Self::pop), it never looks at the spill list.
    ///
    /// ```
    /// use cpulocal::{cpu, ops::{Node, PercpuStack}};
    ///
    /// let free = PercpuStack::new();
    /// let here = cpu::current();
    /// if free.push_on(here, Box::new(Node::new(9u32))).is_ok() {
    ///     // Still here: the node is on top of this CPU's list.
    ///     if let Ok(popped) = free.pop_on(here) {
    ///         assert_eq!(popped.map(|n| n.into_inner()), Some(9));
    ///     }
    /// }
    /// assert!(free.pop_on(cpu::count()).is_err(), "no such CPU");
    /// ```
    ///
    /// # Errors
    /// [`NotOnCpu`] if the thread was not on `cpu` (or `cpu >= cpu::count()`,
    /// or, under the rseq backend, the thread can no longer run restartable
    /// sequences); the list is unchanged.
    pub fn pop_on(&self, cpu: usize) -> Result<Option<Box<Node<T>>>, NotOnCpu> {
        if cpu >= cpu::count() {
            return Err(NotOnCpu { cpu });
        }
        let node = match cpu::place() {
            Place::Rseq(area) => {
                // SAFETY: as in `pop`; `cpu` is below the possible-CPU count.
                let top = unsafe {
                    rseq::percpu_cmpnev_storeoffp_load_on(
                        area,
                        self.slots.base(),
                        cpu as u32,
                        0,
                        offset_of!(Node<T>, next),
                    )
                };
                top.ok_or(NotOnCpu { cpu })? as *mut Node<T>
            }
            Place::Slot(slot) if slot == cpu => self.pop_atomic(slot),
            Place::Slot(_) => return Err(NotOnCpu { cpu }),
        };
        Ok(self.popped(node))
    }

    /// How many nodes the stack holds, on every CPU's list.
    ///
    /// Exact when no push or pop runs meanwhile; while they run, it is off
    /// by at most the number in flight. Pushes and pops each add to a
    /// per-CPU count (one more restartable add), and `len` sums it.
    ///
    /// ```
    /// use cpulocal::ops::{Node, PercpuStack};
    /// let free = PercpuStack::new();
    /// (0..3).for_each(|i| free.push(Box::new(Node::new(i))));
    /// assert_eq!(free.len(), 3);
    /// # let mut free = free;
    /// free.drain().next();
    /// assert_eq!(free.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        // A pop counted before the push it undoes makes the sum briefly
        // negative: report 0 then.
        let n = self.len.sum() as i64;
        usize::try_from(n).unwrap_or(0)
    }

    /// Whether [`len`](Self::len) is 0.
    ///
    /// ```
    /// assert!(cpulocal::ops::PercpuStack::<u8>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_atomic(&self, slot: usize, node: *mut Node<T>) {
        let head = &self.slot(slot).head;
        let mut top = head.load(Ordering::Relaxed);
        loop {
            // SAFETY: we own `node` until the compare-exchange publishes it.
            unsafe { (*node).next.store(top as *mut Node<T>, Ordering::Relaxed) };
            match head.compare_exchange_weak(top, node as u64, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => top = actual,
            }
        }
    }

    /// Pops from `slot` with atomics, under the slot's pop lock. Returns
    /// null when the list is empty or another pop holds the lock.
    #[inline]
    fn pop_atomic(&self, slot: usize) -> *mut Node<T> {
        let slot = self.slot(slot);
        if slot.head.load(Ordering::Relaxed) == 0 {
            return ptr::null_mut();
        }
        Self::pop_locked(slot)
    }

    fn pop_locked(slot: &Slot) -> *mut Node<T> {
        let Some(_lock) = PopLock::try_new(&slot.popping) else {
            return ptr::null_mut();
        };
        let mut top = slot.head.load(Ordering::Acquire);
        while top != 0 {
            // SAFETY: `top` is in the list (acquired from its head, which
            // published its `next`), and stays there until we pop it: only
            // the holder of the pop lock pops from this list.
            let next = unsafe { (*(top as *mut Node<T>)).next.load(Ordering::Relaxed) };
            match slot.head.compare_exchange_weak(
                top,
                next as u64,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return top as *mut Node<T>,
                Err(actual) => top = actual,
            }
        }
        ptr::null_mut()
    }

    /// Takes every node from every list (CPUs' and spill), one list after
    /// another, each top first. Nodes the iterator does not get to stay in
    /// the stack.
    ///
    /// ```
    /// use cpulocal::ops::{Node, PercpuStack};
    /// let mut free = PercpuStack::new();
    /// (0..4).for_each(|i| free.push(Box::new(Node::new(i))));
    /// let mut got: Vec<i32> = free.drain().map(|n| n.into_inner()).collect();
    /// got.sort();
    /// assert_eq!(got, [0, 1, 2, 3]);
    /// assert!(free.is_empty());
    /// ```
    pub fn drain(&mut self) -> Drain<'_, T> {
        Drain { stack: self, index: 0 }
    }
}

impl<T> Default for PercpuStack<T> {
    fn default() -> Self {
        PercpuStack::new()
    }
}

impl<T> Drop for PercpuStack<T> {
    fn drop(&mut self) {
        self.drain().for_each(drop);
    }
}

impl<T> fmt::Debug for PercpuStack<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PercpuStack").field("len", &self.len()).finish_non_exhaustive()
    }
}

/// The iterator of [`PercpuStack::drain`].
pub struct Drain<'a, T> {
    stack: &'a mut PercpuStack<T>,
    index: usize,
}

impl<T> Iterator for Drain<'_, T> {
    type Item = Box<Node<T>>;

    fn next(&mut self) -> Option<Box<Node<T>>> {
        while self.index < cpu::slots() {
            let head = &self.stack.slot(self.index).head;
            let top = head.load(Ordering::Acquire) as *mut Node<T>;
            if top.is_null() {
                self.index += 1;
                continue;
            }
            // SAFETY: `&mut` on the stack excludes every other push and pop,
            // so `top` is the list's own, live node; unlinking it hands it to
            // us (it came from `Box::into_raw` in `push`).
            unsafe {
                head.store((*top).next.load(Ordering::Relaxed) as u64, Ordering::Relaxed);
                self.stack.len.add(1u64.wrapping_neg());
                return Some(Box::from_raw(top));
            }
        }
        None
    }
}

impl<T> fmt::Debug for Drain<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain").field("index", &self.index).finish_non_exhaustive()
    }
}

/// The pop lock of one list, held for a few instructions.
///
/// Taking it spins briefly and then gives up (the pop reports an empty
/// list) rather than wait: the holder may be preempted, or be the very
/// thread a signal handler now pops on, which waiting would deadlock.
#[must_use = "if unused the lock is released at once"]
struct PopLock<'a>(&'a AtomicU32);

impl<'a> PopLock<'a> {
    /// Attempts before giving up: a pop holds the lock for a few dozen
    /// instructions, so this only fails when the holder was interrupted.
    const TRIES: u32 = 128;

    fn try_new(word: &'a AtomicU32) -> Option<PopLock<'a>> {
        for _ in 0..Self::TRIES {
            if word.load(Ordering::Relaxed) == 0
                && word.compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                return Some(PopLock(word));
            }
            std::hint::spin_loop();
        }
        None
    }
}

impl Drop for PopLock<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

/// An operation aimed at CPU [`cpu`](Self::cpu) ran while the thread was on
/// another CPU (or the CPU id does not exist), and changed nothing. See
/// [operations on a given CPU](self#operations-on-a-given-cpu).
///
/// ```
/// let w = cpulocal::ops::PercpuU64::new();
/// let err = w.store_on(usize::MAX, 1).unwrap_err();
/// assert_eq!(err.cpu, usize::MAX);
/// assert!(err.to_string().contains("not running on CPU"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NotOnCpu {
    /// The CPU the operation was aimed at.
    pub cpu: usize,
}

impl fmt::Display for NotOnCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the thread was not running on CPU {} (or no such CPU exists)", self.cpu)
    }
}

impl std::error::Error for NotOnCpu {}
