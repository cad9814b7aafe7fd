//! Cross-calls: run a function on a chosen CPU, NetBSD's xcall(9) in user
//! space.
//!
//! [`unicast`] runs a function on one CPU, [`broadcast`] on every CPU the
//! process may run on; both hand back a [`Ticket`] whose [`wait`](Ticket::wait)
//! returns once the function has run (and says if it panicked).
//!
//! User space cannot interrupt another CPU, so each CPU id has a *service
//! thread* pinned to it (named `cpulocal-xc-<cpu>`), started by the first call
//! aimed at that CPU and kept for the life of the process. It runs the
//! functions sent to its CPU one at a time, in the order they were sent. While
//! a function runs, [`cpu::current()`](crate::cpu::current) is the target CPU.
//!
//! ```
//! use cpulocal::{cpu, xcall};
//!
//! # fn main() -> Result<(), xcall::XcallError> {
//! let target = *cpu::allowed().unwrap().last().unwrap();
//! xcall::unicast(target, move || assert_eq!(cpu::current(), target))?.wait()?;
//! # Ok(())
//! # }
//! ```
//!
//! # The caller's stack is out of reach
//!
//! The function is owned (`Send + 'static`): it can not borrow the caller's
//! stack. In the NetBSD review this library started from, `percpu_cpu_enlarge`
//! passed `&pcc`, a local, to `xc_unicast`; the caller's stack may be swapped
//! out before the cross-call runs. The same code does not compile here:
//!
//! ```compile_fail,E0373
//! let mut pcc = vec![0u8; 64];
//! cpulocal::xcall::unicast(0, || pcc.resize(128, 0)).unwrap().wait().unwrap();
//! assert_eq!(pcc.len(), 128);
//! ```
//!
//! Share the state instead, and it does:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//!
//! let cpu = cpulocal::cpu::allowed().unwrap()[0];
//! let pcc = Arc::new(Mutex::new(vec![0u8; 64]));
//! let theirs = Arc::clone(&pcc);
//! cpulocal::xcall::unicast(cpu, move || theirs.lock().unwrap().resize(128, 0))
//!     .unwrap()
//!     .wait()
//!     .unwrap();
//! assert_eq!(pcc.lock().unwrap().len(), 128);
//! ```
//!
//! # Limits
//!
//! - A service thread is an ordinary thread: the function runs when the
//!   scheduler lets it, not at once as an interrupt would. A long function
//!   delays every later call to its CPU.
//! - Do not wait inside a function for calls to other CPUs that may
//!   themselves wait for yours: two CPUs waiting on each other deadlock.
//!   Waiting for a call to the function's own CPU, which could never run,
//!   returns [`XcallError::WouldDeadlock`] instead.
//! - Only CPUs in the process's affinity mask ([`cpu::allowed`]) can be
//!   reached, so that a program started on some CPUs (`taskset`, a
//!   scheduler's placement) does not run code elsewhere through its
//!   library. That mask is the main thread's: a program that pins its main
//!   thread to one CPU narrows what cross-calls reach to that CPU; pin
//!   another thread instead. If a CPU leaves the mask after its service
//!   thread started (taken offline, removed from the cpuset), later calls
//!   to it are not run and their tickets say [`XcallError::CpuNotAllowed`];
//!   the kernel may even move the thread while a function is running.
//! - Service threads do not survive `fork`: a child that calls a CPU starts
//!   that CPU's thread anew (the parent's are forgotten), so cross-calls
//!   work there too; calls the parent had queued do not run in the child.
//! - Pending functions do not run if the process exits first.
//! - Platforms without thread affinity (the portable fallback, Miri) return
//!   [`XcallError::Unsupported`].

use std::cell::Cell;
use std::error::Error;
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, SendError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::{cpu, sys};

/// Why a cross-call could not be made, or did not complete.
///
/// ```
/// use cpulocal::xcall::{self, XcallError};
///
/// let count = cpulocal::cpu::count();
/// let err = xcall::unicast(count, || ()).unwrap_err();
/// assert_eq!(err, XcallError::NoSuchCpu { cpu: count, count });
/// println!("{err}");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum XcallError {
    /// The CPU id is not below [`cpu::count()`](crate::cpu::count).
    NoSuchCpu {
        /// The CPU asked for.
        cpu: usize,
        /// [`cpu::count()`](crate::cpu::count).
        count: usize,
    },
    /// The process may not run on this CPU: it is not in the affinity mask
    /// ([`cpu::allowed`], the main thread's), or it is offline or outside
    /// the cpuset. From a
    /// [`Ticket`]: the CPU became unreachable and the function was not run.
    CpuNotAllowed {
        /// The CPU asked for.
        cpu: usize,
    },
    /// This platform cannot pin a thread to a CPU.
    Unsupported,
    /// The system failed otherwise (reading the affinity mask, starting a
    /// service thread).
    System(String),
    /// From a [`Ticket`]: the function panicked on this CPU (for a
    /// [`broadcast`], the lowest such CPU). The service thread carries on.
    Panicked {
        /// The CPU the function panicked on.
        cpu: usize,
    },
    /// From [`Ticket::wait`] inside a cross-call function: the ticket waits
    /// for a call to this CPU, which cannot run until the waiting function
    /// returns. The call stays queued and runs later.
    WouldDeadlock {
        /// The CPU whose service thread tried to wait for itself.
        cpu: usize,
    },
}

impl XcallError {
    fn from_io(e: io::Error, cpu: Option<usize>) -> XcallError {
        match (e.kind(), cpu) {
            (io::ErrorKind::Unsupported, _) => XcallError::Unsupported,
            // EINVAL from sched_setaffinity: offline, or outside the cpuset.
            (io::ErrorKind::InvalidInput, Some(cpu)) => XcallError::CpuNotAllowed { cpu },
            _ => XcallError::System(e.to_string()),
        }
    }

    /// The CPU a ticket's failure happened on (for picking the lowest).
    fn cpu(&self) -> usize {
        match *self {
            XcallError::NoSuchCpu { cpu, .. }
            | XcallError::CpuNotAllowed { cpu }
            | XcallError::Panicked { cpu }
            | XcallError::WouldDeadlock { cpu } => cpu,
            XcallError::Unsupported | XcallError::System(_) => usize::MAX,
        }
    }
}

impl fmt::Display for XcallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XcallError::NoSuchCpu { cpu, count } => {
                write!(f, "CPU {cpu} does not exist (cpu::count() is {count})")
            }
            XcallError::CpuNotAllowed { cpu } => {
                write!(
                    f,
                    "CPU {cpu} cannot be used: outside the process's affinity mask \
                     (its main thread's), offline, or outside the cpuset"
                )
            }
            XcallError::Unsupported => {
                f.write_str("cross-calls need thread affinity, which this platform lacks")
            }
            XcallError::System(msg) => write!(f, "cross-call failed: {msg}"),
            XcallError::Panicked { cpu } => {
                write!(f, "the cross-call function panicked on CPU {cpu}")
            }
            XcallError::WouldDeadlock { cpu } => write!(
                f,
                "waiting inside CPU {cpu}'s service thread for a call to CPU {cpu} would deadlock"
            ),
        }
    }
}

impl Error for XcallError {}

/// Runs `f` on `cpu`, on that CPU's service thread (started now if this is
/// the first call to it).
///
/// Fails at once, running nothing, if `cpu` is not below
/// [`cpu::count()`](crate::cpu::count), or if its service thread is not
/// running yet and cannot be started: `cpu` is not in [`cpu::allowed()`], or
/// the kernel refuses to pin a thread to it. (Once the thread runs, a CPU
/// that leaves the allowed set is reported by the ticket instead.) Calls to
/// one CPU run in the order they were made.
///
/// ```
/// use std::sync::mpsc;
/// use cpulocal::{cpu, xcall};
///
/// let target = cpu::allowed().unwrap()[0];
/// let (tx, rx) = mpsc::channel();
/// let ticket = xcall::unicast(target, move || tx.send(cpu::current()).unwrap()).unwrap();
/// ticket.wait().unwrap();
/// assert_eq!(rx.recv().unwrap(), target);
///
/// assert!(xcall::unicast(usize::MAX, || ()).is_err());
/// ```
///
/// # Errors
/// Nothing runs, and:
/// - [`XcallError::NoSuchCpu`] if `cpu >= cpu::count()`;
/// - [`XcallError::CpuNotAllowed`] if the service thread must be started
///   and the process may not run on `cpu`;
/// - [`XcallError::Unsupported`] where threads cannot be pinned;
/// - [`XcallError::System`] if the thread cannot be started or pinned.
///
/// What happens to `f` afterwards (it panicked; its CPU became unreachable)
/// is reported by [`Ticket::wait`].
pub fn unicast<F>(cpu: usize, f: F) -> Result<Ticket, XcallError>
where
    F: FnOnce() + Send + 'static,
{
    let tx = service(cpu)?;
    let done = Arc::new(Completion::new(vec![cpu]));
    submit(cpu, &tx, Job { cpu, f: Some(Box::new(f)), done: Arc::clone(&done) });
    Ok(Ticket { done })
}

/// Runs `f` on `cpu` and returns what it returned: [`unicast`], then
/// [`Ticket::wait`], with the value brought back.
///
/// ```
/// use cpulocal::{cpu, xcall};
///
/// let target = cpu::allowed().unwrap()[0];
/// assert_eq!(xcall::call(target, cpu::current).unwrap(), target);
/// assert_eq!(xcall::call(target, || 6 * 7).unwrap(), 42);
/// ```
///
/// # Errors
/// As [`unicast`] (nothing ran), or as [`Ticket::wait`] (`f` panicked, or
/// its CPU became unreachable before it ran; waiting from `cpu`'s own
/// service thread is [`XcallError::WouldDeadlock`]).
pub fn call<F, R>(cpu: usize, f: F) -> Result<R, XcallError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let ticket = unicast(cpu, move || {
        // The receiver lives until the ticket is done: this cannot fail.
        let _ = tx.send(f());
    })?;
    ticket.wait()?;
    // A ticket that finished without error ran `f`, which sent its value
    // before the ticket was marked done.
    rx.recv().map_err(|_| XcallError::System(format!("the call on CPU {cpu} returned nothing")))
}

/// Runs `f(cpu)` on every CPU in [`cpu::allowed()`], each on that CPU's
/// service thread. The one [`Ticket`] completes when all of them have run.
///
/// The service threads are all started and pinned before anything is sent:
/// if one CPU cannot be reached, this fails and `f` runs nowhere. The calls
/// run in parallel, one per CPU.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use cpulocal::{cpu, xcall};
///
/// let visits = Arc::new(AtomicUsize::new(0));
/// let v = Arc::clone(&visits);
/// xcall::broadcast(move |_cpu| {
///     v.fetch_add(1, Ordering::Relaxed);
/// })
/// .unwrap()
/// .wait()
/// .unwrap();
/// assert_eq!(visits.load(Ordering::Relaxed), cpu::allowed().unwrap().len());
/// ```
///
/// # Errors
/// As [`unicast`], for the first allowed CPU that cannot be reached, or
/// [`XcallError::System`] if the affinity mask cannot be read; `f` runs
/// nowhere.
pub fn broadcast<F>(f: F) -> Result<Ticket, XcallError>
where
    F: Fn(usize) + Send + Sync + 'static,
{
    let cpus = cpu::allowed().map_err(|e| XcallError::from_io(e, None))?;
    let services = cpus.iter().map(|&cpu| service(cpu)).collect::<Result<Vec<_>, _>>()?;
    let done = Arc::new(Completion::new(cpus.clone()));
    let f = Arc::new(f);
    for (cpu, tx) in cpus.into_iter().zip(services) {
        let f = Arc::clone(&f);
        submit(cpu, &tx, Job { cpu, f: Some(Box::new(move || f(cpu))), done: Arc::clone(&done) });
    }
    Ok(Ticket { done })
}

/// A cross-call in flight: [`wait`](Ticket::wait) for it to finish.
///
/// Dropping a ticket does not cancel the call; it still runs.
///
/// ```
/// use std::time::Duration;
///
/// let ticket = cpulocal::xcall::broadcast(|_| ()).unwrap();
/// assert!(ticket.wait_timeout(Duration::from_secs(60)).unwrap());
/// assert!(ticket.is_done());
/// ticket.wait().unwrap();
/// ```
#[must_use = "the call runs anyway; wait() to know when it has run and whether it panicked"]
pub struct Ticket {
    done: Arc<Completion>,
}

impl Ticket {
    /// Blocks until the function has run on every CPU of the call, then
    /// reports how it went.
    ///
    /// # Errors
    ///
    /// - [`XcallError::Panicked`]: the function panicked (on the lowest such
    ///   CPU, for a broadcast).
    /// - [`XcallError::CpuNotAllowed`]: a CPU became unreachable before the
    ///   function could run there; it was not run there.
    /// - [`XcallError::WouldDeadlock`], without waiting: called from inside a
    ///   cross-call function, for a call to that function's own CPU.
    ///
    /// ```
    /// use cpulocal::xcall::{self, XcallError};
    ///
    /// let cpu = cpulocal::cpu::allowed().unwrap()[0];
    /// let ticket = xcall::unicast(cpu, || panic!("this one fails")).unwrap();
    /// assert_eq!(ticket.wait(), Err(XcallError::Panicked { cpu }));
    /// ```
    pub fn wait(self) -> Result<(), XcallError> {
        let mut state = lock(&self.done.state);
        if let Some(cpu) = SERVICE_CPU.with(Cell::get) {
            if state.pending.contains(&cpu) {
                return Err(XcallError::WouldDeadlock { cpu });
            }
        }
        while !state.pending.is_empty() {
            state = self.done.all_done.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.failure.take().map_or(Ok(()), Err)
    }

    /// Blocks until the function has run on every CPU of the call, or until
    /// `timeout` has passed; returns whether it has run. Then
    /// [`wait`](Ticket::wait) gives the outcome without blocking.
    ///
    /// # Errors
    ///
    /// [`XcallError::WouldDeadlock`], without waiting: called from inside a
    /// cross-call function, for a call to that function's own CPU (which
    /// cannot run before the waiting function returns).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let cpu = cpulocal::cpu::allowed().unwrap()[0];
    /// let ticket = cpulocal::xcall::unicast(cpu, || ()).unwrap();
    /// while !ticket.wait_timeout(Duration::from_millis(1)).unwrap() {}
    /// ticket.wait().unwrap();
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, XcallError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = lock(&self.done.state);
        if let Some(cpu) = SERVICE_CPU.with(Cell::get) {
            if state.pending.contains(&cpu) {
                return Err(XcallError::WouldDeadlock { cpu });
            }
        }
        while !state.pending.is_empty() {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if left.is_zero() {
                return Ok(false);
            }
            state = self
                .done
                .all_done
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(true)
    }

    /// Whether the function has run on every CPU of the call (without
    /// blocking).
    ///
    /// ```
    /// let cpu = cpulocal::cpu::allowed().unwrap()[0];
    /// let ticket = cpulocal::xcall::unicast(cpu, || ()).unwrap();
    /// while !ticket.is_done() {
    ///     std::thread::yield_now();
    /// }
    /// ```
    pub fn is_done(&self) -> bool {
        lock(&self.done.state).pending.is_empty()
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.done.state);
        f.debug_struct("Ticket")
            .field("pending", &state.pending)
            .field("failure", &state.failure)
            .finish()
    }
}

/// What a [`Ticket`] waits on: the CPUs still to run the function.
struct Completion {
    state: Mutex<State>,
    all_done: Condvar,
}

struct State {
    /// CPUs whose service thread has not yet finished the function.
    pending: Vec<usize>,
    /// The failure on the lowest CPU so far.
    failure: Option<XcallError>,
}

impl Completion {
    fn new(cpus: Vec<usize>) -> Completion {
        Completion {
            state: Mutex::new(State { pending: cpus, failure: None }),
            all_done: Condvar::new(),
        }
    }

    fn finish(&self, cpu: usize, outcome: Result<(), XcallError>) {
        let mut state = lock(&self.state);
        if let Some(i) = state.pending.iter().position(|&c| c == cpu) {
            state.pending.swap_remove(i);
        }
        if let Err(e) = outcome {
            if state.failure.as_ref().is_none_or(|old| e.cpu() < old.cpu()) {
                state.failure = Some(e);
            }
        }
        if state.pending.is_empty() {
            self.all_done.notify_all();
        }
    }
}

/// One function for one CPU's service thread.
struct Job {
    cpu: usize,
    /// `None` once run.
    f: Option<Box<dyn FnOnce() + Send>>,
    done: Arc<Completion>,
}

impl Job {
    /// Runs the function if the thread is on its CPU, and reports to the
    /// ticket.
    fn run(mut self) {
        let cpu = self.cpu;
        let f = self.f.take();
        let outcome = if on_cpu(cpu) {
            panic::catch_unwind(AssertUnwindSafe(move || f.map(|f| f()))).map_err(|payload| {
                drop_payload(payload);
                XcallError::Panicked { cpu }
            })
        } else {
            // Dropping it runs the user's destructors: contain their panics.
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || drop(f))) {
                drop_payload(payload);
            }
            Err(XcallError::CpuNotAllowed { cpu })
        };
        self.done.finish(cpu, outcome.map(drop));
    }
}

impl Drop for Job {
    /// A job dropped unrun (its service thread is gone) still completes its
    /// ticket, so that no `wait` hangs.
    fn drop(&mut self) {
        if self.f.take().is_some() {
            let cpu = self.cpu;
            let msg = format!("the service thread of CPU {cpu} stopped before running the call");
            self.done.finish(cpu, Err(XcallError::System(msg)));
        }
    }
}

thread_local! {
    /// The CPU whose service thread this is, if it is one.
    static SERVICE_CPU: Cell<Option<usize>> = const { Cell::new(None) };
}

/// A CPU id's service thread, once started: the sending end of its queue,
/// and the fork generation (`sys::fork_generation`) of the process that
/// started it. A forked child has none of its parent's threads, so a
/// service from an older generation is started again.
type Service = Mutex<Option<(u64, Sender<Job>)>>;

/// Every CPU id's [`Service`].
fn services() -> &'static [Service] {
    static SERVICES: OnceLock<Box<[Service]>> = OnceLock::new();
    SERVICES.get_or_init(|| (0..cpu::count()).map(|_| Mutex::new(None)).collect())
}

/// The queue of `cpu`'s service thread, starting the thread if need be.
fn service(cpu: usize) -> Result<Sender<Job>, XcallError> {
    let count = cpu::count();
    let slot = services().get(cpu).ok_or(XcallError::NoSuchCpu { cpu, count })?;
    let generation = sys::fork_generation();
    let mut slot = lock(slot);
    match slot.take() {
        Some((g, tx)) if g == generation => {
            *slot = Some((g, tx.clone()));
            return Ok(tx);
        }
        // The parent's thread, which would receive from this queue, does
        // not exist here: forget the queue without touching it (its state
        // is whatever the parent's threads left at the fork).
        Some((_, stale)) => std::mem::forget(stale),
        None => {}
    }
    let tx = start(cpu)?;
    *slot = Some((generation, tx.clone()));
    Ok(tx)
}

/// Starts `cpu`'s service thread and waits until it is pinned. On failure the
/// thread has exited and nothing is registered.
#[cold]
fn start(cpu: usize) -> Result<Sender<Job>, XcallError> {
    let allowed = cpu::allowed().map_err(|e| XcallError::from_io(e, None))?;
    if allowed.binary_search(&cpu).is_err() {
        return Err(XcallError::CpuNotAllowed { cpu });
    }
    let (tx, jobs) = mpsc::channel();
    let (pinned_tx, pinned) = mpsc::sync_channel(1);
    thread::Builder::new()
        .name(format!("cpulocal-xc-{cpu}"))
        .spawn(move || {
            let result = crate::cpu::set_affinity(&[cpu]);
            let ok = result.is_ok();
            let _ = pinned_tx.send(result);
            if ok {
                serve(cpu, jobs);
            }
        })
        .map_err(|e| XcallError::System(format!("cannot start CPU {cpu}'s service thread: {e}")))?;
    match pinned.recv() {
        Ok(Ok(())) => Ok(tx),
        Ok(Err(e)) => Err(XcallError::from_io(e, Some(cpu))),
        Err(_) => Err(XcallError::System(format!("CPU {cpu}'s service thread exited"))),
    }
}

/// The service thread's loop: run each job, in order, for the process's life.
fn serve(cpu: usize, jobs: Receiver<Job>) {
    SERVICE_CPU.with(|c| c.set(Some(cpu)));
    for job in jobs {
        job.run();
    }
}

/// Sends `job` to `cpu`'s service thread.
fn submit(cpu: usize, tx: &Sender<Job>, job: Job) {
    if let Err(SendError(job)) = tx.send(job) {
        // The thread is gone (it never returns, so this should not happen).
        // Forget it so the next call starts another; dropping the job
        // reports the failure to its ticket.
        *lock(&services()[cpu]) = None;
        drop(job);
    }
}

/// Whether the calling service thread is on `cpu`, re-pinning it if the
/// kernel moved it (after hot-unplug or a cpuset change).
fn on_cpu(cpu: usize) -> bool {
    sys::getcpu() == Some(cpu) || crate::cpu::set_affinity(&[cpu]).is_ok()
}

/// Drops a panic payload whose own destructor may panic.
fn drop_payload(payload: Box<dyn std::any::Any + Send>) {
    if let Err(again) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without thread affinity, every call says so at once.
    #[test]
    #[cfg(not(all(target_os = "linux", not(miri))))]
    fn unsupported_platforms_refuse_at_once() {
        let cpu = cpu::current();
        assert_eq!(unicast(cpu, || unreachable!()).unwrap_err(), XcallError::Unsupported);
        assert_eq!(broadcast(|_| unreachable!()).unwrap_err(), XcallError::Unsupported);
        assert!(services().iter().all(|s| lock(s).is_none()));
    }

    #[test]
    fn a_ticket_fails_with_its_lowest_cpu() {
        let done = Completion::new(vec![4, 1, 7]);
        done.finish(7, Err(XcallError::Panicked { cpu: 7 }));
        done.finish(1, Err(XcallError::CpuNotAllowed { cpu: 1 }));
        let ticket = Ticket { done: Arc::new(done) };
        assert!(!ticket.is_done());
        ticket.done.finish(4, Err(XcallError::Panicked { cpu: 4 }));
        assert!(ticket.is_done());
        assert_eq!(ticket.wait(), Err(XcallError::CpuNotAllowed { cpu: 1 }));
    }

    #[test]
    fn a_job_dropped_unrun_completes_its_ticket() {
        let ticket = Ticket { done: Arc::new(Completion::new(vec![0])) };
        drop(Job { cpu: 0, f: Some(Box::new(|| unreachable!())), done: Arc::clone(&ticket.done) });
        assert!(ticket.wait_timeout(Duration::from_secs(5)).unwrap(), "ticket never completed");
        assert!(matches!(ticket.wait(), Err(XcallError::System(_))));
    }
}
