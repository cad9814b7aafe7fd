//! Cross-calls: where functions run, in what order, how failures surface,
//! and that nothing hangs.
#![cfg(all(target_os = "linux", not(miri)))]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cpulocal::cpu::{self, Backend};
use cpulocal::xcall::{self, Ticket, XcallError};

/// Long enough never to fire on a healthy run, even on a loaded machine where
/// `sched_setaffinity` alone can take seconds; keeps a broken run from hanging.
const PATIENCE: Duration = Duration::from_secs(60);

fn allowed() -> Vec<usize> {
    cpu::allowed().expect("sched_getaffinity")
}

/// Waits for `ticket`, failing the test (instead of hanging) if it never ends.
fn finish(ticket: Ticket) -> Result<(), XcallError> {
    assert!(ticket.wait_timeout(PATIENCE).unwrap(), "cross-call still pending after {PATIENCE:?}");
    ticket.wait()
}

/// The names of this process's threads that are xcall service threads.
fn service_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim().to_owned())
        .filter(|comm| comm.starts_with("cpulocal-xc-"))
        .collect();
    names.sort();
    names
}

#[test]
fn unicast_runs_on_the_target_cpu() {
    common::check_forced_backend();
    for target in allowed() {
        let (tx, rx) = mpsc::channel();
        let ticket = xcall::unicast(target, move || {
            let name = thread::current().name().map(str::to_owned);
            tx.send((cpu::current(), name)).unwrap();
        })
        .unwrap();
        finish(ticket).unwrap();
        let (seen, name) = rx.try_recv().expect("ran before wait returned");
        if cpu::backend() != Backend::Fallback {
            assert_eq!(seen, target, "ran on the wrong CPU");
        }
        assert_eq!(name.as_deref(), Some(format!("cpulocal-xc-{target}").as_str()));
    }
}

#[test]
fn unicast_runs_on_the_target_cpu_under_each_backend() {
    if !common::is_child() {
        common::under_each_backend("unicast_runs_on_the_target_cpu");
    }
}

#[test]
fn broadcast_visits_each_allowed_cpu_once() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let ticket =
        xcall::broadcast(move |cpu| s.lock().unwrap().push((cpu, cpu::current()))).unwrap();
    finish(ticket).unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen.iter().map(|&(arg, _)| arg).collect::<Vec<_>>(), allowed());
    for (arg, current) in seen {
        assert_eq!(arg, current, "f({arg}) ran on CPU {current}");
    }
}

/// Calls to one CPU run in the order made, even while the first one blocks.
#[test]
fn unicasts_to_one_cpu_run_in_submission_order() {
    let cpus = allowed();
    let target = *cpus.last().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let n = common::scaled(2000);
    let (open, gate) = mpsc::channel::<()>();
    let o = Arc::clone(&order);
    let mut tickets = vec![xcall::unicast(target, move || {
        gate.recv_timeout(PATIENCE).unwrap();
        o.lock().unwrap().push(0);
    })
    .unwrap()];
    for i in 1..n {
        let order = Arc::clone(&order);
        // Broadcasts in between share the queue and keep their place too.
        if i % 100 == 50 {
            let order = Arc::clone(&order);
            tickets.push(
                xcall::broadcast(move |cpu| {
                    if cpu == target {
                        order.lock().unwrap().push(usize::MAX);
                    }
                })
                .unwrap(),
            );
        }
        tickets.push(xcall::unicast(target, move || order.lock().unwrap().push(i)).unwrap());
    }
    open.send(()).unwrap();
    for t in tickets {
        finish(t).unwrap();
    }
    let want: Vec<usize> =
        (0..n).flat_map(|i| if i % 100 == 50 { vec![usize::MAX, i] } else { vec![i] }).collect();
    assert_eq!(*order.lock().unwrap(), want);
}

#[test]
fn a_panic_is_reported_and_the_service_thread_survives() {
    let cpus = allowed();
    for &cpu in &cpus {
        let ticket = xcall::unicast(cpu, || panic!("deliberate panic in a cross-call")).unwrap();
        assert_eq!(finish(ticket), Err(XcallError::Panicked { cpu }));
        let (tx, rx) = mpsc::channel();
        finish(xcall::unicast(cpu, move || tx.send(cpu::current()).unwrap()).unwrap()).unwrap();
        assert_eq!(rx.try_recv().unwrap(), cpu);
    }
    // A broadcast reports the lowest CPU that panicked, and still runs
    // everywhere else.
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    let last = *cpus.last().unwrap();
    let ticket = xcall::broadcast(move |cpu| {
        r.fetch_add(1, Ordering::Relaxed);
        assert!(cpu < last, "deliberate panic on the last CPU");
    })
    .unwrap();
    assert_eq!(finish(ticket), Err(XcallError::Panicked { cpu: last }));
    assert_eq!(ran.load(Ordering::Relaxed), cpus.len());
    finish(xcall::broadcast(|_| ()).unwrap()).unwrap();
}

#[test]
fn cpus_that_do_not_exist_fail_at_once() {
    let count = cpu::count();
    let start = Instant::now();
    for bad in [count, count + 1, usize::MAX] {
        assert_eq!(
            xcall::unicast(bad, || unreachable!()).unwrap_err(),
            XcallError::NoSuchCpu { cpu: bad, count }
        );
    }
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
}

/// In a child whose affinity is one CPU, the others are refused (quickly,
/// with no service thread left behind) and broadcast visits only that CPU.
#[test]
fn cpus_outside_the_affinity_mask_are_refused() {
    if !common::is_child() {
        let cpus = allowed();
        if cpus.len() < 2 {
            eprintln!("skipped: needs two allowed CPUs");
            return;
        }
        // The child inherits the spawning thread's mask.
        let me = thread::spawn(move || {
            cpu::set_affinity(&cpus[..1]).unwrap();
            common::in_child("cpus_outside_the_affinity_mask_are_refused", &[]);
        });
        return me.join().unwrap();
    }
    let only = allowed();
    assert_eq!(only.len(), 1, "the child should be restricted to one CPU");
    let start = Instant::now();
    for cpu in (0..cpu::count()).filter(|c| !only.contains(c)) {
        for _ in 0..2 {
            assert_eq!(
                xcall::unicast(cpu, || unreachable!()).unwrap_err(),
                XcallError::CpuNotAllowed { cpu }
            );
        }
    }
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert_eq!(service_threads(), Vec::<String>::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    finish(xcall::broadcast(move |cpu| s.lock().unwrap().push(cpu)).unwrap()).unwrap();
    assert_eq!(*seen.lock().unwrap(), only);
}

/// One service thread per CPU, started by the first call aimed at it.
#[test]
fn service_threads_start_lazily_one_per_cpu() {
    if !common::is_child() {
        return common::in_child("service_threads_start_lazily_one_per_cpu", &[]);
    }
    let cpus = allowed();
    assert_eq!(service_threads(), Vec::<String>::new());
    // The first call blocks, so the later ones are all queued at once.
    let (open, gate) = mpsc::channel::<()>();
    let mut tickets =
        vec![xcall::unicast(cpus[0], move || gate.recv_timeout(PATIENCE).unwrap()).unwrap()];
    for _ in 0..20 {
        tickets.push(xcall::unicast(cpus[0], || ()).unwrap());
    }
    assert_eq!(service_threads(), [format!("cpulocal-xc-{}", cpus[0])]);
    open.send(()).unwrap();
    for t in tickets {
        finish(t).unwrap();
    }
    for _ in 0..20 {
        finish(xcall::broadcast(|_| ()).unwrap()).unwrap();
    }
    let want: Vec<String> = cpus.iter().map(|c| format!("cpulocal-xc-{c}")).collect();
    assert_eq!(service_threads(), want);
}

#[test]
fn many_threads_submit_and_wait_at_once() {
    let cpus = allowed();
    let threads = 8;
    let rounds = common::scaled(100);
    let total = Arc::new(AtomicUsize::new(0));
    thread::scope(|s| {
        for t in 0..threads {
            let (cpus, total) = (&cpus, &total);
            s.spawn(move || {
                let mine = Arc::new(AtomicUsize::new(0));
                for i in 0..rounds {
                    let (m, tot) = (Arc::clone(&mine), Arc::clone(total));
                    let uni = xcall::unicast(cpus[(t + i) % cpus.len()], move || {
                        m.fetch_add(1, Ordering::Relaxed);
                        tot.fetch_add(1, Ordering::Relaxed);
                    })
                    .unwrap();
                    let (m, tot) = (Arc::clone(&mine), Arc::clone(total));
                    let all = xcall::broadcast(move |_| {
                        m.fetch_add(1, Ordering::Relaxed);
                        tot.fetch_add(1, Ordering::Relaxed);
                    })
                    .unwrap();
                    all.wait().unwrap();
                    uni.wait().unwrap();
                    // Every call this thread made has run by now.
                    assert_eq!(mine.load(Ordering::Relaxed), (i + 1) * (1 + cpus.len()));
                }
            });
        }
    });
    assert_eq!(total.load(Ordering::Relaxed), threads * rounds * (1 + cpus.len()));
}

/// Per-CPU gates that hold a broadcast's functions until opened.
struct Gates {
    open: Mutex<HashSet<usize>>,
    changed: Condvar,
}

impl Gates {
    fn pass(&self, cpu: usize) {
        let open = self.open.lock().unwrap();
        let (_open, timeout) =
            self.changed.wait_timeout_while(open, PATIENCE, |o| !o.contains(&cpu)).unwrap();
        assert!(!timeout.timed_out(), "gate {cpu} never opened");
    }

    fn open(&self, cpu: usize) {
        self.open.lock().unwrap().insert(cpu);
        self.changed.notify_all();
    }
}

/// A broadcast's ticket is done only once every CPU has run the function,
/// whoever looks at it.
#[test]
fn a_broadcast_ticket_waits_for_every_cpu() {
    let cpus = allowed();
    let gates = Arc::new(Gates { open: Mutex::new(HashSet::new()), changed: Condvar::new() });
    let g = Arc::clone(&gates);
    let ticket = xcall::broadcast(move |cpu| g.pass(cpu)).unwrap();
    let pending = format!("{ticket:?}");
    assert!(pending.starts_with("Ticket {"), "{pending}");
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| assert!(ticket.wait_timeout(PATIENCE).unwrap()));
        }
        for &cpu in &cpus {
            thread::sleep(Duration::from_millis(5));
            assert!(!ticket.is_done(), "done before CPU {cpu} ran");
            assert!(!ticket.wait_timeout(Duration::from_millis(1)).unwrap());
            gates.open(cpu);
        }
    });
    assert!(ticket.is_done());
    ticket.wait().unwrap();
}

#[test]
fn a_dropped_ticket_still_runs() {
    let cpu = allowed()[0];
    let (tx, rx) = mpsc::channel();
    drop(xcall::unicast(cpu, move || tx.send(()).unwrap()).unwrap());
    rx.recv_timeout(PATIENCE).expect("dropped call never ran");
}

#[test]
fn waiting_for_its_own_cpu_inside_a_call_is_an_error() {
    let cpus = allowed();
    let (tx, rx) = mpsc::channel();
    let (here, other) = (cpus[0], *cpus.last().unwrap());
    let ticket = xcall::unicast(here, move || {
        let own = xcall::unicast(here, || ()).unwrap().wait();
        let all = xcall::broadcast(|_| ()).unwrap().wait();
        let elsewhere = (other != here).then(|| xcall::unicast(other, || ()).unwrap().wait());
        tx.send((own, all, elsewhere)).unwrap();
    })
    .unwrap();
    finish(ticket).unwrap();
    let (own, all, elsewhere) = rx.try_recv().unwrap();
    assert_eq!(own, Err(XcallError::WouldDeadlock { cpu: here }));
    assert_eq!(all, Err(XcallError::WouldDeadlock { cpu: here }));
    assert_eq!(elsewhere.unwrap_or(Ok(())), Ok(()));
}

/// `wait_timeout` makes the same check as `wait`, at once, rather than
/// sleeping out its timeout (or for ever) on a call that cannot run.
#[test]
fn waiting_with_a_timeout_for_its_own_cpu_inside_a_call_is_an_error() {
    let cpus = allowed();
    let (tx, rx) = mpsc::channel();
    let (here, other) = (cpus[0], *cpus.last().unwrap());
    let ticket = xcall::unicast(here, move || {
        let own = xcall::unicast(here, || ()).unwrap().wait_timeout(Duration::MAX);
        let all = xcall::broadcast(|_| ()).unwrap().wait_timeout(Duration::MAX);
        let elsewhere = (other != here)
            .then(|| xcall::unicast(other, || ()).unwrap().wait_timeout(Duration::MAX));
        tx.send((own, all, elsewhere)).unwrap();
    })
    .unwrap();
    finish(ticket).unwrap();
    let (own, all, elsewhere) = rx.try_recv().unwrap();
    assert_eq!(own, Err(XcallError::WouldDeadlock { cpu: here }));
    assert_eq!(all, Err(XcallError::WouldDeadlock { cpu: here }));
    assert_eq!(elsewhere.unwrap_or(Ok(true)), Ok(true));
}

#[test]
fn public_types_are_thread_safe_errors_and_debug() {
    fn send_sync<T: Send + Sync + std::fmt::Debug>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync::<Ticket>();
    send_sync::<XcallError>();
    error::<XcallError>();
    let errors = [
        XcallError::NoSuchCpu { cpu: 9, count: 2 },
        XcallError::CpuNotAllowed { cpu: 1 },
        XcallError::Unsupported,
        XcallError::System("no threads".into()),
        XcallError::Panicked { cpu: 0 },
        XcallError::WouldDeadlock { cpu: 3 },
    ];
    for e in errors {
        assert!(!e.to_string().is_empty());
    }
}

/// `call` brings back the function's value from the CPU it ran on, and
/// its failures as `unicast` and `wait` report them.
#[test]
fn call_returns_the_value_from_the_cpu() {
    for cpu in allowed() {
        assert_eq!(xcall::call(cpu, cpu::current).unwrap(), cpu);
        let v = xcall::call(cpu, move || vec![cpu; 3]).unwrap();
        assert_eq!(v, vec![cpu; 3]);
    }
    let cpu = allowed()[0];
    assert_eq!(
        xcall::call(cpu, || -> u32 { panic!("on purpose") }),
        Err(XcallError::Panicked { cpu })
    );
    let count = cpu::count();
    assert_eq!(xcall::call(count, || 1), Err(XcallError::NoSuchCpu { cpu: count, count }));
    // From inside a call to that same CPU: refused, not a hang.
    let nested = xcall::call(cpu, move || xcall::call(cpu, || 1)).unwrap();
    assert_eq!(nested, Err(XcallError::WouldDeadlock { cpu }));
}
