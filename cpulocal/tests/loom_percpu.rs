//! Per-CPU regions growing while other threads count and walk, under loom.
//!
//! `src/region.rs` talks to the operating system (`mmap`, `mprotect`), so
//! unlike `tests/loom_rwlock.rs` this file does not compile the library's
//! code: it restates the protocol of `region::alloc` and `region::grow`
//! over loom primitives, small enough to check every interleaving.
//!
//! - Each of [`SLOTS`] model CPUs has a region of [`PAGES`] pages of
//!   [`WORDS`] words. A page is usable only once committed: every access
//!   checks the page's `mapped` flag and fails like the segmentation fault
//!   the real `PROT_NONE` page would give.
//! - Allocation takes the regions' mutex, bumps the high-water mark and, when
//!   the object ends past the committed pages, commits the next page in
//!   every slot before it returns (the library's `grow`).
//! - A counter update is one atomic add on the current slot's word (what a
//!   restartable sequence amounts to for other CPUs); `sum` and `foreach`
//!   walk every slot without taking the mutex.
//!
//! The model checks that growth loses no update to an object allocated
//! before it, that a walk racing the growth touches only committed memory,
//! and that an object handed out is committed in every slot, on every
//! thread that gets it. Two broken variants must be caught: committing the
//! new pages after releasing the mutex (a second allocation can hand out an
//! object whose pages are not yet committed), and percpu(9)'s copy-and-swap
//! growth (copying every CPU's copy to a bigger region and switching to it
//! loses updates made to the old copy meanwhile, or touches it after it is
//! freed).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release -p cpulocal --test loom_percpu`.
#![cfg(loom)]

mod loom_support;

use loom_support::expect_failure;

use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

/// Model CPUs.
const SLOTS: usize = 2;
/// Pages per slot.
const PAGES: usize = 2;
/// Words per page.
const WORDS: usize = 2;

/// How the regions grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Growth {
    /// The library's way: commit the next pages of every slot in place,
    /// under the mutex, before the allocation that needs them returns.
    InPlace,
    /// Bug: publish the new committed size and release the mutex, then
    /// commit (a shorter critical section that is wrong).
    CommitAfterUnlock,
    /// Bug: percpu(9)'s copy-and-swap: make a bigger region for every slot,
    /// copy each copy over, switch to it and free the old one.
    CopyAndSwap,
}

/// One generation of the regions: every slot's pages and words.
struct Generation {
    mapped: [[AtomicBool; PAGES]; SLOTS],
    words: [[AtomicU64; PAGES * WORDS]; SLOTS],
}

impl Generation {
    fn new() -> Generation {
        Generation {
            mapped: std::array::from_fn(|_| std::array::from_fn(|_| AtomicBool::new(false))),
            words: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

struct State {
    /// Words handed out (a bump allocator: this model never frees).
    high: usize,
    /// Pages committed at the start of every slot.
    committed: usize,
}

struct Regions {
    growth: Growth,
    /// Generation 0 is the only one the in-place designs use; copy-and-swap
    /// moves to generation 1 when it grows.
    generations: [Generation; 2],
    current: AtomicUsize,
    state: Mutex<State>,
}

impl Regions {
    fn new(growth: Growth) -> Arc<Regions> {
        Arc::new(Regions {
            growth,
            generations: [Generation::new(), Generation::new()],
            current: AtomicUsize::new(0),
            state: Mutex::new(State { high: 0, committed: 0 }),
        })
    }

    /// Slot `slot`'s word at `offset`, as a load through the current base
    /// pointer and an access to the page would find it.
    fn word(&self, slot: usize, offset: usize) -> &AtomicU64 {
        let generation = &self.generations[self.current.load(Ordering::Acquire)];
        let page = offset / WORDS;
        assert!(
            generation.mapped[slot][page].load(Ordering::SeqCst),
            "segmentation fault: word {offset} of slot {slot} is not committed"
        );
        &generation.words[slot][offset]
    }

    /// Commits pages `from..to` of every slot of generation `g` (one
    /// `mprotect` per slot; a system call, so SeqCst).
    fn commit(&self, g: usize, from: usize, to: usize) {
        for slot in 0..SLOTS {
            for page in from..to {
                self.generations[g].mapped[slot][page].store(true, Ordering::SeqCst);
            }
        }
    }

    /// A one-word object, zero in every slot: its offset.
    fn alloc(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        let offset = state.high;
        state.high += 1;
        assert!(state.high <= PAGES * WORDS, "model too small");
        let need = state.high.div_ceil(WORDS);
        if need > state.committed {
            let from = state.committed;
            match self.growth {
                Growth::InPlace => {
                    self.commit(0, from, need);
                    state.committed = need;
                }
                Growth::CommitAfterUnlock => {
                    state.committed = need;
                    drop(state);
                    self.commit(0, from, need);
                }
                Growth::CopyAndSwap if from == 0 => {
                    self.commit(0, 0, need);
                    state.committed = need;
                }
                Growth::CopyAndSwap => {
                    // The bigger region, then every copy copied over.
                    self.commit(1, 0, need);
                    for slot in 0..SLOTS {
                        for w in 0..from * WORDS {
                            let v = self.generations[0].words[slot][w].load(Ordering::Relaxed);
                            self.generations[1].words[slot][w].store(v, Ordering::Relaxed);
                        }
                    }
                    self.current.store(1, Ordering::Release);
                    // Free the old region.
                    for slot in 0..SLOTS {
                        for page in 0..from {
                            self.generations[0].mapped[slot][page].store(false, Ordering::SeqCst);
                        }
                    }
                    state.committed = need;
                }
            }
        }
        offset
    }

    /// A counter update by a thread on `slot`.
    fn add(&self, slot: usize, offset: usize, n: u64) {
        self.word(slot, offset).fetch_add(n, Ordering::Relaxed);
    }

    /// `percpu_foreach`: visits every slot's copy.
    fn foreach(&self, offset: usize, mut f: impl FnMut(usize, &AtomicU64)) {
        for slot in 0..SLOTS {
            f(slot, self.word(slot, offset));
        }
    }

    /// `Counter::sum`.
    fn sum(&self, offset: usize) -> u64 {
        let mut sum = 0;
        self.foreach(offset, |_, w| sum += w.load(Ordering::Relaxed));
        sum
    }
}

/// A counter allocated before the threads start fills the first page with
/// a neighbour. Then, together: one thread allocates an object that needs
/// the next page (growth) and counts on it and on the counter; another
/// allocates a second object on that page and walks it; the main thread
/// counts on the counter from both slots and sums it in between.
fn growth_while_walking(growth: Growth) {
    loom::model(move || {
        let regions = Regions::new(growth);
        let counter = regions.alloc();
        let _neighbour = regions.alloc();
        let grower = {
            let regions = regions.clone();
            thread::spawn(move || {
                let object = regions.alloc();
                regions.add(0, object, 1);
                regions.add(0, counter, 1);
                object
            })
        };
        let walker = {
            let regions = regions.clone();
            thread::spawn(move || {
                let object = regions.alloc();
                regions.foreach(object, |slot, w| {
                    assert_eq!(w.load(Ordering::Relaxed), 0, "fresh object not zero on {slot}")
                });
                regions.add(1, object, 1);
                object
            })
        };
        regions.add(1, counter, 1);
        let seen = regions.sum(counter);
        assert!((1..=2).contains(&seen), "sum {seen} while two of three updates are made");
        regions.add(0, counter, 1);
        let (a, b) = (grower.join().unwrap(), walker.join().unwrap());
        assert_eq!(regions.sum(counter), 3, "an update to the counter was lost");
        assert_eq!(regions.sum(a), 1, "an update to the grower's object was lost");
        assert_eq!(regions.sum(b), 1, "an update to the walker's object was lost");
    });
}

#[test]
fn growth_in_place_loses_nothing_and_walks_committed_memory() {
    growth_while_walking(Growth::InPlace);
}

/// Committing after the mutex is released lets the second allocation hand
/// out a word on the page being committed, and its walk faults.
#[test]
fn commit_after_unlock_is_found() {
    expect_failure(|| growth_while_walking(Growth::CommitAfterUnlock), &["segmentation fault"]);
}

/// Copy-and-swap growth: an update landing in the old copy after it was
/// copied is lost, or touches the old region after it was freed.
#[test]
fn copy_and_swap_growth_is_found() {
    expect_failure(
        || growth_while_walking(Growth::CopyAndSwap),
        &["was lost", "segmentation fault", "sum "],
    );
}
