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
//!                 readers that see it back off.
//!         SLEEPERS: readers sleep on `state` (only while WRITER is set).
//!         FENCED: readers fence between their count and their check of
//!                 `state`, so writers need no heavy barrier. Set by a
//!                 writer; cleared, once writes have stopped for a while,
//!                 by a reader holding WLOCKED.
//!         NO_BARRIER: no heavy barrier exists in this process; FENCED
//!                 stays set and readers also fence when they unlock.
//!         WLOCKED: the writers' mutex is held (by a writer, by an
//!                 upgradable reader, or briefly by a reader that changes
//!                 the mode).
//!         WWAITERS: writers sleep on `wseq` waiting for WLOCKED to clear.
//!         DRAINING: the writer that set WRITER waits for readers inside
//!                 to leave; readers that meet it yield rather than sleep.
//!         CENTRAL: readers also count themselves in the bits from 8 up
//!                 (READER), and writers wait for that count alone. Set
//!                 (with FENCED) and cleared by a writer holding the write
//!                 lock, or cleared by a reader holding WLOCKED while the
//!                 count is zero.
//!         WRITER and DRAINING are written only under WLOCKED (and
//!         SLEEPERS by readers while WRITER is set); FENCED, NO_BARRIER and
//!         CENTRAL only under WLOCKED.
//!         One word, so that an uncontended write takes the mutex and
//!         blocks readers in one read-modify-write and releases both in
//!         another.
//! wseq    bumped by a writer that releases WLOCKED with WWAITERS set: the
//!         futex word sleeping writers wait on.
//! parked  readers that met a writer and are not in yet; the next writer
//!         gives them a bounded time to get in, never more.
//! gate    1 while the writer sleeps waiting for readers to leave.
//! fenced_until  the clock time after which readers may clear FENCED.
//! heavy_cost    what the last heavy barrier cost, in nanoseconds.
//! crowded_until until when writers waiting for readers sleep rather than
//!               yield (the CPUs were found crowded).
//! writes        writes on the fenced or central path; a reader that sees
//!               it change restarts the quiet window (writers read no
//!               clock on every write).
//! adapt         the throughput writers measured, to choose between the
//!               per-CPU and the central mode.
//! per slot: locks (read_lock attempts), unlocks (read_unlock and back-offs),
//!         both monotonic, wrapping.
//! ```
//!
//! A lock starts FENCED, with `fenced_until` 0: its first readers fence,
//! and the first that looks at the clock finds out whether the process has
//! a heavy barrier and either clears FENCED or sets NO_BARRIER.

use std::hint;
use std::thread;

use super::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};

/// `state`: a writer holds the lock or is waiting for readers to leave.
const WRITER: u32 = 1;
/// `state`: readers sleep on the word and must be woken when it clears.
const SLEEPERS: u32 = 2;
/// `state`: readers pay a full fence after counting their lock.
const FENCED: u32 = 4;
/// `state`: no heavy barrier exists; readers fence on unlock too.
const NO_BARRIER: u32 = 8;
/// `state`: the writers' mutex is held.
const WLOCKED: u32 = 16;
/// `state`: writers sleep on `wseq`, waiting for the mutex.
const WWAITERS: u32 = 32;
/// `state`: readers count themselves in the bits from [`READER`] up (as
/// well as per CPU), and writers wait for that count alone. Set only with
/// FENCED.
const CENTRAL: u32 = 64;
/// `state`: the writer waits for the readers inside to leave. Set only
/// with WRITER, by a writer that spun and still found readers inside, and
/// cleared by it once they have left.
const DRAINING: u32 = 128;
/// `state`: one reader inside, in the central mode.
const READER: u32 = 1 << 8;
/// `state`: the central mode's reader count.
const READERS: u32 = !(READER - 1);

/// How long readers stay fenced after a write, in units of the last heavy
/// barrier's cost (BRAVO's inhibition factor): the heavy barriers then take
/// at most about 1/(1 + `INHIBIT`) of a writer's time, however often it
/// writes. DESIGN.md justifies the figure.
pub(crate) const INHIBIT: u64 = 9;
/// The least time readers stay fenced after a write, in nanoseconds (20
/// ms): writes that recur within it, as a periodic writer's do, find
/// readers fenced and pay a fence, not a heavy barrier, so that their
/// latency stays that of a plain lock; a heavy barrier comes at most once
/// per quiet spell this long (DESIGN.md).
pub(crate) const MIN_FENCED_NS: u64 = 20_000_000;

/// How long (50 ms) writers waiting for readers sleep without yielding
/// once the CPUs were found crowded; then the next write that waits asks
/// again, before it yields.
const CROWDED_NS: u64 = 50_000_000;

/// Rounds of spinning (at most 2 + 4 + 8 + 16 spin-loop hints, fewer if
/// [`Env::SPINS`] is smaller) a writer gives readers that met the previous
/// writer.
const PARKED_ROUNDS: u32 = 4;

/// How long one measuring epoch of the mode choice lasts, at least (1 ms):
/// long enough for tens of thousands of operations, short enough that a
/// trial of the worse mode costs little (see [`RawRwLock::adapt`]).
const EPOCH_NS: u64 = 1_000_000;
/// Writes that do not look at the clock between two that do, plus one.
const EPOCH_WRITES: u64 = 256;
/// An epoch stretched past this many [`EPOCH_NS`] means writes are sparse:
/// the per-CPU mode is the right one, and no trial is made.
const SPARSE_EPOCHS: u64 = 4;
/// A trial of the other mode is made only while writes are at least one
/// operation in this many: below, a write's cost hardly shows (at 1% the
/// two modes ran alike even where cache lines pass slowly).
const DENSE_WRITES: u64 = 256;
/// A trial mode is kept only if it did better by one part in this many.
const TRIAL_MARGIN: u64 = 16;
/// The most epochs between two trials: after each lost trial the wait
/// doubles up to this, so a trial of the worse mode takes at most about
/// 1/65 of the time.
const MAX_TRIAL_WAIT: u32 = 64;

/// How many times a reader that met a writer waiting for the readers
/// inside to leave (DRAINING) yields before it sleeps: some 0.4 ms of CPU
/// where each yield returns at once (about 350 ns here), and as long as
/// the scheduler takes where the CPUs are crowded. The readers it waits
/// for run, or wait for a CPU, so the wait is the scheduler's. A reader
/// that slept instead would come back with the scheduler's credit for a
/// sleeper, and with several readers per CPU that credit delays the
/// writer's next wake-up by a scheduler slice (DESIGN.md, "Progress").
const DRAIN_YIELDS: u32 = 1024;

/// How many times a reader in the central mode tries again (backing off
/// as [`central_backoff`] says in between: 14 spin-loop hints and 13
/// yields, about 5 us where each yield returns at once, some 350 ns here)
/// before it waits for a writer as in the per-CPU mode.
const CENTRAL_ROUNDS: u32 = 16;

/// How many times a writer in the central mode looks for a moment with no
/// reader inside (backing off as [`central_backoff`] says in between: 14
/// spin-loop hints and 7 yields, about 3 us where yields return at once)
/// before it blocks readers and waits for them.
const CENTRAL_WRITE_TRIES: u32 = 10;

/// How many of a central-mode waiter's first back-offs spin (2, 4 and 8
/// spin-loop hints) rather than yield: see [`central_backoff`].
const CENTRAL_SPINS: u32 = 3;

/// What the protocol needs from its surroundings.
pub(crate) trait Env {
    /// Rounds of spinning (each a few more spin-loop hints, up to 64)
    /// before a waiter yields.
    const SPINS: u32;
    /// Rounds of yielding before a waiter sleeps.
    const YIELDS: u32;
    /// Whether every write switches readers between the per-CPU and the
    /// central mode (the loom model, so that it explores the switches as
    /// often as it can); otherwise writers switch as measured throughput
    /// says.
    fn switch_every_write(&self) -> bool {
        false
    }
    /// The readers' mode if the process pinned one (`Some(true)`: central,
    /// `Some(false)`: per CPU); `None` lets writers choose by measuring.
    fn pinned_mode(&self) -> Option<bool> {
        None
    }
    /// Whether a reader that finds the central mode after its fence takes
    /// the central count (always, in the library; the loom model leaves it
    /// out to show that it is needed).
    fn counts_centrally(&self) -> bool {
        true
    }
    /// Adds one to the lock count of the slot the caller is on. Needs no
    /// ordering of its own.
    fn count_lock(&self);
    /// Adds one to the unlock count of the slot the caller is on (maybe not
    /// the slot of its `count_lock`), with release ordering: everything the
    /// caller did before is visible to whoever reads the count with acquire.
    fn count_unlock(&self);
    /// The sum (wrapping) of every slot's lock count, each read with
    /// acquire ordering.
    fn locks(&self) -> u64;
    /// The sum (wrapping) of every slot's unlock count, each read with
    /// acquire ordering.
    fn unlocks(&self) -> u64;
    /// The readers' fence while the lock is not FENCED, and when they
    /// unlock: costs a reader (almost) nothing, and acts as a full fence for
    /// every reader once a writer has run [`Env::heavy_barrier`].
    fn light_fence(&self);
    /// A full fence issued by the caller alone.
    fn full_fence(&self);
    /// A full fence right after the caller's own `SeqCst` read-modify-write:
    /// nothing more where a locked instruction already is one (x86-64),
    /// else [`Env::full_fence`].
    fn fence_after_rmw(&self);
    /// The fence of a reader that found the lock FENCED, between its count
    /// and its second look at `state`: [`Env::full_fence`] (apart so that
    /// the loom model can leave it out and show that it is needed).
    fn fenced_reader_fence(&self);
    /// A full fence on every thread of the process at once (`membarrier`).
    /// Returns false, having done nothing, if there is none.
    fn heavy_barrier(&self) -> bool;
    /// Whether [`Env::heavy_barrier`] exists in this process.
    fn has_heavy_barrier(&self) -> bool;
    /// Whether that is still being found out (in the background): until
    /// it is, locks keep their readers fenced, and [`has_heavy_barrier`]
    /// would have to wait for the answer.
    ///
    /// [`has_heavy_barrier`]: Env::has_heavy_barrier
    fn heavy_barrier_pending(&self) -> bool {
        false
    }
    /// Whether more threads want the CPUs than there are, by a margin: a
    /// thread that yields is then likely followed by others than the one
    /// it waits for. False where that cannot be told.
    fn crowded(&self) -> bool;
    /// A monotonic clock, in nanoseconds.
    fn now(&self) -> u64;
    /// Whether a reader on the fenced path should look at the clock this
    /// time (readers look only now and then: the clock is not free).
    fn clock_due(&self) -> bool;
    /// Sleeps while `word` holds `expected`; may return spuriously.
    fn wait(&self, word: &AtomicU32, expected: u32);
    /// As [`Env::wait`], for a millisecond at most.
    fn wait_briefly(&self, word: &AtomicU32, expected: u32);
    /// Wakes up to `n` threads sleeping in [`Env::wait`] on `word`.
    fn wake(&self, word: &AtomicU32, n: u32);
    /// Yields the CPU while a writer waits for readers (so that a model
    /// can count these yields).
    fn yield_now(&self) {
        thread::yield_now();
    }
}

/// The word readers read on every lock and unlock, with the environment
/// (whose per-CPU base they also read) on the same line.
#[repr(C, align(128))]
struct Hot<E> {
    state: AtomicU32,
    env: E,
}

/// Words written only while a writer is around, on a line of their own.
#[repr(align(128))]
struct Cold {
    wseq: AtomicU32,
    parked: AtomicU32,
    gate: AtomicU32,
    fenced_until: AtomicU64,
    heavy_cost: AtomicU64,
    /// Until when (clock time) writers waiting for readers sleep without
    /// yielding: the CPUs were found crowded.
    crowded_until: AtomicU64,
    /// 1 if the last write that asked found the CPUs crowded.
    crowded_votes: AtomicU32,
    /// Writes on the fenced or central path (written under WLOCKED; not on
    /// the lock word's line: with half the operations writes, a store
    /// there cost 8-thread mixes a quarter), and the count a reader last
    /// saw when it looked at the clock. A reader that sees the count change
    /// restarts the quiet window; [`RawRwLock::adapt`] counts writes by it.
    writes: AtomicU64,
    writes_seen: AtomicU64,
    /// The choice between the per-CPU and the central mode.
    adapt: Adapt,
}

/// What writers measured to choose between the per-CPU and the central
/// mode. Read and written only under the write lock.
struct Adapt {
    /// When the current epoch started and ends (clock time), and the
    /// operations (lock counts plus writes) and writes at its start.
    start: AtomicU64,
    end: AtomicU64,
    ops: AtomicU64,
    writes: AtomicU64,
    /// 1 while the current epoch is a trial of the other mode.
    trial: AtomicU32,
    /// Throughput (operations per second) of the epoch before the trial.
    settled_rate: AtomicU64,
    /// Epochs to go before the next trial, and the wait after a lost one.
    countdown: AtomicU32,
    wait: AtomicU32,
}

/// How a reader came in, which its unlock must know: counted per CPU only,
/// or in the central count as well. [`RawRwLock::read_lock`] and the other
/// ways to a read lock return it, so that a guard can hand it to
/// [`RawRwLock::read_unlock_as`] without looking at `state` again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Entered {
    /// Counted per CPU: writers wait for the per-CPU counts to balance.
    PerCpu,
    /// Counted per CPU and in `state`'s central count (the central mode).
    Central,
}

/// How a writer blocked readers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Blocked {
    /// Readers skipped their fence: a heavy barrier.
    Heavy,
    /// Readers fence: a fence of our own.
    Fenced,
    /// Readers count in `state`: the read-modify-write that set WRITER.
    Central,
}

/// A lock whose `state` starts at `$state`, every other word at zero (a
/// macro, so that the same words serve the `const fn` and loom's
/// non-`const` atomics).
macro_rules! new_raw {
    ($env:expr, $state:expr) => {
        RawRwLock {
            hot: Hot { state: AtomicU32::new($state), env: $env },
            cold: Cold {
                wseq: AtomicU32::new(0),
                parked: AtomicU32::new(0),
                gate: AtomicU32::new(0),
                fenced_until: AtomicU64::new(0),
                heavy_cost: AtomicU64::new(0),
                crowded_until: AtomicU64::new(0),
                crowded_votes: AtomicU32::new(0),
                writes: AtomicU64::new(0),
                writes_seen: AtomicU64::new(0),
                adapt: Adapt {
                    start: AtomicU64::new(0),
                    end: AtomicU64::new(0),
                    ops: AtomicU64::new(0),
                    writes: AtomicU64::new(0),
                    trial: AtomicU32::new(0),
                    settled_rate: AtomicU64::new(0),
                    countdown: AtomicU32::new(0),
                    wait: AtomicU32::new(1),
                },
            },
        }
    };
}

/// The lock without its data. See the [module docs](self).
pub(crate) struct RawRwLock<E> {
    hot: Hot<E>,
    cold: Cold,
}

impl<E: Env> RawRwLock<E> {
    #[cfg(not(loom))]
    pub(crate) const fn new(env: E) -> Self {
        new_raw!(env, FENCED)
    }

    /// loom's atomics have no `const fn new`. A lock without a heavy
    /// barrier starts NO_BARRIER here: the model leaves out the one poll
    /// (`wait_briefly`) the library may make before it gets there.
    #[cfg(loom)]
    pub(crate) fn new(env: E) -> Self {
        let no_barrier = if env.has_heavy_barrier() { 0 } else { NO_BARRIER };
        new_raw!(env, FENCED | no_barrier)
    }

    pub(crate) fn env(&self) -> &E {
        &self.hot.env
    }

    /// What readers do now: `"fence"` (writes were recent), `"no fence"`
    /// (they rely on writers' heavy barriers), `"always fence"` (the
    /// process has no heavy barrier) or `"central"` (writes are frequent
    /// and cost more than a shared count: readers count in `state`).
    pub(crate) fn reader_mode(&self) -> &'static str {
        let s = self.hot.state.load(Relaxed);
        if s & CENTRAL != 0 {
            "central"
        } else if s & NO_BARRIER != 0 {
            "always fence"
        } else if s & FENCED != 0 {
            "fence"
        } else {
            "no fence"
        }
    }

    /// How a writer that waits for readers gives them its CPU now:
    /// `"yield"`, or `"sleep"` while the CPUs were lately found crowded
    /// (see [`yield_to_readers`](Self::yield_to_readers)).
    pub(crate) fn writer_wait_mode(&self) -> &'static str {
        if self.hot.env.now() < self.cold.crowded_until.load(Relaxed) {
            "sleep"
        } else {
            "yield"
        }
    }

    /// Takes a read lock, waiting while a writer is around. Returns how
    /// the reader came in, for [`read_unlock_as`](Self::read_unlock_as).
    #[inline(always)]
    pub(crate) fn read_lock(&self) -> Entered {
        let env = &self.hot.env;
        env.count_lock();
        env.light_fence();
        let s = self.hot.state.load(Acquire);
        if s == 0 {
            return Entered::PerCpu;
        }
        if s & (WRITER | CENTRAL) == 0 {
            // FENCED: fence and look again here, not in a call. A call
            // stores its return address and the registers it saves, and a
            // locked instruction waits until every store before it has
            // left the store buffer: six saved registers before the fence
            // made a fenced read and unlock 8.5 ns instead of 5.9.
            if let Some(entered) = self.enter_fenced() {
                return entered;
            }
            return self.read_lock_contended();
        }
        if s & (WRITER | READERS) != READERS && s & (WRITER | CENTRAL) == CENTRAL {
            // The central mode and no writer: one compare-and-swap, also
            // here rather than in a call, for the same reason.
            if env.clock_due() {
                self.maybe_leave_central();
            } else if self.hot.state.compare_exchange_weak(s, s + READER, Acquire, Relaxed).is_ok()
            {
                return Entered::Central;
            }
            return self.read_lock_slow(self.hot.state.load(Acquire));
        }
        self.read_lock_slow(s)
    }

    /// A counted reader that found `state` at `s` and did not get in on
    /// [`read_lock`](Self::read_lock)'s inline paths: a writer is around,
    /// the central count is full, or the reader has just done the central
    /// mode's clock check (and so must not do it again: it would find the
    /// countdown reset, and not leave the mode when due).
    #[inline(never)]
    fn read_lock_slow(&self, s: u32) -> Entered {
        if s & WRITER == 0 {
            let entered = if s & CENTRAL != 0 {
                self.enter_central_now(s, true)
            } else {
                self.enter_fenced()
            };
            if let Some(entered) = entered {
                return entered;
            }
        }
        self.read_lock_contended()
    }

    /// A counted reader met a writer: backs off, waits for the writer and
    /// comes in again.
    #[cold]
    #[inline(never)]
    fn read_lock_contended(&self) -> Entered {
        self.back_off();
        // Registered: the next writer gives us a moment to get in.
        self.cold.parked.fetch_add(1, SeqCst);
        let env = &self.hot.env;
        let entered = loop {
            self.wait_for_writer();
            env.count_lock();
            env.full_fence();
            let s = self.hot.state.load(Acquire);
            if s & WRITER == 0 {
                if s & CENTRAL == 0 {
                    break Entered::PerCpu;
                }
                if let Some(entered) = self.enter_central(s, true) {
                    break entered;
                }
            }
            self.back_off();
        };
        self.cold.parked.fetch_sub(1, Release);
        entered
    }

    /// A reader whose lock is counted found `state` at `s`: not zero, no
    /// writer. Returns how it came in; `None` if it is not in (a writer
    /// came first): its count still stands and it must back off.
    /// `patient`: in the central mode, wait a while for a writer (not for a
    /// `try_read`).
    #[inline]
    fn enter(&self, s: u32, patient: bool) -> Option<Entered> {
        if s & CENTRAL != 0 {
            self.enter_central(s, patient)
        } else {
            self.enter_fenced()
        }
    }

    /// A reader whose lock is counted found FENCED (and no writer): fences
    /// and looks again. Returns as [`enter`](Self::enter).
    #[inline]
    fn enter_fenced(&self) -> Option<Entered> {
        let env = &self.hot.env;
        env.fenced_reader_fence();
        let s = self.hot.state.load(Acquire);
        // A writer, or one that switched readers to the central mode since
        // our first look (its successors wait for the central count alone):
        // back off and come in again. (A call to `enter_central` here,
        // which calls this, made every fenced read slower.)
        let not_in = if env.counts_centrally() { WRITER | CENTRAL } else { WRITER };
        if s & not_in != 0 {
            return None;
        }
        if s & NO_BARRIER == 0 && env.clock_due() {
            self.maybe_relax();
        }
        Some(Entered::PerCpu)
    }

    /// A reader whose lock is counted per CPU found CENTRAL in `state` (at
    /// `s`): adds itself to the central count unless a writer is around.
    /// Writers in this mode wait for the central count only, and the
    /// read-modify-write orders the reader with them (a writer's setting
    /// of WRITER fails this compare-and-swap, or sees its count). Returns as
    /// [`enter`](Self::enter).
    ///
    /// # Panics
    /// With 2^24 - 1 read locks held at once.
    #[inline(never)]
    fn enter_central(&self, mut s: u32, patient: bool) -> Option<Entered> {
        if self.hot.env.clock_due() {
            self.maybe_leave_central();
            s = self.hot.state.load(Acquire);
        }
        self.enter_central_now(s, patient)
    }

    /// [`enter_central`](Self::enter_central) once the clock check is done.
    fn enter_central_now(&self, mut s: u32, patient: bool) -> Option<Entered> {
        let env = &self.hot.env;
        let state = &self.hot.state;
        // Where waiters do not spin (the loom model), neither do we.
        let patience = if patient && E::SPINS > 0 { CENTRAL_ROUNDS } else { 0 };
        let mut round = 0;
        loop {
            // A writer in the central mode does not wait for our per-CPU
            // count: wait for it a while without backing off, as a reader
            // of a central lock does.
            if s & WRITER != 0 && (s & CENTRAL == 0 || round >= patience) {
                return None;
            }
            if s & CENTRAL == 0 {
                // Readers left the central mode: enter as a fenced reader.
                return self.enter_fenced();
            }
            if s & (WRITER | READERS) == READERS {
                env.count_unlock();
                panic!("cpulocal::RwLock: too many read locks held at once");
            }
            if s & WRITER == 0
                && state.compare_exchange_weak(s, s + READER, Acquire, Relaxed).is_ok()
            {
                return Some(Entered::Central);
            }
            // A writer, or a lost race: back off, so that the line stays a
            // while with whoever has it.
            central_backoff(round);
            round += 1;
            s = state.load(Acquire);
        }
    }

    /// Readers in the central mode look at the clock now and then: once
    /// no write came for the window, the mode goes back to per-CPU counts
    /// (fenced, and from there unfenced as [`maybe_relax`](Self::maybe_relax)
    /// says), at a moment when no reader is inside.
    #[cold]
    fn maybe_leave_central(&self) {
        if self.hot.env.pinned_mode() == Some(true) || !self.lock_writers_when_quiet() {
            return;
        }
        let state = &self.hot.state;
        // Under the writers' mutex, with no reader counted centrally: those
        // about to count see the change (their compare-and-swap fails).
        let s = state.load(Relaxed);
        if s & (READERS | CENTRAL | WRITER) == CENTRAL {
            let _ = state.compare_exchange(s, s & !CENTRAL, SeqCst, Relaxed);
        }
        self.unlock_writers();
    }

    /// Takes the writers' mutex (with a try-lock) if no write came for the
    /// window that writes start, so that the caller may change the mode:
    /// the first reader to look at the clock after a write starts the
    /// window (writers do not read the clock), and it lasts [`INHIBIT`]
    /// times the last heavy barrier's cost, at least [`MIN_FENCED_NS`].
    /// Returns whether it took the mutex.
    fn lock_writers_when_quiet(&self) -> bool {
        let env = &self.hot.env;
        let cold = &self.cold;
        let now = env.now();
        let window = (INHIBIT * cold.heavy_cost.load(Relaxed)).max(MIN_FENCED_NS);
        let writes = cold.writes.load(Relaxed);
        if writes != cold.writes_seen.load(Relaxed) {
            cold.writes_seen.store(writes, Relaxed);
            cold.fenced_until.store(now.saturating_add(window), Relaxed);
            return false;
        }
        if now < cold.fenced_until.load(Relaxed) || !self.try_lock_writers() {
            return false;
        }
        // The mode bits change only under the writers' mutex, where writers
        // decide how to keep readers out; a write may have come meanwhile.
        if cold.writes.load(Relaxed) == writes && now >= cold.fenced_until.load(Relaxed) {
            return true;
        }
        self.unlock_writers();
        false
    }

    /// Readers on the fenced path look at the clock now and then: once no
    /// write came for the window, FENCED is cleared (readers rely on
    /// writers' heavy barriers again), or NO_BARRIER is set for good if the
    /// process has no heavy barrier.
    #[cold]
    fn maybe_relax(&self) {
        if self.hot.env.heavy_barrier_pending() || !self.lock_writers_when_quiet() {
            return;
        }
        let state = &self.hot.state;
        if !self.hot.env.has_heavy_barrier() {
            state.fetch_or(NO_BARRIER, SeqCst);
        } else if state.load(Relaxed) & (NO_BARRIER | CENTRAL) == 0 {
            state.fetch_and(!FENCED, SeqCst);
        }
        self.unlock_writers();
    }

    /// Takes a read lock if no writer is around; returns how it came in.
    #[inline]
    pub(crate) fn try_read_lock(&self) -> Option<Entered> {
        // Not needed for correctness: keeps callers that retry in a loop
        // from making the writer's sums disagree over and over.
        if self.hot.state.load(Relaxed) & WRITER != 0 {
            return None;
        }
        let env = &self.hot.env;
        env.count_lock();
        env.light_fence();
        let s = self.hot.state.load(Acquire);
        if s == 0 {
            return Some(Entered::PerCpu);
        }
        if s & WRITER == 0 {
            if let Some(entered) = self.enter(s, false) {
                return Some(entered);
            }
        }
        self.back_off();
        None
    }

    /// Releases a read lock whose way in the caller does not know (the
    /// `lock_api` trait's unlock, which carries nothing from the lock).
    ///
    /// # Safety
    /// The caller holds a read lock it took from this lock (on any CPU).
    #[cfg_attr(not(any(feature = "lock_api", loom)), allow(dead_code))]
    #[inline]
    pub(crate) unsafe fn read_unlock(&self) {
        // Which way we came in, read before our unlock count: the mode
        // cannot leave CENTRAL while we are counted there, nor become
        // CENTRAL while our per-CPU lock is not counted out. (Once it is, a
        // writer may switch to CENTRAL before our next look.)
        let entered = if self.hot.state.load(Relaxed) & CENTRAL != 0 {
            Entered::Central
        } else {
            Entered::PerCpu
        };
        // SAFETY: the caller holds a read lock, which came in as the mode
        // says (above).
        unsafe { self.read_unlock_as(entered) };
    }

    /// Releases a read lock that came in `entered`.
    ///
    /// # Safety
    /// The caller holds a read lock it took from this lock (on any CPU),
    /// and `entered` is what the call that took it returned.
    #[inline]
    pub(crate) unsafe fn read_unlock_as(&self, entered: Entered) {
        if entered == Entered::Central {
            self.read_unlock_central();
            return;
        }
        let env = &self.hot.env;
        let state = &self.hot.state;
        env.count_unlock();
        env.light_fence();
        let s = state.load(Relaxed);
        if s & (WRITER | NO_BARRIER) != 0 {
            self.read_unlock_slow(s);
        }
    }

    /// Counts out a reader of the central mode: per CPU (first, so that the
    /// per-CPU counts balance before the mode can leave CENTRAL), then
    /// centrally, waking the writer waiting for the count.
    #[inline(never)]
    fn read_unlock_central(&self) {
        self.hot.env.count_unlock();
        if self.hot.state.fetch_sub(READER, Release) & WRITER != 0 {
            self.wake_writer();
        }
    }

    #[inline(never)]
    fn read_unlock_slow(&self, s: u32) {
        if s & NO_BARRIER != 0 {
            // No heavy barrier makes our unlock visible to a writer about
            // to sleep: fence, and look for one again.
            self.hot.env.full_fence();
            if self.hot.state.load(Relaxed) & WRITER == 0 {
                return;
            }
        }
        self.wake_writer();
    }

    /// Counts out a lock that saw WRITER, and tells the writer.
    #[cold]
    fn back_off(&self) {
        self.hot.env.count_unlock();
        self.wake_writer();
    }

    /// An unlock count went up while WRITER was set: wake the writer if it
    /// sleeps waiting for readers and none is left inside. (A writer woken
    /// by every unlock would, with many readers inside, wake and sleep
    /// again once per reader, each time waiting for a CPU.)
    #[cold]
    fn wake_writer(&self) {
        // Pairs with the fence in `wait_for_readers`: either the writer's
        // sums see our unlock, or we see its `gate`. And among the readers
        // that unlock while it sleeps, the one whose fence comes last sees
        // every other's unlock: it finds them all out and wakes the writer.
        self.hot.env.full_fence();
        let gate = &self.cold.gate;
        if gate.load(Relaxed) != 0
            && self.readers_out(self.blocked_as())
            && gate.swap(0, Relaxed) != 0
        {
            self.hot.env.wake(gate, 1);
        }
    }

    /// How the writer that holds WLOCKED now waits for readers, as far as
    /// [`readers_out`](Self::readers_out) is concerned: for the central
    /// count if CENTRAL is set (it changes only under WLOCKED), else for the
    /// per-CPU counts.
    fn blocked_as(&self) -> Blocked {
        if self.hot.state.load(Relaxed) & CENTRAL != 0 {
            Blocked::Central
        } else {
            Blocked::Fenced
        }
    }

    /// Waits until WRITER is clear: spins, yields, then sleeps on `state`;
    /// while the writer waits for readers (DRAINING), yields up to
    /// [`DRAIN_YIELDS`] times first rather than sleeping.
    fn wait_for_writer(&self) {
        let state = &self.hot.state;
        let mut round = 0;
        let mut drain_yields = 0;
        loop {
            let s = state.load(SeqCst);
            if s & WRITER == 0 {
                return;
            }
            // Where waiters do not spin (the loom model), neither do we.
            if s & DRAINING != 0 && E::SPINS > 0 && round >= E::SPINS && drain_yields < DRAIN_YIELDS
            {
                drain_yields += 1;
                self.hot.env.yield_now();
                continue;
            }
            if round < E::SPINS + E::YIELDS {
                pause(round, E::SPINS);
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

    /// Takes the write lock: waits for other writers, gives the readers
    /// that met the previous writer a bounded moment to get in, blocks new
    /// readers, then waits for every reader inside to leave.
    ///
    /// # Panics
    /// If the lock's readers relied on a heavy barrier that the process can
    /// no longer issue (see [`Env::heavy_barrier`]); the lock is then fenced
    /// for good and later writes succeed.
    #[inline(always)]
    pub(crate) fn write_lock(&self) {
        // Inline up to the compare-and-swap, for the reason given in
        // `read_lock`: in a call, the writer's read-modify-write waited for
        // the stores of the call's prologue (a write lock and unlock in the
        // central mode took 10-14 ns, against 6 for std's).
        match self.lock_and_block_fast() {
            // The uncontended write: no reader inside, nothing to wait for.
            Some(how) if self.readers_out(how) => {}
            Some(how) => self.wait_for_readers(how),
            None => self.write_lock_slow(),
        }
    }

    /// [`write_lock`](Self::write_lock) when the writers' mutex is taken,
    /// readers do not fence, or readers met the previous writer.
    #[inline(never)]
    fn write_lock_slow(&self) {
        if self.hot.state.load(Relaxed) & CENTRAL != 0 && self.lock_when_empty() {
            return;
        }
        self.lock_writers();
        self.block_and_wait();
    }

    /// In the central mode: tries a few times, backing off in between, to
    /// take the write lock at a moment when no reader is inside and nobody
    /// holds the writers' mutex, as a writer of a central lock does. Readers
    /// keep the line meanwhile and run on; blocking them at once would stop
    /// them all for as long as the readers inside take to leave, each
    /// leaving with a hand-off of the line. Returns whether it took the
    /// lock; if not, the caller queues for the mutex and blocks readers.
    ///
    /// Not [`lock_and_block_fast`](Self::lock_and_block_fast) in a loop:
    /// that also waits for `parked` to be empty, and with it the 2-thread
    /// half-writes mix took twice as long where hand-offs are slow (154
    /// against 77 ns, medians of four rounds side by side).
    fn lock_when_empty(&self) -> bool {
        let state = &self.hot.state;
        // Where waiters do not spin (the loom model), neither do we.
        let tries = if E::SPINS > 0 { CENTRAL_WRITE_TRIES } else { 0 };
        for round in 0..tries {
            let s = state.load(Relaxed);
            if s & CENTRAL == 0 {
                return false;
            }
            if s & (READERS | WLOCKED | WRITER) == 0 {
                let set = WLOCKED | self.fenced_write_bits(s);
                if state.compare_exchange(s, s | set, Acquire, Relaxed).is_ok() {
                    self.note_write();
                    return true;
                }
            }
            central_backoff(round);
        }
        false
    }

    /// With the writers' mutex held: what a writer does once it has it.
    /// Panics as [`write_lock`](Self::write_lock), with the mutex released.
    fn block_and_wait(&self) {
        self.let_parked_in();
        let Some(how) = self.block_readers() else {
            self.unlock_writers();
            panic!(
                "cpulocal::RwLock: the process-wide memory barrier its readers relied on \
                 is no longer available (membarrier refused); readers now fence"
            );
        };
        self.wait_for_readers(how);
    }

    /// Takes the write lock if nobody holds or waits for it. May fail while
    /// a reader is between its count and its check of `state`.
    pub(crate) fn try_write_lock(&self) -> bool {
        if !self.try_lock_writers() {
            return false;
        }
        let Some(how) = self.block_readers() else {
            self.unlock_writers();
            return false;
        };
        if self.readers_out(how) {
            return true;
        }
        // SAFETY: we hold the writers' mutex and set WRITER.
        unsafe { self.release_write() };
        false
    }

    /// Releases the write lock, first choosing the readers' mode for what
    /// follows (see [`adapt`](Self::adapt)).
    ///
    /// # Safety
    /// The caller holds the write lock.
    #[inline]
    pub(crate) unsafe fn write_unlock(&self) {
        let writes = self.cold.writes.load(Relaxed);
        if self.hot.env.switch_every_write() {
            self.switch_mode();
        } else if writes.is_multiple_of(EPOCH_WRITES) || writes == 1 {
            // Also at the first write counted (one that found the lock
            // unfenced is not, and leaves 0): a mode the process pinned
            // takes effect at the lock's first write.
            self.adapt();
        }
        // SAFETY: the caller holds the write lock.
        unsafe { self.release_write() };
    }

    /// Releases the write lock as it is.
    ///
    /// # Safety
    /// The caller holds the write lock.
    #[inline]
    unsafe fn release_write(&self) {
        let s =
            self.hot.state.fetch_and(!(WRITER | DRAINING | SLEEPERS | WLOCKED | WWAITERS), SeqCst);
        if s & SLEEPERS != 0 {
            self.hot.env.wake(&self.hot.state, u32::MAX);
        }
        if s & WWAITERS != 0 {
            self.wake_a_writer();
        }
    }

    /// Turns the write lock into a read lock, letting other readers in and
    /// no writer. Returns how the read lock came in.
    ///
    /// # Safety
    /// The caller holds the write lock.
    pub(crate) unsafe fn downgrade(&self) -> Entered {
        // Counted while WRITER is set: the next writer, who takes WLOCKED
        // after we release it, sees this count and waits for its unlock.
        let entered = self.count_own_read_lock();
        // SAFETY: the caller holds the write lock.
        unsafe { self.release_write() };
        entered
    }

    /// Takes an upgradable read lock: the writers' mutex and no read count.
    /// It excludes writers and other upgradable readers; readers still get
    /// in (they see a non-zero `state` and take the fenced path, whose
    /// checks only look for WRITER).
    pub(crate) fn upgradable_lock(&self) {
        self.lock_writers();
    }

    /// Takes an upgradable read lock if the writers' mutex is free.
    pub(crate) fn try_upgradable_lock(&self) -> bool {
        self.try_lock_writers()
    }

    /// Releases an upgradable read lock.
    ///
    /// # Safety
    /// The caller holds an upgradable read lock of this lock.
    pub(crate) unsafe fn upgradable_unlock(&self) {
        self.unlock_writers();
    }

    /// Turns an upgradable read lock into the write lock: what
    /// [`write_lock`](Self::write_lock) does once it has the writers'
    /// mutex (block readers, wait for those inside to leave).
    ///
    /// # Safety
    /// The caller holds an upgradable read lock of this lock.
    ///
    /// # Panics
    /// As [`write_lock`](Self::write_lock); the upgradable lock is then
    /// released.
    pub(crate) unsafe fn upgrade(&self) {
        self.block_and_wait();
    }

    /// Turns an upgradable read lock into the write lock if no reader is
    /// inside; otherwise lets blocked readers go and returns false, the
    /// upgradable lock still held. Never sleeps, but may run the writer's
    /// barrier.
    ///
    /// # Safety
    /// The caller holds an upgradable read lock of this lock.
    pub(crate) unsafe fn try_upgrade(&self) -> bool {
        let Some(how) = self.block_readers() else {
            // WRITER is clear again and the mutex still ours.
            return false;
        };
        if self.readers_out(how) {
            return true;
        }
        // SAFETY: we hold the writers' mutex and set WRITER.
        unsafe { self.downgrade_to_upgradable() };
        false
    }

    /// Turns an upgradable read lock into a read lock, letting writers in
    /// once this reader leaves. Returns how the read lock came in.
    ///
    /// # Safety
    /// The caller holds an upgradable read lock of this lock.
    pub(crate) unsafe fn downgrade_upgradable(&self) -> Entered {
        // Counted under the mutex: the next writer, who takes it after we
        // release it, sees this count and waits for its unlock.
        let entered = self.count_own_read_lock();
        self.unlock_writers();
        entered
    }

    /// Counts a read lock for the caller, who holds the writers' mutex (so
    /// the mode cannot change): per CPU, and centrally in the central mode.
    fn count_own_read_lock(&self) -> Entered {
        self.hot.env.count_lock();
        let state = &self.hot.state;
        if state.load(Relaxed) & CENTRAL != 0 {
            state.fetch_add(READER, Relaxed);
            Entered::Central
        } else {
            Entered::PerCpu
        }
    }

    /// Turns the write lock into an upgradable read lock: lets readers in
    /// and keeps the writers' mutex (and WWAITERS, for whoever waits on it).
    ///
    /// # Safety
    /// The caller holds the write lock.
    pub(crate) unsafe fn downgrade_to_upgradable(&self) {
        let s = self.hot.state.fetch_and(!(WRITER | SLEEPERS), SeqCst);
        if s & SLEEPERS != 0 {
            self.hot.env.wake(&self.hot.state, u32::MAX);
        }
    }

    /// Whether a writer holds or waits for the lock, an upgradable reader
    /// holds it, or a reader is inside (a snapshot, stale as soon as it is
    /// taken).
    pub(crate) fn is_locked(&self) -> bool {
        self.hot.state.load(SeqCst) & (WRITER | WLOCKED | READERS) != 0 || {
            self.hot.env.full_fence();
            !self.drained()
        }
    }

    /// Whether a writer holds the lock or waits for readers to leave.
    pub(crate) fn is_write_locked(&self) -> bool {
        self.hot.state.load(SeqCst) & WRITER != 0
    }

    /// With the writers' mutex held: sets WRITER and makes every reader's
    /// later check of `state` see it. Returns how readers were blocked, or
    /// `None` (WRITER cleared, the lock fenced for good, the mutex still
    /// held: the caller releases it or keeps it) if a heavy barrier was
    /// needed and there is none.
    fn block_readers(&self) -> Option<Blocked> {
        let env = &self.hot.env;
        let state = &self.hot.state;
        let cold = &self.cold;
        let s = state.load(Relaxed);
        if s & CENTRAL != 0 {
            // Readers count in `state`: setting WRITER there orders us with
            // every reader's compare-and-swap.
            self.note_write();
            state.fetch_or(self.fenced_write_bits(s), SeqCst);
            return Some(Blocked::Central);
        }
        if s & FENCED != 0 {
            self.note_write();
            state.fetch_or(self.fenced_write_bits(s), SeqCst);
            // Every reader fences after its count: a fence here pairs with it.
            env.fence_after_rmw();
            return Some(Blocked::Fenced);
        }
        // Readers skip their fence: interrupt them all. From now on they
        // fence too, until writes stop for INHIBIT times what this costs.
        state.fetch_or(WRITER | FENCED, SeqCst);
        let start = env.now();
        if !env.heavy_barrier() {
            // Readers that skipped their fence may be inside unseen, and
            // nothing can tell: give up this write, keep the lock fenced.
            if state.fetch_and(!(WRITER | SLEEPERS), SeqCst) & SLEEPERS != 0 {
                env.wake(state, u32::MAX);
            }
            state.fetch_or(NO_BARRIER, SeqCst);
            return None;
        }
        let end = env.now();
        let cost = end.saturating_sub(start);
        cold.heavy_cost.store(cost, Relaxed);
        cold.fenced_until.store(end.saturating_add((INHIBIT * cost).max(MIN_FENCED_NS)), Relaxed);
        Some(Blocked::Heavy)
    }

    /// Whether every read lock counted on the per-CPU counts so far has
    /// been counted out: the sum of the unlock counts, read first, equals
    /// the sum of the lock counts.
    #[inline]
    fn drained(&self) -> bool {
        let env = &self.hot.env;
        let unlocks = env.unlocks();
        // Every unlock summed above happened after its lock, and the acquire
        // loads make that lock visible to the loads below.
        env.locks() == unlocks
    }

    /// Whether the readers a writer that blocked them `how` waits for have
    /// left: the per-CPU counts are [`drained`](Self::drained), or, in the
    /// central mode, the central count is zero (its acquire load pairs with
    /// the readers' release as they count out).
    #[inline]
    fn readers_out(&self, how: Blocked) -> bool {
        if how == Blocked::Central {
            self.hot.state.load(Acquire) & READERS == 0
        } else {
            self.drained()
        }
    }

    /// Waits until [`readers_out`](Self::readers_out): spins, yields, then
    /// sleeps on `gate`, woken by the reader whose unlock (seeing WRITER)
    /// finds no reader left inside; sets DRAINING once past the spinning.
    #[inline(never)]
    fn wait_for_readers(&self, how: Blocked) {
        let env = &self.hot.env;
        let gate = &self.cold.gate;
        // Whether every later unlock sees WRITER (and then `gate`): after a
        // heavy barrier, or when unlocks are read-modify-writes of `state`.
        let mut heavy = how != Blocked::Fenced;
        let mut round = 0;
        let mut gated = false;
        let mut draining = false;
        // Whether this write slept once, with a timeout and no heavy barrier.
        let mut timed = false;
        loop {
            if self.readers_out(how) {
                break;
            }
            if round < E::SPINS {
                pause(round, E::SPINS);
                round += 1;
                continue;
            }
            if !draining {
                // Past the spinning (a wait the readers spin out as well):
                // readers that meet us from now on yield rather than sleep.
                draining = true;
                self.hot.state.fetch_or(DRAINING, Relaxed);
            }
            if round < E::SPINS + E::YIELDS {
                let first = round == E::SPINS;
                round += 1;
                if !self.yield_to_readers(first, how) {
                    // Crowded CPUs: sleep from now on.
                    round = E::SPINS + E::YIELDS;
                }
                continue;
            }
            gate.store(1, Relaxed);
            gated = true;
            // Readers who unlock with a light fence may neither be summed
            // nor see WRITER: a heavy barrier makes them do one or the
            // other. (NO_BARRIER locks' readers fence on unlock.) The
            // readers a writer sleeps on are, in practice, readers that
            // unlock long after WRITER was set, and see it: so the first
            // sleep skips the barrier (about 15 us with four readers per
            // CPU here, as much as the sleep itself) and has a timeout
            // instead, after which the barrier settles it (DESIGN.md).
            let mut briefly = false;
            if !heavy && self.hot.state.load(Relaxed) & NO_BARRIER == 0 {
                if !timed {
                    timed = true;
                    briefly = true;
                } else if env.heavy_barrier() {
                    heavy = true;
                } else {
                    // None here (or refused since readers began to rely on
                    // it): from now on readers fence on unlock; those before
                    // may be seen late, so sleep only briefly this time.
                    self.hot.state.fetch_or(NO_BARRIER, SeqCst);
                    briefly = true;
                }
            }
            // Pairs with the fence in `wake_writer`.
            env.full_fence();
            if self.readers_out(how) {
                break;
            }
            if briefly {
                env.wait_briefly(gate, 1);
            } else {
                env.wait(gate, 1);
            }
        }
        if draining {
            self.hot.state.fetch_and(!DRAINING, Relaxed);
        }
        // Only a writer that set it clears it: the line stays clean (and
        // shared with the next writer, who reads `parked` there) otherwise.
        if gated {
            gate.store(0, Relaxed);
        }
        if gated {
            self.end_overdue_trial();
        }
    }

    /// Under the write lock, after a write that slept waiting for readers:
    /// ends a trial of the other mode that has run [`SPARSE_EPOCHS`]
    /// epochs without reaching its [`EPOCH_WRITES`]-th write, as
    /// [`adapt`](Self::adapt) would at that write (a sparse epoch: lost).
    /// Trials whose epochs end in time are left to `adapt` (ending them at
    /// a write that has just waited would judge them at a bad moment).
    /// A mode that slows writes down would
    /// otherwise keep its trial for that many slow writes: with 16 reader
    /// threads on 2 CPUs and a writer writing back to back, the central
    /// mode's writes each waited for readers preempted inside (about 350
    /// writes a second), its trials lasted most of a second, and the lock
    /// made 8,000 to 13,500 writes a second where the per-CPU mode, pinned,
    /// made 490,000 to 510,000. Only writes that slept read the clock
    /// here, and only during a trial: with every write that waited past
    /// its spin, the mixes' writes paid a clock read in each trial.
    #[cold]
    fn end_overdue_trial(&self) {
        let a = &self.cold.adapt;
        if a.trial.load(Relaxed) == 0 {
            return;
        }
        let overdue = a.start.load(Relaxed).saturating_add(SPARSE_EPOCHS * EPOCH_NS);
        if self.hot.env.now() > overdue {
            self.adapt();
        }
    }

    /// A writer waiting for readers yields its CPU, so that a reader
    /// preempted inside on this CPU can leave, unless the CPUs are crowded
    /// ([`Env::crowded`]): there the reader is likely queued behind other
    /// threads, and a yield, even one that returns at once, costs the
    /// writer its place in the scheduler's order, while a sleep on `gate`,
    /// woken by the last reader out, keeps it. `first`: this is the
    /// write's first yield, the one that looks at crowding. Returns false
    /// (having yielded or not) if the writer should sleep rather than
    /// yield again.
    fn yield_to_readers(&self, first: bool, how: Blocked) -> bool {
        if first && self.crowded_lately() {
            return false;
        }
        thread::yield_now();
        !(first && !self.readers_out(how) && self.vote_crowded())
    }

    /// Whether writers are in a crowded window: until it ends, yes; when
    /// it has ended, whether the CPUs are still crowded (asked before
    /// yielding, since a yield there costs a scheduler slice), which opens
    /// the next window or closes this one.
    fn crowded_lately(&self) -> bool {
        let env = &self.hot.env;
        let crowded_until = &self.cold.crowded_until;
        let until = crowded_until.load(Relaxed);
        if until == 0 {
            return false;
        }
        let now = env.now();
        if now < until {
            return true;
        }
        let crowded = env.crowded();
        crowded_until.store(if crowded { now.saturating_add(CROWDED_NS) } else { 0 }, Relaxed);
        crowded
    }

    /// After a first yield that left readers inside: asks whether the CPUs
    /// are crowded, and opens a window of [`CROWDED_NS`] on the second such
    /// answer in a row (a lone one may be a passing burst of other
    /// threads). Returns whether it opened one.
    fn vote_crowded(&self) -> bool {
        let env = &self.hot.env;
        let votes = &self.cold.crowded_votes;
        if !env.crowded() {
            votes.store(0, Relaxed);
            return false;
        }
        if votes.load(Relaxed) == 0 {
            votes.store(1, Relaxed);
            return false;
        }
        votes.store(0, Relaxed);
        self.cold.crowded_until.store(env.now().saturating_add(CROWDED_NS), Relaxed);
        true
    }

    /// Gives readers that met the previous writer a bounded moment to get
    /// in: they run, or are about to, so this takes nanoseconds. Readers
    /// that are not scheduled do not hold the writer up (nor does a count
    /// left behind by a thread that no longer exists, after `fork`).
    fn let_parked_in(&self) {
        let parked = &self.cold.parked;
        for round in 0..E::SPINS.min(PARKED_ROUNDS) {
            if parked.load(Acquire) == 0 {
                return;
            }
            pause(round, E::SPINS);
        }
    }

    /// The uncontended write, in one read-modify-write: if the writers'
    /// mutex is free, no reader is parked, readers fence and (in the
    /// central mode) none is counted inside, takes the
    /// mutex and sets WRITER at once (the read-modify-write is the fence
    /// that pairs with the readers'). `None`, having changed nothing,
    /// otherwise: the caller takes the general path.
    #[inline(always)]
    fn lock_and_block_fast(&self) -> Option<Blocked> {
        let state = &self.hot.state;
        let env = &self.hot.env;
        let s = state.load(Relaxed);
        if s & (WLOCKED | WRITER | FENCED) != FENCED
            || (s & CENTRAL != 0 && s & READERS != 0)
            || self.cold.parked.load(Acquire) != 0
        {
            return None;
        }
        let set = WLOCKED | self.fenced_write_bits(s);
        state.compare_exchange(s, s | set, SeqCst, Relaxed).ok()?;
        self.note_write();
        if s & CENTRAL != 0 {
            return Some(Blocked::Central);
        }
        env.fence_after_rmw();
        Some(Blocked::Fenced)
    }

    /// The bits a fenced write sets in `state` (now `s`): WRITER, and
    /// NO_BARRIER for good once the process has no heavy barrier.
    fn fenced_write_bits(&self, s: u32) -> u32 {
        let env = &self.hot.env;
        let gone = s & NO_BARRIER == 0 && !env.heavy_barrier_pending() && !env.has_heavy_barrier();
        WRITER | if gone { NO_BARRIER } else { 0 }
    }

    /// Tells readers on the fenced or central path that a write happened
    /// (they restart their window when they see it change), and counts it
    /// for [`adapt`](Self::adapt). Under the writers' mutex.
    fn note_write(&self) {
        let writes = &self.cold.writes;
        writes.store(writes.load(Relaxed).wrapping_add(1), Relaxed);
    }

    /// Under the write lock, on every [`EPOCH_WRITES`]-th write: chooses
    /// between the per-CPU mode (readers count per CPU; a write walks every
    /// CPU's counts and takes each reader's line from it) and the central
    /// mode (readers count in `state` too; a write only waits for that
    /// count, but every read then writes the shared line) by measuring
    /// both. Which is faster depends on what cannot be known in advance:
    /// the write fraction, the number of threads, and how long the machine
    /// takes to hand a cache line between CPUs (on a VM this changes for
    /// minutes at a time). So the lock measures its throughput (lock
    /// counts plus writes per second) over an epoch of at least
    /// [`EPOCH_NS`], then tries the other mode for an epoch, keeps it if
    /// it did better by [`TRIAL_MARGIN`], and otherwise switches back and
    /// waits twice as many epochs (up to [`MAX_TRIAL_WAIT`]) before the
    /// next trial. While writes are sparse (an epoch stretched past
    /// [`SPARSE_EPOCHS`] epochs, or fewer than one operation in
    /// [`DENSE_WRITES`]) readers count per CPU and no trial is made.
    #[cold]
    fn adapt(&self) {
        let env = &self.hot.env;
        if let Some(pinned) = env.pinned_mode() {
            if pinned != (self.hot.state.load(Relaxed) & CENTRAL != 0) {
                self.switch_mode();
            }
            return;
        }
        let a = &self.cold.adapt;
        let now = env.now();
        let end = a.end.load(Relaxed);
        if now < end {
            return;
        }
        let writes = self.cold.writes.load(Relaxed);
        let ops = env.locks().wrapping_add(writes);
        let elapsed = now.saturating_sub(a.start.load(Relaxed)).max(1);
        let done = ops.wrapping_sub(a.ops.load(Relaxed));
        let written = writes.wrapping_sub(a.writes.load(Relaxed));
        a.start.store(now, Relaxed);
        a.end.store(now.saturating_add(EPOCH_NS), Relaxed);
        a.ops.store(ops, Relaxed);
        a.writes.store(writes, Relaxed);
        let central = self.hot.state.load(Relaxed) & CENTRAL != 0;
        if end == 0 {
            // The first epoch starts here.
            return;
        }
        let sparse =
            elapsed > SPARSE_EPOCHS * EPOCH_NS || written.saturating_mul(DENSE_WRITES) < done;
        let rate = u64::try_from(u128::from(done) * 1_000_000_000 / u128::from(elapsed))
            .unwrap_or(u64::MAX);
        if a.trial.load(Relaxed) != 0 {
            a.trial.store(0, Relaxed);
            let settled = a.settled_rate.load(Relaxed);
            // A trial that made writes sparse (the central mode can slow
            // readers so much that writes thin out) lost, whatever its rate:
            // otherwise it would restart the trials from scratch.
            let won = !sparse && rate > settled.saturating_add(settled / TRIAL_MARGIN);
            let wait = if won {
                // The trial's mode stays; the next trial soon checks back.
                1
            } else {
                self.switch_mode();
                a.wait.load(Relaxed).saturating_mul(2).min(MAX_TRIAL_WAIT)
            };
            a.wait.store(wait, Relaxed);
            a.countdown.store(wait, Relaxed);
            return;
        }
        if sparse {
            // Writes are sparse: per-CPU counts, and no trial.
            if central {
                self.switch_mode();
            }
            return;
        }
        let countdown = a.countdown.load(Relaxed);
        if countdown > 0 {
            a.countdown.store(countdown - 1, Relaxed);
            return;
        }
        a.settled_rate.store(rate, Relaxed);
        a.trial.store(1, Relaxed);
        self.switch_mode();
    }

    /// Under the write lock (WRITER set, every reader out): moves readers
    /// from the per-CPU mode to the central one or back. No reader is
    /// inside, and every reader that looks at `state` from here on sees
    /// WRITER or the new mode.
    fn switch_mode(&self) {
        let state = &self.hot.state;
        if state.load(Relaxed) & CENTRAL != 0 {
            state.fetch_and(!CENTRAL, SeqCst);
        } else {
            state.fetch_or(CENTRAL | FENCED, SeqCst);
        }
    }

    /// Takes the writers' mutex if it is free.
    fn try_lock_writers(&self) -> bool {
        let state = &self.hot.state;
        let s = state.load(Relaxed);
        s & WLOCKED == 0 && state.compare_exchange(s, s | WLOCKED, Acquire, Relaxed).is_ok()
    }

    /// Takes the writers' mutex: spins, yields, then sleeps on `wseq`.
    fn lock_writers(&self) {
        let state = &self.hot.state;
        let mut round = 0;
        // Once we have slept, other writers may sleep too, and a release
        // clears WWAITERS and wakes only one: whoever of us takes the mutex
        // sets it again, so that its release wakes the next.
        let mut slept = false;
        loop {
            let s = state.load(Relaxed);
            let take = if slept { WLOCKED | WWAITERS } else { WLOCKED };
            if s & WLOCKED == 0 && state.compare_exchange(s, s | take, Acquire, Relaxed).is_ok() {
                return;
            }
            if round < E::SPINS + E::YIELDS {
                pause(round, E::SPINS);
                round += 1;
                continue;
            }
            // Read before looking at `state`: a release that comes after
            // the look bumps it, and the wait then returns at once.
            let seq = self.cold.wseq.load(SeqCst);
            let s = state.load(SeqCst);
            if s & WLOCKED == 0 {
                continue;
            }
            if s & WWAITERS == 0
                && state.compare_exchange(s, s | WWAITERS, SeqCst, Relaxed).is_err()
            {
                continue;
            }
            self.hot.env.wait(&self.cold.wseq, seq);
            slept = true;
        }
    }

    /// Releases the writers' mutex (WRITER is clear).
    fn unlock_writers(&self) {
        if self.hot.state.fetch_and(!(WLOCKED | WWAITERS), SeqCst) & WWAITERS != 0 {
            self.wake_a_writer();
        }
    }

    /// The mutex was released with WWAITERS set: wake one sleeping writer
    /// (it takes the mutex with WWAITERS set again, for the others).
    #[cold]
    fn wake_a_writer(&self) {
        self.cold.wseq.fetch_add(1, SeqCst);
        self.hot.env.wake(&self.cold.wseq, 1);
    }
}

/// One round of waiting: below `spins`, a burst of spin-loop hints that
/// doubles each round up to 64; then yielding the CPU (which lets a
/// preempted lock holder on this CPU run).
fn pause(round: u32, spins: u32) {
    if round < spins {
        spin_burst(round);
    } else {
        thread::yield_now();
    }
}

/// Round `round` of a central-mode waiter's back-off between two tries at
/// the lock word: a short spin (2, 4, then 8 spin-loop hints) for the
/// first [`CENTRAL_SPINS`] rounds, then a yield, as parking_lot's waiters
/// do. With more threads than CPUs the holder is often preempted on the
/// waiter's own CPU, and a waiter that only spun (up to 64 hints a round,
/// for its 16 rounds) kept it from running: with four threads per CPU
/// the half-writes mix ran at 0.41x-0.46x the best peer in the central
/// mode where hand-offs are slow, and 0.76x-0.82x with the yields
/// (DESIGN.md, "The constants").
fn central_backoff(round: u32) {
    // `pause`'s bursts from its second round on: 2, 4, 8 hints, then yields.
    pause(round + 1, CENTRAL_SPINS + 1);
}

/// Round `round` of a backoff: 1, 2, 4 ... 64 spin-loop hints.
fn spin_burst(round: u32) {
    for _ in 0..1u32 << round.min(6) {
        hint::spin_loop();
    }
}

/// The mode choice ([`RawRwLock::adapt`]) against a made-up machine: one
/// slot, a clock the test moves, and reads that the test adds to the counts
/// at the rate it says each mode runs at. And how readers and a writer wait
/// for each other around DRAINING, with the machine's yields and sleeps
/// counted.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// `SPINS`: as [`Env::SPINS`] (0 for the mode choice, which never
    /// waits).
    #[derive(Default)]
    struct Made<const SPINS: u32 = 0> {
        clock: AtomicU64,
        locks: AtomicU64,
        unlocks: AtomicU64,
        /// Calls of [`Env::yield_now`].
        yields: AtomicU32,
        /// How many of those came before the first sleep, plus one (0:
        /// no sleep yet).
        yields_before_sleep: AtomicU32,
        /// Heavy barriers, sleeps and brief sleeps, in order.
        events: std::sync::Mutex<Vec<&'static str>>,
        /// Whether the heavy barrier is still being found out.
        pending: std::sync::atomic::AtomicBool,
        /// Whether the process pinned the central mode.
        pinned_central: std::sync::atomic::AtomicBool,
    }

    impl<const S: u32> Made<S> {
        fn note(&self, event: &'static str) {
            self.events.lock().unwrap().push(event);
        }
    }

    impl<const S: u32> Env for Made<S> {
        const SPINS: u32 = S;
        const YIELDS: u32 = 2;
        fn count_lock(&self) {
            self.locks.fetch_add(1, Relaxed);
        }
        fn count_unlock(&self) {
            self.unlocks.fetch_add(1, Release);
        }
        fn locks(&self) -> u64 {
            self.locks.load(Acquire)
        }
        fn unlocks(&self) -> u64 {
            self.unlocks.load(Acquire)
        }
        fn light_fence(&self) {}
        fn full_fence(&self) {
            std::sync::atomic::fence(SeqCst);
        }
        fn fence_after_rmw(&self) {}
        fn fenced_reader_fence(&self) {}
        fn heavy_barrier(&self) -> bool {
            self.note("barrier");
            true
        }
        fn has_heavy_barrier(&self) -> bool {
            // The real answer would be waited for.
            assert!(
                !self.pending.load(Relaxed),
                "asked whether there is a heavy barrier while pending"
            );
            true
        }
        fn heavy_barrier_pending(&self) -> bool {
            self.pending.load(Relaxed)
        }
        fn pinned_mode(&self) -> Option<bool> {
            self.pinned_central.load(Relaxed).then_some(true)
        }
        fn crowded(&self) -> bool {
            false
        }
        fn now(&self) -> u64 {
            self.clock.load(Relaxed)
        }
        fn clock_due(&self) -> bool {
            false
        }
        /// Notes the first sleep, then clears the writer's bits from the
        /// word: a reader sleeping on `state` finds the writer gone; a
        /// writer sleeping on `gate` just looks again.
        fn wait(&self, word: &AtomicU32, _: u32) {
            self.note("sleep");
            let yields = self.yields.load(Relaxed);
            let _ = self.yields_before_sleep.compare_exchange(0, yields + 1, Relaxed, Relaxed);
            word.fetch_and(!(WRITER | DRAINING | SLEEPERS | WLOCKED), Relaxed);
        }
        fn wait_briefly(&self, _: &AtomicU32, _: u32) {
            self.note("brief sleep");
        }
        fn wake(&self, _: &AtomicU32, _: u32) {}
        fn yield_now(&self) {
            self.yields.fetch_add(1, Relaxed);
        }
    }

    fn lock() -> RawRwLock<Made> {
        let made = Made::default();
        made.clock.store(1, Relaxed);
        RawRwLock::new(made)
    }

    /// A reader that meets a writer waiting for the readers inside
    /// (DRAINING) yields [`DRAIN_YIELDS`] times before it sleeps.
    #[test]
    fn a_reader_meeting_a_draining_writer_yields_before_it_sleeps() {
        let lock = RawRwLock::new(Made::<1>::default());
        lock.hot.state.store(FENCED | WLOCKED | WRITER | DRAINING, Relaxed);
        lock.wait_for_writer();
        assert_eq!(lock.env().yields_before_sleep.load(Relaxed), DRAIN_YIELDS + 1);
    }

    /// A writer that spun and still finds a reader inside shows DRAINING
    /// until the reader leaves, and not once it holds the lock.
    #[test]
    fn a_writer_shows_draining_while_it_waits_for_readers() {
        let lock = RawRwLock::new(Made::<1>::default());
        // A reader inside.
        lock.env().count_lock();
        thread::scope(|s| {
            let writer = s.spawn(|| lock.write_lock());
            let start = std::time::Instant::now();
            let mut shown = false;
            while !shown && start.elapsed().as_secs() < 10 {
                shown = lock.hot.state.load(Relaxed) & DRAINING != 0;
                thread::yield_now();
            }
            // The reader leaves (so that the writer finishes either way).
            lock.env().count_unlock();
            writer.join().unwrap();
            assert!(shown, "the writer never showed DRAINING");
        });
        let s = lock.hot.state.load(Relaxed);
        assert_eq!(s & (WRITER | DRAINING), WRITER, "state {s:#x} with the write lock held");
    }

    /// A writer of the fenced mode that sleeps on a reader inside sleeps
    /// first with a timeout and no heavy barrier, and issues the barrier
    /// only before a sleep without one.
    #[test]
    fn a_writer_sleeps_briefly_before_it_pays_a_heavy_barrier() {
        let lock = lock();
        assert_eq!(lock.reader_mode(), "fence");
        // A reader inside, for as long as the writer takes to sleep twice.
        lock.env().count_lock();
        thread::scope(|s| {
            let writer = s.spawn(|| lock.write_lock());
            let start = std::time::Instant::now();
            while lock.env().events.lock().unwrap().len() < 3 && start.elapsed().as_secs() < 10 {
                thread::yield_now();
            }
            lock.env().count_unlock();
            writer.join().unwrap();
        });
        let events = lock.env().events.lock().unwrap();
        assert!(events.len() >= 3, "the writer slept fewer than twice: {events:?}");
        let first = &events[..3];
        assert_eq!(first, ["brief sleep", "barrier", "sleep"], "the writer's first events");
    }

    /// While the process is still finding out whether it has a heavy
    /// barrier, a quiet lock keeps its readers fenced and writes leave
    /// NO_BARRIER clear, without waiting for the answer; once it is in,
    /// the lock relaxes when writes have stopped for the window.
    #[test]
    fn readers_stay_fenced_while_the_heavy_barrier_is_pending() {
        let lock = lock();
        lock.env().pending.store(true, Relaxed);
        lock.maybe_relax();
        assert_eq!(lock.reader_mode(), "fence");
        lock.write_lock();
        // SAFETY: write-locked just above.
        unsafe { lock.write_unlock() };
        assert_eq!(lock.hot.state.load(Relaxed) & (NO_BARRIER | FENCED), FENCED);
        lock.maybe_relax();
        lock.env().clock.fetch_add(MIN_FENCED_NS + 1, Relaxed);
        lock.maybe_relax();
        assert_eq!(lock.reader_mode(), "fence");
        lock.env().pending.store(false, Relaxed);
        lock.maybe_relax();
        lock.env().clock.fetch_add(MIN_FENCED_NS + 1, Relaxed);
        lock.maybe_relax();
        assert_eq!(lock.reader_mode(), "no fence");
    }

    /// A mode pinned by the process takes effect at the lock's first
    /// write, in whichever mode that write finds the lock.
    #[test]
    fn a_pinned_mode_takes_effect_at_the_first_write() {
        for unfenced in [false, true] {
            let lock = lock();
            lock.env().pinned_central.store(true, Relaxed);
            if unfenced {
                lock.hot.state.fetch_and(!FENCED, Relaxed);
            }
            lock.write_lock();
            // SAFETY: write-locked just above.
            unsafe { lock.write_unlock() };
            assert_eq!(lock.reader_mode(), "central", "first write found it unfenced: {unfenced}");
        }
    }

    /// A reader that meets a writer holding the lock sleeps after its
    /// bounded spinning and yielding (none of those yields is a drain
    /// yield).
    #[test]
    fn a_reader_meeting_a_writer_inside_sleeps_after_its_rounds() {
        let lock = RawRwLock::new(Made::<1>::default());
        lock.hot.state.store(FENCED | WLOCKED | WRITER, Relaxed);
        lock.wait_for_writer();
        assert_eq!(lock.env().yields_before_sleep.load(Relaxed), 1);
    }

    /// Each way to a read lock reports how it came in, and an unlock told
    /// so leaves the counts as they were: the central count in the central
    /// mode, the per-CPU counts in the others.
    #[test]
    fn reads_report_how_they_came_in() {
        let lock = lock();
        let readers = |lock: &RawRwLock<Made>| lock.hot.state.load(Relaxed) & READERS;
        let balanced = |lock: &RawRwLock<Made>| lock.env().locks() == lock.env().unlocks();
        for mode in [0, FENCED, FENCED | CENTRAL] {
            lock.hot.state.store(mode, Relaxed);
            let central = mode & CENTRAL != 0;
            let want = if central { Entered::Central } else { Entered::PerCpu };
            let entered = lock.read_lock();
            assert_eq!(entered, want, "read_lock in state {mode:#x}");
            assert_eq!(readers(&lock), if central { READER } else { 0 });
            // SAFETY: read-locked just above, as `entered` says.
            unsafe { lock.read_unlock_as(entered) };
            assert_eq!(readers(&lock), 0);
            assert!(balanced(&lock), "state {mode:#x}");
            assert_eq!(lock.try_read_lock(), Some(want), "try_read_lock in state {mode:#x}");
            // SAFETY: read-locked just above, as it said.
            unsafe { lock.read_unlock_as(want) };
            lock.write_lock();
            // SAFETY: write-locked just above.
            let entered = unsafe { lock.downgrade() };
            assert_eq!(entered, want, "downgrade in state {mode:#x}");
            assert_eq!(readers(&lock), if central { READER } else { 0 });
            // SAFETY: read-locked by the downgrade; the lock's own look at
            // the mode (the lock_api way) must agree.
            unsafe { lock.read_unlock() };
            assert_eq!(readers(&lock), 0);
            assert!(balanced(&lock), "state {mode:#x}");
        }
    }

    /// Runs `epochs` epochs of 1 ms, each of 256 writes and as many reads as
    /// `reads(central)` says for the mode the epoch runs in. Returns how
    /// many epochs ran in the central mode.
    fn run(lock: &RawRwLock<Made>, epochs: u32, reads: impl Fn(bool) -> u64) -> u32 {
        run_timed(lock, epochs, reads, |_| EPOCH_NS)
    }

    /// As [`run`], each epoch lasting `ns(central)`.
    fn run_timed<const S: u32>(
        lock: &RawRwLock<Made<S>>,
        epochs: u32,
        reads: impl Fn(bool) -> u64,
        ns: impl Fn(bool) -> u64,
    ) -> u32 {
        let mut central = 0;
        for _ in 0..epochs {
            let in_central = lock.reader_mode() == "central";
            central += u32::from(in_central);
            let n = reads(in_central);
            lock.env().locks.fetch_add(n, Relaxed);
            lock.env().unlocks.fetch_add(n, Relaxed);
            lock.env().clock.fetch_add(ns(in_central), Relaxed);
            for _ in 0..EPOCH_WRITES {
                lock.write_lock();
                // SAFETY: write-locked just above.
                unsafe { lock.write_unlock() };
            }
        }
        central
    }

    #[test]
    fn keeps_the_faster_mode_and_tries_the_other_now_and_then() {
        let lock = lock();
        // The central mode runs twice as fast: after its first trial the
        // lock stays there, trying per-CPU counts less and less often.
        let central = run(&lock, 400, |central| if central { 2000 } else { 1000 });
        assert!(central > 370, "{central} of 400 epochs central");
        // Now per-CPU counts are faster: the next trial (at most 64 epochs
        // away) goes back, and the central mode is only tried again.
        let per_cpu_faster = |central| if central { 1000 } else { 2000 };
        run(&lock, 100, per_cpu_faster);
        let central = run(&lock, 300, per_cpu_faster);
        assert!(central < 15, "{central} of 300 epochs central");
    }

    #[test]
    fn a_mode_no_better_by_a_sixteenth_is_not_kept() {
        let lock = lock();
        let central = run(&lock, 400, |central| if central { 1030 } else { 1000 });
        assert!(central < 30, "{central} of 400 epochs central");
    }

    /// A trial that slows writes down until they are sparse (256 writes
    /// stretched over 6 ms) lost, even with more operations per second:
    /// the trials back off as after any lost one.
    #[test]
    fn a_trial_that_makes_writes_sparse_is_lost() {
        let lock = lock();
        let central = run_timed(
            &lock,
            400,
            |central| if central { 20_000 } else { 2_000 },
            |central| if central { 6 * EPOCH_NS } else { EPOCH_NS },
        );
        assert!(central < 15, "{central} of 400 epochs central");
    }

    /// A trial whose writes wait for readers (readers preempted inside, on
    /// crowded CPUs) ends at the first such write once it has run
    /// SPARSE_EPOCHS epochs, not at its 256th write.
    #[test]
    fn a_trial_that_stalls_writes_ends_at_a_stalled_write() {
        let lock = RawRwLock::new(Made::<1>::default());
        lock.env().clock.store(1, Relaxed);
        run_timed(&lock, 2, |_| 1000, |_| EPOCH_NS);
        assert_eq!(lock.reader_mode(), "central", "the first trial should have begun");
        // A reader inside, counted centrally, as the mode has it.
        lock.env().count_lock();
        lock.hot.state.fetch_add(READER, Relaxed);
        lock.env().clock.fetch_add(SPARSE_EPOCHS * EPOCH_NS + 1, Relaxed);
        thread::scope(|s| {
            let writer = s.spawn(|| {
                lock.write_lock();
                // SAFETY: write-locked just above.
                unsafe { lock.write_unlock() };
            });
            // Until the writer has slept waiting for the reader (which
            // the mock returns from at once, so it sleeps again and again).
            let start = std::time::Instant::now();
            while lock.env().yields_before_sleep.load(Relaxed) == 0 {
                assert!(start.elapsed().as_secs() < 10, "the writer never slept");
                thread::yield_now();
            }
            // The reader leaves.
            lock.env().count_unlock();
            lock.hot.state.fetch_sub(READER, Release);
            writer.join().unwrap();
        });
        assert_ne!(lock.reader_mode(), "central", "the stalled trial goes on");
        assert_eq!(lock.cold.adapt.trial.load(Relaxed), 0);
    }

    #[test]
    fn sparse_writes_make_no_trial() {
        let lock = lock();
        // 256 writes among a million reads: under one in 256.
        let central = run(&lock, 200, |central| if central { 2_000_000 } else { 1_000_000 });
        assert_eq!(central, 0);
    }
}
