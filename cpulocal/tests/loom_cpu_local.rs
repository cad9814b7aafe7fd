//! `CpuLocal`'s locked access under migration, under loom.
//!
//! `CpuLocal::lock` reads the current CPU once, locks that CPU's slot and
//! returns a guard that holds on to that slot: the value it hands out and
//! the lock it releases are the locked slot's, wherever the thread runs
//! when it uses or drops the guard. `src/cpu_local.rs` reaches the CPU
//! through the operating system, so this file restates that protocol over
//! loom primitives (as `tests/loom_percpu.rs` does for the regions):
//!
//! - the CPU is a loom thread-local slot that a thread may move on from
//!   after every look at it (a migration between any two steps);
//! - each slot's lock is a blocking lock whose owner can be any thread
//!   that names the slot (so that unlocking the wrong slot is expressible),
//!   and the value is a loom `UnsafeCell`, so two threads inside one slot
//!   at once are a causality violation;
//! - the one-way switch between shared (`get`) and locked (`lock`) use is
//!   a compare-and-swap on the mode word, as in `CpuLocal::enter`.
//!
//! Each broken variant must be caught: a guard that unlocks the slot the
//! thread runs on when it drops it, a guard that finds its value through
//! the CPU the thread runs on now, and a mode switch made with a load and a
//! store instead of a compare-and-swap.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release -p cpulocal --test loom_cpu_local`.
#![cfg(loom)]

use std::cell::Cell;
mod loom_support;

use loom_support::expect_failure;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU8, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// Model CPUs.
const SLOTS: usize = 2;

loom::thread_local! {
    /// The model CPU the thread is on, and whether it moves to the next one
    /// every time it looks.
    static CPU: Cell<(usize, bool)> = Cell::new((0, false));
}

/// Puts the calling thread on `slot`; with `hops`, it migrates after every
/// look at its CPU.
fn run_on(slot: usize, hops: bool) {
    CPU.with(|c| c.set((slot, hops)));
}

/// `cpu::current()`: where the thread is now (and, if it hops, it is
/// elsewhere right after).
fn current() -> usize {
    CPU.with(|c| {
        let (slot, hops) = c.get();
        if hops {
            c.set(((slot + 1) % SLOTS, true));
        }
        slot
    })
}

/// What the guard does on the way in and out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    /// The library's guard: the value and the lock of the slot it locked.
    Holds,
    /// Bug: drop unlocks the current CPU's slot.
    UnlocksWhereRunning,
    /// Bug: the value is the current CPU's, looked up on each access.
    ValueWhereRunning,
}

/// One slot's lock: a flag under a loom mutex, waited for on a condvar,
/// released by whoever names the slot.
struct SlotLock {
    held: Mutex<bool>,
    released: Condvar,
}

impl SlotLock {
    fn lock(&self) {
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.released.wait(held).unwrap();
        }
        *held = true;
    }

    fn unlock(&self) {
        let mut held = self.held.lock().unwrap();
        assert!(*held, "unlocked a slot nobody holds");
        *held = false;
        self.released.notify_all();
    }
}

struct Slot {
    lock: SlotLock,
    value: UnsafeCell<u64>,
}

/// A `CpuLocal<u64>` in locked mode.
struct Model {
    guard: Guard,
    slots: [Slot; SLOTS],
}

impl Model {
    fn new(guard: Guard) -> Arc<Model> {
        Arc::new(Model {
            guard,
            slots: std::array::from_fn(|_| Slot {
                lock: SlotLock { held: Mutex::new(false), released: Condvar::new() },
                value: UnsafeCell::new(0),
            }),
        })
    }

    /// `lock_on(cpu)`: the slot's lock, then the guard.
    fn lock_on(&self, cpu: usize) -> usize {
        self.slots[cpu].lock.lock();
        cpu
    }

    /// `*guard += n` through a guard from `lock_on(cpu)`.
    fn add(&self, cpu: usize, n: u64) {
        let slot = match self.guard {
            Guard::ValueWhereRunning => current(),
            _ => cpu,
        };
        // SAFETY: the guard's slot is locked (in the correct variant);
        // loom reports any access not ordered with another thread's.
        self.slots[slot].value.with_mut(|p| unsafe { *p += n });
    }

    /// Dropping the guard from `lock_on(cpu)`.
    fn unlock(&self, cpu: usize) {
        let slot = match self.guard {
            Guard::UnlocksWhereRunning => current(),
            _ => cpu,
        };
        self.slots[slot].lock.unlock();
    }

    /// `*cpu_local.lock() += n`.
    fn lock_and_add(&self, n: u64) {
        let guard = self.lock_on(current());
        self.add(guard, n);
        self.unlock(guard);
    }

    /// Every slot's value, each read under its own lock (`lock_on`).
    fn total(&self) -> u64 {
        (0..SLOTS)
            .map(|cpu| {
                let guard = self.lock_on(cpu);
                // SAFETY: read under the slot's lock.
                let v = self.slots[guard].value.with(|p| unsafe { *p });
                self.slots[guard].lock.unlock();
                v
            })
            .sum()
    }
}

/// A thread that migrates after every look at its CPU (so it locks one
/// slot and is elsewhere when it writes and when it unlocks), a thread on
/// slot 1 and the main thread on slot 0, each adding under the lock.
fn migrating_lockers(guard: Guard) {
    loom::model(move || {
        let model = Model::new(guard);
        let hopper = {
            let model = model.clone();
            thread::spawn(move || {
                run_on(0, true);
                model.lock_and_add(1);
            })
        };
        let steady = {
            let model = model.clone();
            thread::spawn(move || {
                run_on(1, false);
                model.lock_and_add(10);
            })
        };
        run_on(0, false);
        model.lock_and_add(100);
        hopper.join().unwrap();
        steady.join().unwrap();
        assert_eq!(model.total(), 111, "an update under the lock was lost");
    });
}

#[test]
fn guard_keeps_its_slot_across_migration() {
    migrating_lockers(Guard::Holds);
}

/// Unlocking where the thread runs now releases another slot's lock (maybe
/// while its holder is inside, maybe nobody's) and leaves its own held.
#[test]
fn unlocking_the_current_slot_is_found() {
    expect_failure(
        || migrating_lockers(Guard::UnlocksWhereRunning),
        &["nobody holds", "Causality violation", "deadlock"],
    );
}

/// Reaching the value where the thread runs now writes a slot whose lock
/// another thread holds.
#[test]
fn value_of_the_current_slot_is_found() {
    expect_failure(|| migrating_lockers(Guard::ValueWhereRunning), &["Causality violation"]);
}

/// `CpuLocal`'s mode word: unused, shared (`get`) or locked (`lock`).
const UNUSED: u8 = 0;
const SHARED: u8 = 1;
const LOCKED: u8 = 2;

/// `CpuLocal::enter`: switches the mode from unused to `mode` once, or
/// finds it already `mode`; `false` where the library panics.
fn enter(word: &AtomicU8, mode: u8, cas: bool) -> bool {
    if word.load(Ordering::Relaxed) == mode {
        return true;
    }
    if cas {
        match word.compare_exchange(UNUSED, mode, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => true,
            Err(m) => m == mode,
        }
    } else {
        // Bug: check, then store.
        let m = word.load(Ordering::Relaxed);
        if m == UNUSED {
            word.store(mode, Ordering::Relaxed);
            return true;
        }
        m == mode
    }
}

/// A `get` and a `lock` race on a fresh `CpuLocal`: one of them must be
/// refused, or a `&T` and a `&mut T` to one value would coexist (here: a
/// read and a write of the cell, unordered).
fn shared_and_locked_race(cas: bool) {
    loom::model(move || {
        let mode = Arc::new(AtomicU8::new(UNUSED));
        let value = Arc::new(UnsafeCell::new(0u64));
        let reader = {
            let (mode, value) = (mode.clone(), value.clone());
            thread::spawn(move || {
                if enter(&mode, SHARED, cas) {
                    // SAFETY: shared mode: no `&mut` exists (loom checks).
                    value.with(|p| unsafe { *p });
                }
            })
        };
        if enter(&mode, LOCKED, cas) {
            // SAFETY: locked mode: no `&T` exists (loom checks).
            value.with_mut(|p| unsafe { *p += 1 });
        }
        reader.join().unwrap();
    });
}

#[test]
fn shared_and_locked_use_never_meet() {
    shared_and_locked_race(true);
}

#[test]
fn mode_switch_without_compare_and_swap_is_found() {
    expect_failure(|| shared_and_locked_race(false), &["Causality violation"]);
}
