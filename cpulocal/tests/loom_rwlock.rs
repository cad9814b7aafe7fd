//! The `RwLock` protocol under loom, with CPUs as slots.
//!
//! `src/rwlock/raw.rs` is compiled into this test as it is (`#[path]`),
//! its atomics coming from `loom::sync` through the `sync` name below, and
//! run against [`Model`]: an `Env` whose per-CPU counts are loom atomics in
//! [`SLOTS`] slots, the slot being a loom thread-local a thread can move
//! between counts (so a reader may count its lock on one CPU and its unlock,
//! or its back-off, on another). Futex sleeping is a loom `Mutex` and a
//! `Condvar` per word (a wake of one wakes one sleeper on that word, as
//! `futex_wake` does), so a lost wake-up shows up as a deadlock. A sleep
//! with a timeout returns at once, as if the time were up: nothing may
//! depend on a wake-up during it. The protected data
//! is a loom `UnsafeCell`: a reader overlapping a writer is a causality
//! violation.
//!
//! `membarrier` is modelled by what it guarantees: each thread has a loom
//! `Mutex` that its light fence locks and unlocks, and the heavy barrier
//! locks and unlocks every thread's, between two full fences of its own
//! (the system call is a full barrier for its caller too). Either a reader's light fence comes
//! first (its count happens-before the writer's sums) or the barrier does
//! (the writer's WRITER happens-before the reader's check), which is what
//! a barrier run on every CPU at once gives. The clock jumps far ahead on
//! every reading and readers look at it on every fenced lock, so readers
//! leave the fenced mode as soon as the protocol lets them: the model
//! explores the mode switches as often as it can.
//!
//! What the model cannot show: the restartable sequences (a count is one
//! atomic add), and the spinning (`SPINS` and `YIELDS` are 0: every wait
//! sleeps at once, and writers give waiting readers no moment).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release -p cpulocal --test loom_rwlock`.
#![cfg(loom)]

// `raw` takes its atomics from `super::sync`.
use loom::sync;

mod loom_support;
#[allow(dead_code)]
#[path = "../src/rwlock/raw.rs"]
mod raw;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64 as StdAtomicU64, AtomicUsize as StdAtomicUsize};

use loom::cell::UnsafeCell;
use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use loom_support::{expect_failure, expect_failure_in_child};
use raw::{Env, RawRwLock};

/// Model CPUs.
const SLOTS: usize = 2;

/// Model threads at most (each has a light-fence mutex).
const THREADS: usize = 4;

loom::thread_local! {
    /// The model CPU the thread is on, and whether it moves to the next one
    /// after each count it makes.
    static CPU: Cell<(usize, bool)> = Cell::new((0, false));
    /// The thread's number, for its light-fence mutex, once it has one.
    static ME: Cell<Option<usize>> = Cell::new(None);
}

/// Puts the calling thread on `slot`; with `hops`, it moves on after every
/// count.
fn run_on(slot: usize, hops: bool) {
    CPU.with(|c| c.set((slot, hops)));
}

/// How the model departs from the library, to show what each part is for.
#[derive(Clone, Copy)]
struct Config {
    /// Split lock and unlock counts (the library), or one in-minus-out
    /// count per slot.
    split: bool,
    /// The fences between a reader's count and its check of `state` (the
    /// light and the fenced one, and the heavy barrier that backs the
    /// light one) do their job (the library), or nothing at all.
    fences: bool,
    /// The process has a heavy barrier (`membarrier`).
    membarrier: bool,
    /// Readers skip the fence of the fenced path (a bug).
    skip_fenced_fence: bool,
    /// Every write switches readers between the per-CPU and the central
    /// mode (the library switches as measured throughput says, far less
    /// often).
    switches: bool,
    /// A reader that finds the central mode after its fence enters without
    /// the central count (a bug).
    skip_central_count: bool,
    /// Sleeps with a timeout sleep until woken instead (a bug: the
    /// writer's first sleep on readers, which issues no heavy barrier,
    /// could then miss its wake-up for good).
    untimed_brief_sleeps: bool,
    /// A reader's light fence is what it is where no heavy barrier pairs
    /// with it: nothing. (The mutex that models the pairing orders more
    /// than a compiler fence does under loom.)
    light_fence_alone: bool,
}

/// The library's configuration.
const LIBRARY: Config = Config {
    split: true,
    fences: true,
    membarrier: true,
    skip_fenced_fence: false,
    switches: false,
    skip_central_count: false,
    untimed_brief_sleeps: false,
    light_fence_alone: false,
};

/// The library's protocol, with a mode switch at every write.
const SWITCHING: Config = Config { switches: true, ..LIBRARY };

/// Starts a thread that runs on `slot` (moving to the next slot after
/// each count if `hops`) and calls `f` with the lock.
fn spawn_on<T: 'static>(
    lock: &Arc<Lock>,
    slot: usize,
    hops: bool,
    f: impl FnOnce(&Lock) -> T + 'static,
) -> thread::JoinHandle<T> {
    let lock = lock.clone();
    thread::spawn(move || {
        run_on(slot, hops);
        f(&lock)
    })
}

/// The slot for the calling thread's next count.
fn next_slot() -> usize {
    CPU.with(|c| {
        let (slot, hops) = c.get();
        if hops {
            c.set(((slot + 1) % SLOTS, true));
        }
        slot
    })
}

/// Per-slot counts, fences, futex and clock, as `Config` says.
struct Model {
    config: Config,
    locks: [AtomicU64; SLOTS],
    unlocks: [AtomicU64; SLOTS],
    /// Each thread's light-fence mutex.
    fences: [Mutex<()>; THREADS],
    /// Futex sleeping: one `Condvar` per word slept on (found by the word's
    /// address), all under `sleepers`, so that a wake of one sleeper wakes
    /// one on that word only, as `futex_wake` does.
    sleepers: Mutex<Vec<(usize, Arc<Condvar>)>>,
    clock: StdAtomicU64,
    /// Hands out thread numbers.
    next_thread: StdAtomicUsize,
}

impl Model {
    fn new(config: Config) -> Model {
        Model {
            config,
            locks: [AtomicU64::new(0), AtomicU64::new(0)],
            unlocks: [AtomicU64::new(0), AtomicU64::new(0)],
            fences: [Mutex::new(()), Mutex::new(()), Mutex::new(()), Mutex::new(())],
            sleepers: Mutex::new(Vec::new()),
            clock: StdAtomicU64::new(0),
            next_thread: StdAtomicUsize::new(0),
        }
    }
}

impl Env for Model {
    const SPINS: u32 = 0;
    const YIELDS: u32 = 0;

    fn count_lock(&self) {
        self.locks[next_slot()].fetch_add(1, Ordering::Relaxed);
    }

    fn count_unlock(&self) {
        let slot = next_slot();
        if self.config.split {
            self.unlocks[slot].fetch_add(1, Ordering::Release);
        } else {
            self.locks[slot].fetch_sub(1, Ordering::Release);
        }
    }

    fn locks(&self) -> u64 {
        self.locks.iter().fold(0, |sum, c| sum.wrapping_add(c.load(Ordering::Acquire)))
    }

    fn unlocks(&self) -> u64 {
        self.unlocks.iter().fold(0, |sum, c| sum.wrapping_add(c.load(Ordering::Acquire)))
    }

    fn light_fence(&self) {
        if self.config.fences && self.config.membarrier && !self.config.light_fence_alone {
            let me = ME.with(|me| match me.get() {
                Some(n) => n,
                None => {
                    let n = self.next_thread.fetch_add(1, Ordering::Relaxed);
                    me.set(Some(n));
                    n
                }
            });
            drop(self.fences[me].lock().unwrap());
        }
    }

    fn full_fence(&self) {
        fence(Ordering::SeqCst);
    }

    fn fence_after_rmw(&self) {
        self.full_fence();
    }

    fn fenced_reader_fence(&self) {
        if self.config.fences && !self.config.skip_fenced_fence {
            self.full_fence();
        }
    }

    fn heavy_barrier(&self) -> bool {
        if !self.config.membarrier {
            return false;
        }
        if self.config.fences {
            // `membarrier` is a full barrier on the calling CPU too.
            fence(Ordering::SeqCst);
            for m in &self.fences {
                drop(m.lock().unwrap());
            }
            fence(Ordering::SeqCst);
        }
        true
    }

    fn has_heavy_barrier(&self) -> bool {
        self.config.membarrier
    }

    fn now(&self) -> u64 {
        self.clock.fetch_add(1 << 40, Ordering::Relaxed)
    }

    fn crowded(&self) -> bool {
        false
    }

    fn switch_every_write(&self) -> bool {
        self.config.switches
    }

    fn counts_centrally(&self) -> bool {
        !self.config.skip_central_count
    }

    fn clock_due(&self) -> bool {
        true
    }

    fn wait(&self, word: &AtomicU32, expected: u32) {
        let mut guard = self.sleepers.lock().unwrap();
        if word.load(Ordering::SeqCst) == expected {
            let condvar = condvar_of(&mut guard, word);
            drop(condvar.wait(guard).unwrap());
        }
    }

    fn wait_briefly(&self, word: &AtomicU32, expected: u32) {
        if self.config.untimed_brief_sleeps {
            self.wait(word, expected);
        } else {
            thread::yield_now();
        }
    }

    fn wake(&self, word: &AtomicU32, n: u32) {
        let mut guard = self.sleepers.lock().unwrap();
        let condvar = condvar_of(&mut guard, word);
        if n == 1 {
            condvar.notify_one();
        } else {
            condvar.notify_all();
        }
    }
}

/// The `Condvar` of the threads sleeping on `word`.
fn condvar_of(condvars: &mut Vec<(usize, Arc<Condvar>)>, word: &AtomicU32) -> Arc<Condvar> {
    let key = word as *const AtomicU32 as usize;
    if let Some((_, c)) = condvars.iter().find(|(k, _)| *k == key) {
        return c.clone();
    }
    let c = Arc::new(Condvar::new());
    condvars.push((key, c.clone()));
    c
}

struct Lock {
    raw: RawRwLock<Model>,
    data: UnsafeCell<u64>,
}

impl Lock {
    fn new(config: Config) -> Arc<Lock> {
        let raw = RawRwLock::new(Model::new(config));
        Arc::new(Lock { raw, data: UnsafeCell::new(0) })
    }

    /// As the library's guard reads: the unlock is told how the lock came
    /// in. (The tests that unlock with `read_unlock`, which looks at the
    /// mode instead, check the `lock_api` trait's way.)
    fn read(&self) -> u64 {
        let entered = self.raw.read_lock();
        // SAFETY: read-locked; loom reports a causality violation if a
        // writer's access is not ordered with this one.
        let v = self.data.with(|p| unsafe { *p });
        // SAFETY: we hold the read lock taken above, which came in so.
        unsafe { self.raw.read_unlock_as(entered) };
        v
    }

    fn try_read(&self) -> Option<u64> {
        self.raw.try_read_lock().map(|entered| {
            // SAFETY: as in `read`.
            let v = self.data.with(|p| unsafe { *p });
            // SAFETY: we hold the read lock taken above, which came in so.
            unsafe { self.raw.read_unlock_as(entered) };
            v
        })
    }

    fn locked_write(&self) {
        // SAFETY: write-locked; loom checks the claim.
        self.data.with_mut(|p| unsafe { *p += 1 });
        // SAFETY: the caller holds the write lock.
        unsafe { self.raw.write_unlock() };
    }

    fn write(&self) {
        self.raw.write_lock();
        self.locked_write();
    }

    fn try_write(&self) -> bool {
        let ok = self.raw.try_write_lock();
        if ok {
            self.locked_write();
        }
        ok
    }
}

/// A reader that stays on slot 1, a reader that moves to the other slot
/// after each count (so a back-off counts its lock on one slot and its
/// unlock on the other), and a writer, all starting together.
fn hopping_readers_and_a_writer(config: Config) {
    loom::model(move || {
        let lock = Lock::new(config);
        let steady = spawn_on(&lock, 1, false, |l| {
            l.read();
        });
        let hopper = spawn_on(&lock, 0, true, |l| {
            l.read();
        });
        run_on(0, false);
        lock.write();
        steady.join().unwrap();
        hopper.join().unwrap();
        assert_eq!(lock.read(), 1);
    });
}

/// A reader already inside (on slot 1) and descheduled there, while a
/// writer and a hopping reader (slot 0, then 1, ...) arrive: the false-zero
/// race in as few preemptions as loom can find it.
fn reader_inside_then_hopper_and_writer(config: Config) {
    loom::model(move || {
        let lock = Lock::new(config);
        run_on(1, false);
        lock.raw.read_lock();
        let writer = spawn_on(&lock, 0, false, |l| {
            l.write();
        });
        let hopper = spawn_on(&lock, 0, true, |l| {
            l.read();
        });
        thread::yield_now();
        // SAFETY: read-locked above; loom checks the claim.
        let seen = lock.data.with(|p| unsafe { *p });
        // SAFETY: we hold the read lock taken above.
        unsafe { lock.raw.read_unlock() };
        assert_eq!(seen, 0, "the writer got in while a reader was inside");
        writer.join().unwrap();
        hopper.join().unwrap();
        assert_eq!(lock.read(), 1);
    });
}

#[test]
fn split_counts_keep_writer_out_while_readers_hop() {
    hopping_readers_and_a_writer(LIBRARY);
    reader_inside_then_hopper_and_writer(LIBRARY);
}

/// Without a heavy barrier the lock fences its readers for good.
#[test]
fn without_membarrier_readers_fence_for_good() {
    let config = Config { membarrier: false, ..LIBRARY };
    hopping_readers_and_a_writer(config);
    reader_inside_then_hopper_and_writer(config);
}

/// While the lock is fenced, writers issue no heavy barrier: a reader that
/// then skips its fence can be inside with a writer. The model must find
/// it.
#[test]
fn skipping_the_fence_in_fenced_mode_lets_writer_in() {
    expect_violation(|| {
        hopping_readers_and_a_writer(Config { skip_fenced_fence: true, ..LIBRARY })
    });
}

/// Runs `model`, which must fail with a causality violation (a reader and
/// the writer inside together).
fn expect_violation(model: impl FnOnce()) {
    expect_failure(model, &["Causality violation"]);
}

/// With one in-minus-out count per slot, the writer can read slot 0 before
/// the hopper counts its lock there, and slot 1 after the hopper backs off
/// there, cancelling the steady reader who is still inside: a false zero.
/// The model must find it.
#[test]
fn single_count_lets_writer_in_on_false_zero() {
    expect_violation(|| reader_inside_then_hopper_and_writer(Config { split: false, ..LIBRARY }));
}

/// Without the fences (store buffering: the reader's count and the
/// writer's WRITER both late), the model must find a reader and the writer
/// inside together, or a lost wake-up (a deadlock, which loom reports by
/// aborting: hence the child process).
#[test]
fn missing_fences_let_writer_in() {
    expect_failure_in_child(
        "missing_fences_let_writer_in",
        || reader_inside_then_hopper_and_writer(Config { fences: false, ..LIBRARY }),
        &["Causality violation", "deadlock"],
    );
}

/// Two writers (one through `try_write`) and a reader through `try_read`.
fn writers_and_a_try_reader(config: Config) {
    loom::model(move || {
        let lock = Lock::new(config);
        let writer = spawn_on(&lock, 1, false, |l| {
            l.write();
        });
        let reader = spawn_on(&lock, 0, true, |l| {
            l.try_read();
        });
        run_on(0, false);
        let wrote = lock.try_write();
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(lock.read(), 1 + u64::from(wrote));
    });
}

#[test]
fn writers_exclude_each_other_and_try_locks() {
    writers_and_a_try_reader(LIBRARY);
}

/// Three blocking writers: two of them may sleep on the writers' mutex at
/// once, and a release wakes one; each must still get in (a woken writer
/// that took the mutex without marking it contended again left the third
/// asleep for good: loom reports the deadlock).
#[test]
fn three_writers_all_get_in() {
    loom::model(|| {
        let lock = Lock::new(LIBRARY);
        let writers: Vec<_> = (0..2).map(|_| spawn_on(&lock, 0, false, |l| l.write())).collect();
        lock.write();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(lock.read(), 3);
    });
}

/// A hopping reader that reads twice and a writer that writes twice: with
/// [`SWITCHING`], the first write moves readers to the central mode as it
/// unlocks and the second moves them back, while the reader may meet
/// either mode, a switch between its two looks at `state`, or leave the
/// central mode itself (its second clock check finds no write since its
/// first).
fn reader_and_two_writes(config: Config) {
    loom::model(move || {
        let lock = Lock::new(config);
        let reader = spawn_on(&lock, 1, true, |l| {
            let first = l.read();
            let second = l.read();
            assert!(first <= second);
        });
        run_on(0, false);
        lock.write();
        lock.write();
        reader.join().unwrap();
        assert_eq!(lock.read(), 2);
    });
}

/// Readers switched between per-CPU counts and the central count at every
/// write: no reader and writer inside together, no lost wake-up.
#[test]
fn mode_switches_keep_writers_out() {
    reader_and_two_writes(SWITCHING);
    hopping_readers_and_a_writer(SWITCHING);
}

/// A reader that finds the central mode after its fence but enters on its
/// per-CPU count alone is invisible to the next writer, who waits for the
/// central count: the model must find the two inside together.
#[test]
fn central_reader_without_central_count_lets_writer_in() {
    expect_violation(|| reader_and_two_writes(Config { skip_central_count: true, ..SWITCHING }));
}

/// The try-locks, two writers and downgrades while every write switches
/// the mode.
#[test]
fn try_locks_and_downgrades_while_switching() {
    writers_and_a_try_reader(SWITCHING);
    loom::model(|| {
        let lock = Lock::new(SWITCHING);
        let reader = spawn_on(&lock, 1, true, |l| l.read());
        run_on(0, false);
        // The first write switches to the central mode as it unlocks.
        lock.write();
        lock.raw.write_lock();
        // SAFETY: write-locked; loom checks the claim.
        lock.data.with_mut(|p| unsafe { *p += 1 });
        // SAFETY: write-locked above; the read lock it becomes is counted
        // centrally, and the writer below must wait for it.
        unsafe { lock.raw.downgrade() };
        let writer = spawn_on(&lock, 0, false, |l| l.write());
        // SAFETY: read-locked by the downgrade.
        assert_eq!(lock.data.with(|p| unsafe { *p }), 2);
        // SAFETY: read-locked by the downgrade.
        unsafe { lock.raw.read_unlock() };
        writer.join().unwrap();
        assert!(reader.join().unwrap() <= 3);
        assert_eq!(lock.read(), 3);
    });
}

/// Two blocking writers and a hopping blocking reader: the reader may
/// sleep behind one writer and register as parked, the other writer then
/// waits for it; no lost wake-up, no overlap.
#[test]
fn parked_reader_between_two_writers() {
    loom::model(|| {
        let lock = Lock::new(LIBRARY);
        let writer = spawn_on(&lock, 1, false, |l| {
            l.write();
        });
        let reader = spawn_on(&lock, 0, true, |l| l.read());
        run_on(0, false);
        lock.write();
        writer.join().unwrap();
        assert!(reader.join().unwrap() <= 2);
        assert_eq!(lock.read(), 2);
    });
}

/// How the model's upgradable reader turns its lock into the write lock.
#[derive(Clone, Copy)]
enum Upgrade {
    /// `upgrade` (the library).
    Blocking,
    /// `try_upgrade`, giving up (and writing nothing) if a reader is inside.
    Try,
    /// A broken upgrade that blocks readers and looks once, as
    /// `try_upgrade` does, then writes whether or not a reader is inside.
    SkipWait,
}

impl Lock {
    /// Takes an upgradable lock, reads, upgrades as `how` says and writes.
    /// Returns whether it wrote.
    fn upgradable_then_write(&self, how: Upgrade) -> bool {
        self.raw.upgradable_lock();
        // SAFETY: upgradable-locked: writers are out; loom checks the claim.
        let before = self.data.with(|p| unsafe { *p });
        let upgraded = match how {
            Upgrade::Blocking => {
                // SAFETY: we hold the upgradable lock taken above.
                unsafe { self.raw.upgrade() };
                true
            }
            // SAFETY: as above.
            Upgrade::Try => unsafe { self.raw.try_upgrade() },
            Upgrade::SkipWait => {
                // SAFETY: as above.
                let upgraded = unsafe { self.raw.try_upgrade() };
                // SAFETY: not safe at all: the bug the model must find.
                self.data.with_mut(|p| unsafe { *p += 1 });
                // SAFETY: the write lock, or the upgradable one if the
                // try failed.
                unsafe {
                    if upgraded {
                        self.raw.write_unlock();
                    } else {
                        self.raw.upgradable_unlock();
                    }
                }
                return true;
            }
        };
        if !upgraded {
            // SAFETY: try_upgrade failed: still upgradable-locked.
            unsafe { self.raw.upgradable_unlock() };
            return false;
        }
        // SAFETY: write-locked since the upgrade; no writer came between
        // the upgradable read and the write.
        self.data.with_mut(|p| unsafe {
            assert_eq!(*p, before, "a writer got in between upgradable read and upgrade");
            *p += 1;
        });
        // SAFETY: write-locked by the upgrade.
        unsafe { self.raw.write_unlock() };
        true
    }
}

/// An upgradable reader that upgrades as `how` says, a hopping reader and
/// a writer (through `try_write` if `try_write`), all starting together.
fn upgrader_reader_and_writer(config: Config, how: Upgrade, try_write: bool) {
    loom::model(move || {
        let lock = Lock::new(config);
        let upgrader = spawn_on(&lock, 1, false, move |l| l.upgradable_then_write(how));
        let reader = spawn_on(&lock, 0, true, |l| l.read());
        run_on(0, false);
        let wrote = if try_write {
            lock.try_write()
        } else {
            lock.write();
            true
        };
        let upgraded = upgrader.join().unwrap();
        let total = u64::from(wrote) + u64::from(upgraded);
        assert!(reader.join().unwrap() <= total);
        assert_eq!(lock.read(), total);
    });
}

/// An upgradable reader upgrades while a reader reads and a writer
/// competes: no overlap, no lost wake-up, no writer between the upgradable
/// read and the write.
#[test]
fn upgrade_waits_for_readers_and_excludes_writers() {
    upgrader_reader_and_writer(LIBRARY, Upgrade::Blocking, false);
    upgrader_reader_and_writer(LIBRARY, Upgrade::Try, true);
}

/// The same while every write switches the mode.
#[test]
fn upgrade_while_switching() {
    upgrader_reader_and_writer(SWITCHING, Upgrade::Blocking, false);
}

/// The same without a heavy barrier (readers fence for good).
#[test]
fn upgrade_without_membarrier() {
    let config = Config { membarrier: false, ..LIBRARY };
    upgrader_reader_and_writer(config, Upgrade::Blocking, true);
}

/// An upgrade that does not wait for the readers inside writes while one
/// reads: the model must find it.
#[test]
fn upgrade_that_skips_waiting_for_readers_lets_writer_in() {
    expect_violation(|| upgrader_reader_and_writer(LIBRARY, Upgrade::SkipWait, true));
}

/// Write lock to upgradable and back to write, then to a read lock through
/// upgradable, while a reader and an upgradable reader (that upgrades) run.
#[test]
fn downgrades_through_upgradable() {
    loom::model(|| {
        let lock = Lock::new(LIBRARY);
        let reader = spawn_on(&lock, 1, true, |l| l.read());
        let upgrader = spawn_on(&lock, 1, false, |l| l.upgradable_then_write(Upgrade::Blocking));
        run_on(0, false);
        lock.raw.write_lock();
        // SAFETY: write-locked; loom checks the claim.
        let first = lock.data.with_mut(|p| unsafe {
            *p += 1;
            *p
        });
        // SAFETY: write-locked above.
        unsafe { lock.raw.downgrade_to_upgradable() };
        // SAFETY: upgradable-locked: no writer since our write.
        assert_eq!(lock.data.with(|p| unsafe { *p }), first);
        // SAFETY: upgradable-locked by the downgrade.
        unsafe { lock.raw.downgrade_upgradable() };
        // SAFETY: read-locked, still no writer since our write.
        assert_eq!(lock.data.with(|p| unsafe { *p }), first);
        // SAFETY: read-locked by the downgrade.
        unsafe { lock.raw.read_unlock() };
        assert!(upgrader.join().unwrap());
        assert!(reader.join().unwrap() <= 2);
        assert_eq!(lock.read(), 2);
    });
}

/// Two readers inside, one per slot, while a writer comes and sleeps
/// waiting for them: only a reader that finds no other inside wakes the
/// writer, so the one that unlocks last must see the other's unlock. (A
/// reader that looked for the others before its fence could miss it, and
/// then neither would wake the writer: loom reports the deadlock.)
#[test]
fn the_last_of_two_readers_out_wakes_the_writer() {
    loom::model(|| {
        let lock = Lock::new(LIBRARY);
        let other = spawn_on(&lock, 1, false, |l| {
            l.raw.read_lock();
            // SAFETY: read-locked just above.
            unsafe { l.raw.read_unlock() };
        });
        run_on(0, false);
        lock.raw.read_lock();
        let writer = spawn_on(&lock, 0, false, |l| l.write());
        // SAFETY: read-locked above.
        unsafe { lock.raw.read_unlock() };
        other.join().unwrap();
        writer.join().unwrap();
        assert_eq!(lock.read(), 1);
    });
}

/// A reader inside (fenced mode) and a writer that comes and sleeps
/// waiting for it. The writer's first sleep issues no heavy barrier, so
/// the reader's unlock, whose light fence then pairs with nothing, may be
/// neither summed by the writer nor see WRITER. With the library's
/// configuration the model passes: the timed sleep returns, and the sleep
/// after it is backed by the barrier. With the light fence modelled as
/// nothing and that first sleep untimed, loom finds the lost wake-up.
///
/// What this does not show: that the timeout alone is what saves the
/// library. With the light fence modelled as nothing, the barrier has
/// nothing to pair with either, so the timed version deadlocks as well (at
/// its second sleep), and the library's configuration, whose fence mutex
/// orders more than a compiler barrier, does not find the lost wake-up even
/// with the first sleep untimed.
#[test]
fn a_first_sleep_without_a_barrier_needs_its_timeout() {
    fn model(config: Config) {
        loom::model(move || {
            let lock = Lock::new(config);
            run_on(0, false);
            lock.raw.read_lock();
            let writer = spawn_on(&lock, 1, false, |l| l.write());
            // SAFETY: read-locked above.
            unsafe { lock.raw.read_unlock() };
            writer.join().unwrap();
            assert_eq!(lock.read(), 1);
        });
    }
    model(LIBRARY);
    expect_failure_in_child(
        "a_first_sleep_without_a_barrier_needs_its_timeout",
        || model(Config { untimed_brief_sleeps: true, light_fence_alone: true, ..LIBRARY }),
        &["deadlock"],
    );
}
