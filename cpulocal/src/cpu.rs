//! CPU identity: which CPU this thread is on, and how many CPU ids exist.
//!
//! The answer comes from one of three backends, chosen once per process:
//!
//! - [`Backend::Rseq`] reads the `cpu_id` the kernel keeps in the thread's rseq
//!   area (a load from thread-local memory, about 1 ns). On x86_64 this
//!   backend also runs per-CPU updates as restartable sequences.
//! - [`Backend::Getcpu`] calls `sched_getcpu()`.
//! - [`Backend::Fallback`] has no CPU id from the system; each thread gets a
//!   stable stripe, handed out round-robin.
//!
//! The environment variable `CPULOCAL_BACKEND=rseq|getcpu|fallback`, read
//! once, forces a backend (if the forced one is unavailable, the next one
//! down the list is used). This is how the test suite exercises every path.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::sys;

/// Where [`current`] gets the CPU id from. See the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The kernel's rseq area (Linux 4.18+); per-CPU updates are restartable
    /// sequences where the architecture has them (x86_64).
    Rseq,
    /// `sched_getcpu()`; per-CPU updates are atomic read-modify-writes.
    Getcpu,
    /// A stable per-thread stripe; per-CPU updates are atomic.
    Fallback,
}

impl Backend {
    /// The name `CPULOCAL_BACKEND` accepts for this backend.
    ///
    /// ```
    /// use cpulocal::cpu::{self, Backend};
    /// assert_eq!(Backend::Getcpu.name(), "getcpu");
    /// println!("CPULOCAL_BACKEND={}", cpu::backend().name());
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Backend::Rseq => "rseq",
            Backend::Getcpu => "getcpu",
            Backend::Fallback => "fallback",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

struct Info {
    count: usize,
    backend: Backend,
    /// Whether every CPU id the kernel can report is below `count`: the
    /// possible CPUs are known and no override lowered the count.
    covers_every_id: bool,
}

/// [`count`], readable without the `OnceLock` check (0 until detected).
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn info() -> &'static Info {
    static INFO: OnceLock<Info> = OnceLock::new();
    INFO.get_or_init(detect)
}

fn detect() -> Info {
    let possible = sys::possible_cpus();
    let count = possible_override().or(possible).unwrap_or_else(sys::configured_cpus).max(1);
    // Any case: `RSEQ` and `Getcpu` name backends as well.
    let forced = std::env::var("CPULOCAL_BACKEND").ok().map(|v| v.trim().to_ascii_lowercase());
    let start = match forced.as_deref() {
        None | Some("") | Some("auto") | Some("rseq") => Backend::Rseq,
        Some("getcpu") => Backend::Getcpu,
        Some("fallback") => Backend::Fallback,
        Some(other) => {
            eprintln!(
                "cpulocal: ignoring CPULOCAL_BACKEND={other:?} (expected rseq, getcpu or fallback)"
            );
            Backend::Rseq
        }
    };
    // The restartable sequences check every id against the count (an id out
    // of range updates the spill slot atomically), but the backend is only
    // worth it where the count covers every CPU. Their code must stay mapped
    // while any thread may still point the kernel at it (`pin_code`).
    let rseq_ok = || possible.is_some() && sys::rseq::probe() && sys::rseq::pin_code();
    let getcpu_ok = || sys::getcpu().is_some_and(|cpu| cpu < count);
    let backend = match start {
        Backend::Rseq if rseq_ok() => Backend::Rseq,
        Backend::Rseq | Backend::Getcpu if getcpu_ok() => Backend::Getcpu,
        _ => Backend::Fallback,
    };
    sys::rseq::set_limit(count);
    COUNT.store(count, Ordering::Relaxed);
    let covers_every_id = possible.is_some_and(|p| count >= p);
    Info { count, backend, covers_every_id }
}

/// `CPULOCAL_POSSIBLE_CPUS=N`: pretend `N` CPU ids are possible, for tests
/// and benchmarks that simulate a larger (or smaller) machine. Not for
/// production use: a count below the real one puts CPUs the kernel reports
/// outside the per-CPU arrays, which every per-CPU operation must then
/// survive.
fn possible_override() -> Option<usize> {
    let var = std::env::var("CPULOCAL_POSSIBLE_CPUS").ok()?;
    match var.trim().parse::<usize>() {
        Ok(n) if (1..=1 << 16).contains(&n) => Some(n),
        _ => {
            eprintln!("cpulocal: ignoring CPULOCAL_POSSIBLE_CPUS={var:?} (expected 1 to 65536)");
            None
        }
    }
}

/// The backend this process uses. See the [module docs](self).
///
/// ```
/// let b = cpulocal::cpu::backend();
/// println!("CPU ids come from {b}");
/// ```
pub fn backend() -> Backend {
    info().backend
}

/// The number of CPU ids: one more than the highest *possible* CPU id, so
/// CPUs that come online later already have their slot. Every value
/// [`current`] returns is below it.
///
/// ```
/// assert!(cpulocal::cpu::current() < cpulocal::cpu::count());
/// ```
#[inline]
pub fn count() -> usize {
    // One load once the CPUs are known (`COUNT` holds `info().count` then).
    match COUNT.load(Ordering::Relaxed) {
        0 => info().count,
        count => count,
    }
}

/// The CPU this thread is running on now.
///
/// A hint: the thread may be moved to another CPU as soon as this returns.
/// Always below [`count`].
///
/// ```
/// let cpu = cpulocal::cpu::current();
/// assert!(cpu < cpulocal::cpu::count());
/// ```
#[inline]
pub fn current() -> usize {
    if let Some(area) = sys::rseq::current_area() {
        let cpu = sys::rseq::cpu_id(area) as usize;
        if cpu < COUNT.load(Ordering::Relaxed) {
            return cpu;
        }
    }
    current_slow()
}

#[inline(never)]
fn current_slow() -> usize {
    let info = info();
    if info.backend == Backend::Rseq {
        if let Some(area) = sys::rseq::register_current_thread() {
            let cpu = sys::rseq::cpu_id(area) as usize;
            if cpu < info.count {
                return cpu;
            }
        }
    }
    if info.backend != Backend::Fallback {
        if let Some(cpu) = sys::getcpu() {
            return cpu % info.count;
        }
    }
    stripe(info.count)
}

thread_local! {
    /// The one CPU [`set_affinity`] last pinned this thread to, or
    /// `usize::MAX`: where the system gives no CPU id, that is still known.
    static PINNED: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// A stable per-thread stripe, for when the system gives no CPU id: the
/// CPU the thread is pinned to if [`set_affinity`] pinned it to one.
fn stripe(count: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    let pinned = PINNED.try_with(Cell::get).unwrap_or(usize::MAX);
    if pinned < count {
        return pinned;
    }
    let s = STRIPE.try_with(Cell::get).unwrap_or(0);
    if s != usize::MAX {
        return s % count;
    }
    let s = NEXT.fetch_add(1, Ordering::Relaxed);
    let _ = STRIPE.try_with(|c| c.set(s));
    s % count
}

/// The CPUs this process may run on (its main thread's affinity mask),
/// ascending.
///
/// ```
/// let cpus = cpulocal::cpu::allowed().unwrap();
/// assert!(!cpus.is_empty() && cpus.iter().all(|&c| c < cpulocal::cpu::count()));
/// ```
///
/// # Errors
/// The system's error if it will not say (`sched_getaffinity` fails), and
/// [`io::ErrorKind::Unsupported`] on systems without CPU affinity.
pub fn allowed() -> io::Result<Vec<usize>> {
    sys::affinity::process_allowed(count())
}

/// Restricts the calling thread to the CPUs in `cpus` (`sched_setaffinity`).
///
/// Fails (changing nothing) if `cpus` is empty, names an id at or above
/// [`count`], or the system refuses.
///
/// ```
/// let cpus = cpulocal::cpu::allowed().unwrap();
/// cpulocal::cpu::set_affinity(&cpus[..1]).unwrap();
/// assert_eq!(cpulocal::cpu::current(), cpus[0]);
/// cpulocal::cpu::set_affinity(&cpus).unwrap();
/// assert!(cpulocal::cpu::set_affinity(&[]).is_err());
/// ```
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] for an empty set or an id at or above
/// [`count`]; [`io::ErrorKind::Unsupported`] on systems without CPU
/// affinity; otherwise the system's error (`sched_setaffinity` refused, for
/// example a CPU outside the process's cpuset).
pub fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty CPU set"));
    }
    if let Some(bad) = cpus.iter().find(|&&c| c >= count()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {bad} is not below cpu::count() = {}", count()),
        ));
    }
    sys::affinity::set_current(cpus)?;
    let one = if let [cpu] = cpus { *cpu } else { usize::MAX };
    let _ = PINNED.try_with(|p| p.set(one));
    Ok(())
}

/// Where a per-CPU update by the calling thread goes.
#[derive(Clone, Copy)]
pub(crate) enum Place {
    /// Run a restartable sequence: it picks the CPU's slot itself. Slots
    /// below [`count`] are then only ever updated this way; a CPU id the
    /// kernel reports at or beyond [`count`] makes the sequence update the
    /// [`spill_slot`] atomically instead.
    Rseq(NonNull<sys::rseq::Area>),
    /// Update this slot with an atomic read-modify-write.
    Slot(usize),
}

/// The slot past the CPUs: when the process runs restartable sequences, a
/// thread that cannot (its rseq area is gone, in thread-exit destructors)
/// updates this slot atomically, never a CPU's slot, since a plain `add`
/// racing a locked one loses an update.
pub(crate) fn spill_slot() -> usize {
    count()
}

/// Slots every per-CPU object has: one per CPU id, plus [`spill_slot`].
#[inline]
pub(crate) fn slots() -> usize {
    count() + 1
}

/// Where the calling thread's per-CPU update goes. See [`Place`].
#[inline]
pub(crate) fn place() -> Place {
    if sys::rseq::HAS_PERCPU_OPS {
        if let Some(area) = sys::rseq::current_area() {
            return Place::Rseq(area);
        }
    }
    place_slow()
}

#[inline(never)]
fn place_slow() -> Place {
    if !sys::rseq::HAS_PERCPU_OPS || backend() != Backend::Rseq {
        return Place::Slot(current());
    }
    match sys::rseq::register_current_thread() {
        Some(area) => Place::Rseq(area),
        None => Place::Slot(spill_slot()),
    }
}

/// Arms or disarms the calling thread's inline per-CPU add
/// (`sys::rseq::percpu_add_fast`), after a slow path that found a per-CPU
/// object allocated (so the region size is fixed). It applies with the rseq
/// backend, when every id the kernel can report has a slot, and where the
/// regions have the size the inline sequence is compiled for and lie above
/// every CPU id (it compares ids with addresses).
///
/// Decided once per thread: later slow paths (every update under another
/// backend) return at once.
#[inline]
pub(crate) fn arm_fast_path() {
    if !sys::rseq::fast_path_decided() {
        decide_fast_path();
    }
}

#[cold]
fn decide_fast_path() {
    let info = info();
    let applies = sys::rseq::HAS_PERCPU_OPS
        && info.backend == Backend::Rseq
        && info.covers_every_id
        && sys::unit_shift() == sys::rseq::SEQ_SHIFT
        && crate::region::lowest_address() >= 1 << 32;
    sys::rseq::arm_fast_path(applies);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_is_below_count() {
        for _ in 0..1000 {
            assert!(current() < count());
        }
    }

    #[test]
    fn count_covers_online_cpus() {
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(count() >= online, "count {} < online {online}", count());
    }
}
