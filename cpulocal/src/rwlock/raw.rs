//! The reader/writer protocol, apart from where its counts live.
//!
//! [`RawRwLock`] holds no data and no per-CPU memory: it is generic over an
//! [`Env`] that supplies the per-slot lock and unlock counts, the two fences
//! and futex-style sleeping. The library's `Env` is per-CPU memory with
//! restartable sequences and `membarrier`; `tests/loom_rwlock.rs` compiles
//! this very file (through `#[path]`) against a loom model whose CPUs are
//! slots a thread may hop between. So this file names nothing through
//! `crate::`: atomics come from `super::sync`, which is `std::sync` here and
//! `loom::sync` there.
//!
//! Words (DESIGN.md, "The distributed reader/writer lock", has the proofs):
//!
//! ```text
//! state   WRITER: a writer holds the lock or waits for readers to leave;
//!                 readers that see it back off. Written only by writers,
//!                 and by readers going to sleep while WRITER is set.
//!         SLEEPERS: readers sleep on `state` (only while WRITER is set).
//! wlock   the writers' mutex: 0 free, 1 held, 2 held and contended.
//! parked  readers that met a writer and are not in yet; a writer does
//!         not set WRITER until it is 0.
//! gate    1 while the writer sleeps waiting for readers to leave.
//! per slot: locks (read_lock attempts), unlocks (read_unlock and back-offs),
//!         both monotonic, wrapping.
//! ```

use std::hint;
use std::thread;

use super::sync::atomic::{
    fence, AtomicU32,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};

/// `state`: a writer holds the lock or is waiting for readers to leave.
const WRITER: u32 = 1;
/// `state`: readers sleep on the word and must be woken when it clears.
const SLEEPERS: u32 = 2;

/// What the protocol needs from its surroundings.
pub(crate) trait Env {
    /// How many times a waiter re-checks (spinning, then yielding) before it
    /// sleeps.
    const SPINS: u32;

    /// Adds one to the lock count of the slot the caller is on. Needs no
    /// ordering of its own; [`Env::reader_fence`] follows it.
    fn count_lock(&self);
    /// Adds one to the unlock count of the slot the caller is on (maybe not
    /// the slot of its `count_lock`), with release ordering: everything the
    /// caller did before is visible to whoever reads the count with acquire.
    fn count_unlock(&self);
    /// The number of slots the counts are spread over.
    fn slots(&self) -> usize;
    /// Slot `slot`'s lock count, read with acquire ordering.
    fn locks(&self, slot: usize) -> u64;
    /// Slot `slot`'s unlock count, read with acquire ordering.
    fn unlocks(&self, slot: usize) -> u64;
    /// The readers' half of the fence between a count and the next load of
    /// `state`: with [`Env::writer_fence`], acts as `fence(SeqCst)` on both
    /// sides.
    fn reader_fence(&self);
    /// The writer's half, between setting `WRITER` and reading the counts.
    fn writer_fence(&self);
    /// Sleeps while `word` holds `expected`; may return spuriously.
    fn wait(&self, word: &AtomicU32, expected: u32);
    /// Wakes up to `n` threads sleeping in [`Env::wait`] on `word`.
    fn wake(&self, word: &AtomicU32, n: u32);
}

/// The word readers read on every lock and unlock, with the environment
/// (whose per-CPU base and fence mode they also read) on the same line.
#[repr(C, align(128))]
struct Hot<E> {
    state: AtomicU32,
    env: E,
}

/// Words written only while a writer is around, on a line of their own.
#[repr(align(128))]
struct Cold {
    wlock: AtomicU32,
    parked: AtomicU32,
    gate: AtomicU32,
}

/// The lock without its data. See the [module docs](self).
pub(crate) struct RawRwLock<E> {
    hot: Hot<E>,
    cold: Cold,
}

impl<E: Env> RawRwLock<E> {
    pub(crate) fn new(env: E) -> Self {
        RawRwLock {
            hot: Hot { state: AtomicU32::new(0), env },
            cold: Cold {
                wlock: AtomicU32::new(0),
                parked: AtomicU32::new(0),
                gate: AtomicU32::new(0),
            },
        }
    }

    pub(crate) fn env(&self) -> &E {
        &self.hot.env
    }

    /// Takes a read lock, waiting while a writer is around.
    #[inline]
    pub(crate) fn read_lock(&self) {
        let env = &self.hot.env;
        env.count_lock();
        env.reader_fence();
        if self.hot.state.load(Acquire) & WRITER != 0 {
            self.read_lock_slow();
        }
    }

    /// Takes a read lock if no writer is around.
    #[inline]
    pub(crate) fn try_read_lock(&self) -> bool {
        // Not needed for correctness: keeps callers that retry in a loop
        // from making the writer's sums disagree over and over.
        if self.hot.state.load(Relaxed) & WRITER != 0 {
            return false;
        }
        let env = &self.hot.env;
        env.count_lock();
        env.reader_fence();
        if self.hot.state.load(Acquire) & WRITER == 0 {
            return true;
        }
        self.back_off();
        false
    }

    /// Releases a read lock.
    ///
    /// # Safety
    /// The caller holds a read lock it took from this lock (on any CPU).
    #[inline]
    pub(crate) unsafe fn read_unlock(&self) {
        let env = &self.hot.env;
        env.count_unlock();
        env.reader_fence();
        if self.hot.state.load(Relaxed) & WRITER != 0 {
            self.wake_writer();
        }
    }

    /// A reader whose lock count is in met a writer: count it out, sleep
    /// until the writer leaves, and try again, ahead of the next writer.
    #[cold]
    fn read_lock_slow(&self) {
        self.back_off();
        // Registered: no writer sets WRITER again until we are in (apart
        // from one that read `parked` before this increment).
        self.cold.parked.fetch_add(1, SeqCst);
        let env = &self.hot.env;
        loop {
            self.wait_for_writer();
            env.count_lock();
            env.reader_fence();
            if self.hot.state.load(Acquire) & WRITER == 0 {
                break;
            }
            self.back_off();
        }
        if self.cold.parked.fetch_sub(1, Release) == 1 {
            env.wake(&self.cold.parked, 1);
        }
    }

    /// Counts out a lock that saw WRITER, and tells the writer.
    #[cold]
    fn back_off(&self) {
        self.hot.env.count_unlock();
        self.wake_writer();
    }

    /// An unlock count went up while WRITER was set: wake the writer if it
    /// sleeps waiting for readers.
    #[cold]
    fn wake_writer(&self) {
        // Pairs with the fence in `wait_for_readers`: either the writer's
        // sums see our unlock, or we see its `gate`.
        fence(SeqCst);
        let gate = &self.cold.gate;
        if gate.load(Relaxed) != 0 && gate.swap(0, Relaxed) != 0 {
            self.hot.env.wake(gate, 1);
        }
    }

    /// Waits until WRITER is clear: spins briefly, then sleeps on `state`.
    fn wait_for_writer(&self) {
        let state = &self.hot.state;
        let mut round = 0;
        loop {
            let s = state.load(SeqCst);
            if s & WRITER == 0 {
                return;
            }
            if round < E::SPINS {
                spin(round);
                round += 1;
                continue;
            }
            if s & SLEEPERS == 0
                && state.compare_exchange(s, s | SLEEPERS, Relaxed, Relaxed).is_err()
            {
                continue;
            }
            self.hot.env.wait(state, s | SLEEPERS);
        }
    }

    /// Takes the write lock, waiting for other writers, then for the readers
    /// blocked by the previous writer to get in, then for every reader to
    /// leave.
    pub(crate) fn write_lock(&self) {
        self.lock_writers();
        self.wait_for_parked();
        self.block_readers();
        self.wait_for_readers();
    }

    /// Takes the write lock if nobody holds or waits for it. May fail while
    /// a reader is between its count and its check of `state`.
    pub(crate) fn try_write_lock(&self) -> bool {
        if self.cold.wlock.compare_exchange(0, 1, Acquire, Relaxed).is_err() {
            return false;
        }
        if self.cold.parked.load(SeqCst) != 0 {
            self.unlock_writers();
            return false;
        }
        self.block_readers();
        if self.drained() {
            return true;
        }
        // SAFETY: we hold the writers' mutex and set WRITER.
        unsafe { self.write_unlock() };
        false
    }

    /// Releases the write lock.
    ///
    /// # Safety
    /// The caller holds the write lock.
    #[inline]
    pub(crate) unsafe fn write_unlock(&self) {
        if self.hot.state.swap(0, SeqCst) & SLEEPERS != 0 {
            self.hot.env.wake(&self.hot.state, u32::MAX);
        }
        self.unlock_writers();
    }

    /// Sets WRITER and makes every reader's later check of `state` see it.
    fn block_readers(&self) {
        self.hot.state.store(WRITER, SeqCst);
        self.hot.env.writer_fence();
    }

    /// Whether every read lock counted so far has been counted out: the sum
    /// of the unlock counts, read first, equals the sum of the lock counts.
    fn drained(&self) -> bool {
        let env = &self.hot.env;
        let slots = env.slots();
        let unlocks = (0..slots).fold(0u64, |sum, s| sum.wrapping_add(env.unlocks(s)));
        // Every unlock summed above happened after its lock, and the acquire
        // loads make that lock visible to the loads below.
        let locks = (0..slots).fold(0u64, |sum, s| sum.wrapping_add(env.locks(s)));
        locks == unlocks
    }

    /// Waits until [`drained`](Self::drained): spins briefly, then sleeps on
    /// `gate`, woken by the unlock of any reader that sees WRITER.
    fn wait_for_readers(&self) {
        let gate = &self.cold.gate;
        let mut round = 0;
        while !self.drained() {
            if round < E::SPINS {
                spin(round);
                round += 1;
                continue;
            }
            gate.store(1, Relaxed);
            // Pairs with the fence in `wake_writer`.
            fence(SeqCst);
            if self.drained() {
                break;
            }
            self.hot.env.wait(gate, 1);
        }
        gate.store(0, Relaxed);
    }

    /// Waits until the readers that met the previous writer are in.
    fn wait_for_parked(&self) {
        let parked = &self.cold.parked;
        let mut round = 0;
        loop {
            let p = parked.load(SeqCst);
            if p == 0 {
                return;
            }
            if round < E::SPINS {
                spin(round);
                round += 1;
                continue;
            }
            self.hot.env.wait(parked, p);
        }
    }

    fn lock_writers(&self) {
        let wlock = &self.cold.wlock;
        if wlock.compare_exchange(0, 1, Acquire, Relaxed).is_ok() {
            return;
        }
        let mut round = 0;
        loop {
            if round < E::SPINS {
                if wlock.load(Relaxed) == 0
                    && wlock.compare_exchange(0, 1, Acquire, Relaxed).is_ok()
                {
                    return;
                }
                spin(round);
                round += 1;
                continue;
            }
            if wlock.swap(2, Acquire) == 0 {
                return;
            }
            self.hot.env.wait(wlock, 2);
        }
    }

    fn unlock_writers(&self) {
        if self.cold.wlock.swap(0, Release) == 2 {
            self.hot.env.wake(&self.cold.wlock, 1);
        }
    }
}

/// One round of waiting: a few spin-loop hints, more each round, then
/// yielding the CPU.
fn spin(round: u32) {
    if round < 4 {
        for _ in 0..(2u32 << round) {
            hint::spin_loop();
        }
    } else {
        thread::yield_now();
    }
}
