//! Per-CPU operations (`cpulocal::ops`) under concurrency: compare-and-store
//! increments stay exact and the per-CPU stacks neither lose nor duplicate
//! nodes, with threads hopping CPUs and receiving signals, in thread-exit
//! destructors, under every backend.
#![cfg(all(target_os = "linux", not(miri)))]

mod common;

use std::collections::HashSet;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread;

use cpulocal::cpu::{self, Backend};
use cpulocal::ops::{Node, PercpuStack, PercpuU64};

#[test]
fn send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PercpuU64>();
    assert_send_sync::<PercpuStack<Vec<u8>>>();
    assert_send_sync::<Node<Vec<u8>>>();
    assert_send_sync::<cpulocal::Counter>();
}

/// Adds one to the current CPU's word through compare-and-store only.
fn cas_increment(w: &PercpuU64) -> usize {
    let mut seen = w.load_on(cpu::current()).unwrap();
    loop {
        match w.compare_store(seen, seen + 1) {
            Ok(index) => return index,
            Err(actual) => seen = actual,
        }
    }
}

#[test]
fn compare_store_on_the_current_cpu() {
    if !common::is_child() {
        return common::under_every_path("compare_store_on_the_current_cpu");
    }
    common::check_forced_backend();
    let cpus = common::allowed();
    let mut w = PercpuU64::default();
    for (step, &cpu) in cpus.iter().enumerate() {
        common::hop(&cpus, step);
        // Pinned, the current word stays put (under fallback: the stripe).
        let here = cpu::current();
        if cpu::backend() != Backend::Fallback {
            assert_eq!(here, cpu);
        }
        let before = w.load_on(here).unwrap();
        assert_eq!(w.compare_store(before, before + 10), Ok(here), "stored elsewhere");
        assert_eq!(w.load_on(here), Some(before + 10));
        assert_eq!(w.compare_store(before, 1), Err(before + 10));
        assert_eq!(w.compare_store(before + 10, before), Ok(here));
        w.add(7);
        assert_eq!(w.load_on(here), Some(before + 7));
    }
    assert_eq!(w.iter().len(), cpu::count() + 1);
    assert_eq!(w.load_on(cpu::count() + 1), None);
    assert_eq!(w.sum(), 7 * cpus.len() as u64);
    assert!(format!("{w:?}").starts_with("PercpuU64 { words: {"));
    w.reset();
    assert_eq!(w.sum(), 0);
}

#[test]
fn compare_store_increments_are_exact() {
    if !common::is_child() {
        return common::under_every_path("compare_store_increments_are_exact");
    }
    common::check_forced_backend();
    let cpus = common::allowed();
    let w = PercpuU64::new();
    let n = common::scaled(50_000);
    thread::scope(|s| {
        for t in 0..4 {
            let (w, cpus) = (&w, &cpus);
            s.spawn(move || {
                for i in 0..n {
                    if i % 64 == 0 {
                        common::hop(cpus, t + i / 64);
                    }
                    assert!(cas_increment(w) <= cpu::count());
                    w.add(1);
                }
            });
        }
    });
    assert_eq!(w.sum(), 4 * 2 * n as u64, "{w:?}");
}

/// A stack node's payload: who it is, and whether a thread holds it now.
struct Item {
    id: usize,
    held: AtomicBool,
}

/// Takes `node` as popped: it must not be held by anyone else already.
fn take(node: &Node<Item>) {
    assert!(!node.held.swap(true, Ordering::Relaxed), "node {} popped twice", node.id);
}

/// Gives `node` back before pushing it.
fn give(node: &Node<Item>) {
    node.held.store(false, Ordering::Relaxed);
}

/// Checks that `stack` holds exactly the nodes `0..m`, once each.
fn check_all_present(mut stack: PercpuStack<Item>, m: usize) {
    let nodes: Vec<_> = stack.drain().take(m + 1).collect();
    let ids: HashSet<usize> = nodes.iter().map(|n| n.id).collect();
    if nodes.len() != m || ids.len() != m || ids.iter().any(|&id| id >= m) {
        // Some node is in the lists twice (or a cycle): freeing would be a
        // double free, so leak everything and report.
        let (len, distinct) = (nodes.len(), ids.len());
        std::mem::forget(nodes);
        std::mem::forget(stack);
        panic!("{len} nodes drained ({distinct} distinct), {m} pushed");
    }
}

/// A tiny xorshift generator, for push orders.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Pops up to three nodes, then pushes them back in a random order (so a
/// node goes back on top over a different `next`: what turns ABA into
/// corruption).
fn churn(stack: &PercpuStack<Item>, rng: &mut u64) -> usize {
    let mut held: Vec<Box<Node<Item>>> = Vec::with_capacity(3);
    while held.len() < 3 {
        match stack.pop() {
            Some(node) => {
                take(&node);
                held.push(node);
            }
            None => break,
        }
    }
    let popped = held.len();
    while !held.is_empty() {
        let node = held.swap_remove(next_rand(rng) as usize % held.len());
        give(&node);
        stack.push(node);
    }
    popped
}

#[test]
fn stack_neither_loses_nor_duplicates_nodes() {
    if !common::is_child() {
        return common::under_every_path("stack_neither_loses_nor_duplicates_nodes");
    }
    common::check_forced_backend();
    let cpus = common::allowed();
    let stack = PercpuStack::new();
    let m = 64;
    for id in 0..m {
        // Seed every CPU's list (every stripe's, under fallback, from threads).
        if id % 2 == 0 {
            common::hop(&cpus, id);
            stack.push(Box::new(Node::new(Item { id, held: AtomicBool::new(false) })));
        } else {
            thread::scope(|s| {
                s.spawn(|| {
                    stack.push(Box::new(Node::new(Item { id, held: AtomicBool::new(false) })))
                });
            });
        }
    }
    let n = common::scaled(40_000);
    let popped: usize = thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let (stack, cpus) = (&stack, &cpus);
                s.spawn(move || {
                    let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1);
                    let mut popped = 0;
                    for i in 0..n {
                        if i % 128 == 0 {
                            common::hop(cpus, t + i / 128);
                        }
                        popped += churn(stack, &mut rng);
                    }
                    popped
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert!(popped > n, "only {popped} pops: the test proves little");
    check_all_present(stack, m);
}

static SIGNALLED: OnceLock<PercpuU64> = OnceLock::new();
static HANDLED: AtomicU64 = AtomicU64::new(0);
/// The stack the handler reorders (null when none).
static SIGNALLED_STACK: AtomicPtr<PercpuStack<Item>> = AtomicPtr::new(ptr::null_mut());
/// The node the handler keeps until the next signal (null when none).
static KEPT: AtomicPtr<Node<Item>> = AtomicPtr::new(ptr::null_mut());
/// Set by the handler when it pops a node someone else holds.
static DUPLICATE: AtomicBool = AtomicBool::new(false);

/// Signals a worker handles at least (it works on until it has).
const MIN_SIGNALS: u64 = 3000;

extern "C" fn ops_in_handler(_sig: libc::c_int) {
    // Runs on the worker, perhaps in the middle of one of its own
    // operations on the same words and lists.
    if let Some(w) = SIGNALLED.get() {
        cas_increment(w);
    }
    // SAFETY: the test frees the stack only after clearing this pointer
    // with the worker (the only thread signalled) finished.
    if let Some(stack) = unsafe { SIGNALLED_STACK.load(Ordering::Acquire).as_ref() } {
        reorder_in_handler(stack);
    }
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// Pops two nodes, A then B, puts A back (over a different `next` than B)
/// and keeps B until the next signal: exactly the interleaving that turns a
/// pop's stale `next` (ABA) into a duplicated node. Allocates nothing.
fn reorder_in_handler(stack: &PercpuStack<Item>) {
    let (a, b) = (stack.pop(), stack.pop());
    for node in a.iter().chain(b.iter()) {
        if node.held.swap(true, Ordering::Relaxed) {
            DUPLICATE.store(true, Ordering::Relaxed);
        }
    }
    let kept = KEPT.swap(ptr::null_mut(), Ordering::Relaxed);
    if !kept.is_null() {
        // SAFETY: from `Box::into_raw` below; KEPT owned it alone.
        let kept = unsafe { Box::from_raw(kept) };
        give(&kept);
        stack.push(kept);
    }
    if let Some(a) = a {
        give(&a);
        stack.push(a);
    }
    if let Some(b) = b {
        KEPT.store(Box::into_raw(b), Ordering::Relaxed);
    }
}

#[test]
fn signal_stream_keeps_ops_exact() {
    if !common::is_child() {
        return common::under_every_path("signal_stream_keeps_ops_exact");
    }
    common::check_forced_backend();
    let cpus = common::allowed();
    let w = SIGNALLED.get_or_init(PercpuU64::new);
    let raw = Box::into_raw(Box::new(PercpuStack::new()));
    // SAFETY: `raw` stays allocated until the `Box::from_raw` below, after
    // the worker (and so every handler) is done with it.
    let stack: &PercpuStack<Item> = unsafe { &*raw };
    let m = 16;
    SIGNALLED_STACK.store(raw, Ordering::Release);
    common::on_sigusr1(ops_in_handler);
    let n = common::scaled(200_000);
    let (ready, started) = mpsc::channel();
    let done = AtomicBool::new(false);
    let counted = thread::scope(|s| {
        let worker = s.spawn(|| {
            // The first update (rseq registration) comes before any signal.
            cas_increment(w);
            // Seeded from here: under fallback only this thread's stripe is
            // ever used.
            for id in 0..m {
                stack.push(Box::new(Node::new(Item { id, held: AtomicBool::new(false) })));
            }
            // SAFETY: pthread_self has no preconditions.
            ready.send(unsafe { libc::pthread_self() }).unwrap();
            let mut rng = 0x2545_f491_4f6c_dd1d;
            let mut i = 0;
            while i < n || HANDLED.load(Ordering::Relaxed) < MIN_SIGNALS {
                if i % 4096 == 0 {
                    // Nodes stay on the CPU they were pushed on; come back
                    // to it now and then.
                    common::hop(&cpus, i / 4096);
                }
                cas_increment(w);
                churn(stack, &mut rng);
                i += 1;
            }
            // Signals sent before this are handled before it returns; later
            // ones stay pending until the thread exits. (Scoped threads count
            // as finished before they exit: without this a late handler
            // could count after the totals are read.)
            common::block_sigusr1();
            done.store(true, Ordering::Release);
            i
        });
        let target = started.recv().unwrap();
        common::signal_until(target, &done, &HANDLED);
        worker.join().unwrap()
    });
    SIGNALLED_STACK.store(ptr::null_mut(), Ordering::Release);
    let handled = HANDLED.load(Ordering::Relaxed);
    assert_eq!(w.sum(), counted as u64 + 1 + handled, "{handled} signals");
    assert!(!DUPLICATE.load(Ordering::Relaxed), "the handler popped a node someone held");
    let kept = KEPT.swap(ptr::null_mut(), Ordering::Relaxed);
    if !kept.is_null() {
        // SAFETY: from `Box::into_raw` in the handler, which is done.
        let kept = unsafe { Box::from_raw(kept) };
        give(&kept);
        stack.push(kept);
    }
    // SAFETY: from `Box::into_raw` above; nothing uses `stack` any more.
    check_all_present(*unsafe { Box::from_raw(raw) }, m);
}

/// Pushes node `id` onto the stack when the thread's locals are destroyed.
struct PushAtExit(&'static PercpuStack<Item>, usize);

impl Drop for PushAtExit {
    fn drop(&mut self) {
        let node = Box::new(Node::new(Item { id: self.1, held: AtomicBool::new(false) }));
        self.0.push(node);
        // Pops work here too.
        if let Some(node) = self.0.pop() {
            self.0.push(node);
        }
    }
}

thread_local! {
    static AT_EXIT: std::cell::Cell<Option<PushAtExit>> = const { std::cell::Cell::new(None) };
}

#[test]
fn stack_in_thread_exit_destructors() {
    if !common::is_child() {
        return common::under_every_path("stack_in_thread_exit_destructors");
    }
    common::check_forced_backend();
    if common::own_rseq() {
        assert_eq!(cpu::backend(), Backend::Rseq, "own rseq registration not used");
    }
    let raw = Box::into_raw(Box::new(PercpuStack::new()));
    // SAFETY: `raw` stays allocated until the `Box::from_raw` below, which
    // runs after every thread using this reference has been joined.
    let stack: &'static PercpuStack<Item> = unsafe { &*raw };
    let threads = common::scaled(100);
    for id in 0..threads {
        thread::spawn(move || {
            // Destroyed at thread exit, when the thread's rseq area (glibc's,
            // or the library's own, which has no destructor) is still
            // registered.
            AT_EXIT.with(|a| a.set(Some(PushAtExit(stack, id))));
            PercpuU64::new().add(1);
        })
        .join()
        .unwrap();
    }
    // SAFETY: from `Box::into_raw` above; every thread that used `stack`
    // has been joined, and `stack` is not used again.
    let stack = unsafe { Box::from_raw(raw) };
    check_all_present(*stack, threads);
}

/// A CPU id other than `cpu` (below `count()`), if there is one.
fn other_cpu(cpu: usize) -> Option<usize> {
    (cpu::count() > 1).then(|| (cpu + 1) % cpu::count())
}

/// `store_on`, `push_on` and `pop_on` act on the named CPU's word or list
/// when the thread is pinned there, and change nothing when it is not.
#[test]
fn targeted_ops_act_only_on_the_named_cpu() {
    if !common::is_child() {
        return common::under_every_path("targeted_ops_act_only_on_the_named_cpu");
    }
    common::check_forced_backend();
    let cpus = common::allowed();
    let w = PercpuU64::new();
    let stack = PercpuStack::new();
    for (step, &pinned) in cpus.iter().enumerate() {
        common::hop(&cpus, step);
        // Under fallback the "CPU" is the thread's stripe.
        let here = cpu::current();
        if cpu::backend() != Backend::Fallback {
            assert_eq!(here, pinned);
        }
        let value = 1000 + step as u64;
        assert_eq!(w.store_on(here, value), Ok(()));
        assert_eq!(w.load_on(here), Some(value));
        let id = step;
        let pushed = stack.push_on(here, Box::new(Node::new(Item { id, held: false.into() })));
        assert!(pushed.is_ok(), "push_on the CPU the thread is pinned to");
        if let Some(other) = other_cpu(here) {
            let before = w.load_on(other);
            assert_eq!(w.store_on(other, 7).map_err(|e| e.cpu), Err(other));
            assert_eq!(w.load_on(other), before, "store_on wrote another CPU's word");
            let node = Box::new(Node::new(Item { id: usize::MAX, held: false.into() }));
            let back = stack.push_on(other, node).expect_err("push_on another CPU");
            assert_eq!(back.id, usize::MAX, "the node comes back");
            assert!(stack.pop_on(other).is_err());
        }
        let popped = stack.pop_on(here).expect("pop_on the pinned CPU");
        assert_eq!(popped.map(|n| n.id), Some(id), "pop_on took the node push_on put there");
        assert_eq!(stack.pop_on(here).map(|n| n.is_none()), Ok(true), "the list is empty");
        assert!(stack.is_empty());
    }
    assert!(w.store_on(cpu::count(), 1).is_err());
    assert!(stack.pop_on(cpu::count()).is_err());
    cpu::set_affinity(&cpus).unwrap();
}

/// Threads hopping between CPUs move nodes with `pop_on`/`push_on` aimed at
/// the CPU they last saw: none is lost or duplicated, the ones that missed
/// their CPU come back, and `len` ends exact.
#[test]
fn targeted_stack_ops_under_migration() {
    if !common::is_child() {
        return common::under_every_path("targeted_stack_ops_under_migration");
    }
    common::check_forced_backend();
    let cpus = common::allowed();
    let stack = PercpuStack::new();
    let m = 64;
    for id in 0..m {
        common::hop(&cpus, id);
        stack.push(Box::new(Node::new(Item { id, held: AtomicBool::new(false) })));
    }
    assert_eq!(stack.len(), m);
    let n = common::scaled(40_000);
    let (moved, missed) = thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let (stack, cpus) = (&stack, &cpus);
                s.spawn(move || {
                    let (mut moved, mut missed) = (0usize, 0usize);
                    for i in 0..n {
                        if i % 128 == 0 {
                            common::hop(cpus, t + i / 128);
                        } else if i % 5 == 0 {
                            thread::yield_now();
                        }
                        let Ok(Some(node)) = stack.pop_on(cpu::current()) else {
                            continue;
                        };
                        take(&node);
                        give(&node);
                        let mut node = node;
                        // Aim at the CPU seen now; on a miss, aim again.
                        loop {
                            match stack.push_on(cpu::current(), node) {
                                Ok(()) => break,
                                Err(back) => {
                                    missed += 1;
                                    node = back;
                                }
                            }
                        }
                        moved += 1;
                    }
                    (moved, missed)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    assert!(moved > n, "only {moved} nodes moved: the test proves little");
    eprintln!("moved {moved}, missed {missed}");
    assert_eq!(stack.len(), m);
    check_all_present(stack, m);
}

#[test]
fn stack_len_counts_pushes_and_pops() {
    let mut stack = PercpuStack::new();
    assert!(stack.is_empty());
    for id in 0..10 {
        stack.push(Box::new(Node::new(id)));
    }
    assert_eq!(stack.len(), 10);
    let mut popped = 0;
    while stack.pop().is_some() {
        popped += 1;
    }
    assert_eq!(stack.len(), 10 - popped);
    assert_eq!(stack.drain().count(), 10 - popped);
    assert_eq!(stack.len(), 0);
    assert!(format!("{stack:?}").contains("len: 0"));
}
