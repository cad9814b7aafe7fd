//! Linux: rseq, `getcpu`, `membarrier`, `mmap`, affinity and futex.

pub(crate) mod affinity;
pub(crate) mod membarrier;
pub(crate) mod rseq;

use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};
use std::time::Duration;

/// log2 of the largest region of address space reserved for each CPU.
///
/// 1 GiB: far more than any realistic per-CPU working set. Untouched pages
/// cost no memory, but the reservation counts against `RLIMIT_AS` (and
/// against a small virtual address space, such as 39-bit arm64), so a
/// refused reservation is retried with regions half as large, down to
/// [`MIN_UNIT_SHIFT`].
#[cfg(target_pointer_width = "64")]
pub(crate) const MAX_UNIT_SHIFT: u32 = 30;
#[cfg(not(target_pointer_width = "64"))]
pub(crate) const MAX_UNIT_SHIFT: u32 = 22;

/// log2 of the smallest region per CPU a reservation tries (1 MiB).
pub(crate) const MIN_UNIT_SHIFT: u32 = 20;

/// The number of possible CPU ids, from `/sys/devices/system/cpu/possible`.
///
/// Every CPU id the kernel reports (rseq `cpu_id`, `getcpu`) is below it,
/// also for CPUs that come online later.
pub(crate) fn possible_cpus() -> Option<usize> {
    possible_from(&std::fs::read_to_string("/sys/devices/system/cpu/possible").ok()?)
}

/// The most CPU ids we believe a `possible` list that claims more: an
/// absurd list is treated as unreadable.
const MAX_POSSIBLE: usize = 1 << 16;

/// The possible-CPU count a `possible` list stands for, if it is sane.
fn possible_from(text: &str) -> Option<usize> {
    parse_cpu_list(text)?.checked_add(1).filter(|&n| n <= MAX_POSSIBLE)
}

/// The highest CPU id in a kernel CPU list such as `0-3,8,10-11`.
pub(crate) fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut max = None;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let last = part.rsplit('-').next()?;
        let n: usize = last.trim().parse().ok()?;
        max = Some(max.map_or(n, |m: usize| m.max(n)));
    }
    max
}

/// A best-effort CPU count for when the possible set cannot be read.
pub(crate) fn configured_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// The threads runnable on the whole system right now (running or queued)
/// and the CPUs online, from `/proc/loadavg` and `sysconf`. `None` if
/// either is unknown (no procfs, say). The CPU count is read once: glibc
/// reads it from sysfs, which doubled the cost of a call (from about 4 to
/// 9 us here), and a count gone stale by hotplug only skews the heuristic
/// that asks.
pub(crate) fn runnable_threads() -> Option<(usize, usize)> {
    static ONLINE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    static LOADAVG: Loadavg = Loadavg::new();
    let online = *ONLINE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        usize::try_from(n).ok().filter(|&n| n > 0)
    });
    let runnable = LOADAVG.runnable()?;
    Some((runnable, online?))
}

/// `/proc/loadavg`, kept open once read: opening, reading and closing it
/// took 8.7-8.9 us on the development VM (a C loop of 20,000), on a
/// writer's wait for readers, where checking and reading an open
/// descriptor (`fstat`, `pread`) takes 2.9 us.
///
/// The descriptor is the program's to close, too (a daemon may close every
/// descriptor it finds), and its number may then name another of the
/// program's files. So each use first checks that it still names the file
/// we opened (device and inode, from `fstat`), and `pread` moves no file
/// offset. A descriptor found closed or reused is forgotten, never closed
/// (it is not ours any more), and the file opened again.
struct Loadavg {
    /// The open descriptor, or -1.
    fd: AtomicI32,
    /// `st_dev` and `st_ino` of the file, set before `fd` is published.
    dev: AtomicU64,
    ino: AtomicU64,
}

impl Loadavg {
    const fn new() -> Self {
        Loadavg { fd: AtomicI32::new(-1), dev: AtomicU64::new(0), ino: AtomicU64::new(0) }
    }

    /// The runnable count, through the kept descriptor where it is still
    /// ours, else through a new one (kept if no other thread kept one
    /// first).
    fn runnable(&self) -> Option<usize> {
        let fd = self.fd.load(Acquire);
        if fd >= 0 {
            if identity(fd) == Some((self.dev.load(Relaxed), self.ino.load(Relaxed))) {
                if let Some(runnable) = runnable_at(fd) {
                    return Some(runnable);
                }
            }
            let _ = self.fd.compare_exchange(fd, -1, Relaxed, Relaxed);
        }
        // SAFETY: a NUL-terminated path and plain flags.
        let fd = unsafe { libc::open(c"/proc/loadavg".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let runnable = runnable_at(fd);
        let kept = match (runnable, identity(fd)) {
            (Some(_), Some((dev, ino))) => {
                // Every thread that gets here stores the same two values.
                self.dev.store(dev, Relaxed);
                self.ino.store(ino, Relaxed);
                self.fd.compare_exchange(-1, fd, Release, Relaxed).is_ok()
            }
            _ => false,
        };
        if !kept {
            // SAFETY: `fd` was opened above and is known to no one else.
            unsafe { libc::close(fd) };
        }
        runnable
    }
}

/// The device and inode of the file `fd` names, if it is open.
fn identity(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: fstat writes only the (plain-data) stat buffer; a closed
    // descriptor makes it fail.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some((st.st_dev, st.st_ino))
    }
}

/// The runnable count read from the start of `fd`'s file.
fn runnable_at(fd: i32) -> Option<usize> {
    let mut buf = [0u8; 128];
    // SAFETY: `buf` is writable for its length; pread reads at offset 0
    // without moving the descriptor's offset, and fails on a descriptor
    // that is closed or cannot seek.
    let len = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let len = usize::try_from(len).ok()?;
    runnable_from(std::str::from_utf8(&buf[..len]).ok()?)
}

/// The runnable count in a `/proc/loadavg` line: the fourth field is
/// `runnable/threads`.
fn runnable_from(loadavg: &str) -> Option<usize> {
    let field = loadavg.split_ascii_whitespace().nth(3)?;
    field.split_once('/')?.0.parse().ok()
}

/// The CPU the calling thread runs on, from `sched_getcpu` (vDSO or rseq).
#[inline]
pub(crate) fn getcpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Address space reserved without access and committed piece by piece.
///
/// Reserving costs no memory; committed pages are zero-filled on first touch
/// and cost memory only once touched. The mapping never moves, so addresses
/// handed out stay valid for as long as the reservation lives.
pub(crate) struct Reservation {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the reservation is plain memory; it hands out raw pointers only.
unsafe impl Send for Reservation {}
// SAFETY: `commit` is an mprotect on disjoint or already-writable pages; the
// kernel serializes it.
unsafe impl Sync for Reservation {}

impl Reservation {
    pub(crate) fn new(len: usize) -> io::Result<Reservation> {
        // SAFETY: an anonymous PROT_NONE mapping at an address of the
        // kernel's choosing touches no existing memory.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(base.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        // No transparent huge pages: with THP set to `always`, touching one
        // 8-byte counter would fault in 2 MiB in every CPU's region. A
        // kernel without THP refuses the advice; that costs nothing.
        // SAFETY: advice on our own fresh mapping; it changes no contents.
        unsafe { libc::madvise(base.as_ptr().cast(), len, libc::MADV_NOHUGEPAGE) };
        Ok(Reservation { base, len })
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Makes `[offset, offset + len)` readable and writable.
    pub(crate) fn commit(&self, offset: usize, len: usize) -> io::Result<()> {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: the range lies inside our own mapping (checked above);
        // widening access never invalidates memory already in use.
        let rc = unsafe {
            libc::mprotect(
                self.base.as_ptr().add(offset).cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Reservation {
    /// Gives the pages of `[offset, offset + len)` (page-aligned) back to the
    /// system: they stay readable and writable and read as zero again,
    /// costing memory only once touched again. Returns whether that
    /// happened; on failure the pages stay resident, contents and all.
    ///
    /// # Safety
    /// Nothing in the range is in use: its contents are discarded.
    pub(crate) unsafe fn release(&self, offset: usize, len: usize) -> bool {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: the range lies inside our own private anonymous mapping
        // (checked above), where MADV_DONTNEED makes pages read zero, and
        // the caller guarantees nobody uses its contents.
        unsafe {
            libc::madvise(self.base.as_ptr().add(offset).cast(), len, libc::MADV_DONTNEED) == 0
        }
    }
}

/// The page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|n| n.is_power_of_two()).unwrap_or(4096)
}

/// Bumped in the child of every `fork()`: service threads and other
/// per-process state from before the fork do not exist there.
static FORK_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn forked_child() {
    FORK_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A number that differs in a forked child from what it was in the parent
/// at the time of the fork (once this has been called before the fork).
pub(crate) fn fork_generation() -> u64 {
    static HOOKED: std::sync::Once = std::sync::Once::new();
    HOOKED.call_once(|| {
        // SAFETY: the child handler only touches an atomic, which is
        // async-signal-safe as a fork handler must be. If registration
        // fails (ENOMEM), forks go unnoticed, as they did before.
        unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
    });
    FORK_GENERATION.load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs `before` in the thread that calls `fork`, before the process is
/// copied, and `after` in that thread on both sides once it is: for locks
/// that a child must find unlocked (`pthread_atfork`). If registration
/// fails (ENOMEM), forks go unguarded, as they did before.
pub(crate) fn at_fork(before: extern "C" fn(), after: extern "C" fn()) {
    // SAFETY: plain functions; what they may do in a fork handler is their
    // callers' to keep to (take and release locks).
    unsafe { libc::pthread_atfork(Some(before), Some(after), Some(after)) };
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and nothing refers to it any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Sleeps while `word` holds `expected`, at most `timeout`. May wake spuriously.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts.as_ref().map_or(ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the whole call; the kernel
    // only reads it and the timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}

/// Wakes up to `n` threads sleeping in [`futex_wait`] on `word`.
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_cpu_list, possible_from, runnable_from, runnable_threads, Loadavg};
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n"), Some(0));
        assert_eq!(parse_cpu_list("0-1\n"), Some(1));
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(11));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list(&format!("0-{}", usize::MAX)), Some(usize::MAX));
    }

    #[test]
    fn an_absurd_possible_list_does_not_wrap() {
        assert_eq!(possible_from("0-1\n"), Some(2));
        assert_eq!(possible_from("0-65535"), Some(65536));
        // One more than the highest id must neither wrap nor be believed.
        assert_eq!(possible_from(&usize::MAX.to_string()), None);
        assert_eq!(possible_from("0-4294967295"), None);
        assert_eq!(possible_from(""), None);
    }

    #[test]
    fn loadavg_lines() {
        assert_eq!(runnable_from("0.52 0.58 0.59 3/467 12345\n"), Some(3));
        assert_eq!(runnable_from("0.00 0.01 0.05 12/90 1"), Some(12));
        assert_eq!(runnable_from("0.52 0.58 0.59"), None);
        assert_eq!(runnable_from("0.52 0.58 0.59 x/467 1"), None);
        assert_eq!(runnable_from(""), None);
    }

    /// The kept descriptor is used again while it names the file, and
    /// neither read nor closed once the program has put another file at its
    /// number (here one that reads as an absurd loadavg line).
    #[test]
    fn loadavg_descriptor_kept_then_let_go() {
        let loadavg = Loadavg::new();
        assert!(loadavg.runnable().is_some());
        let fd = loadavg.fd.load(Relaxed);
        assert!(fd >= 0, "kept open");
        assert!(loadavg.runnable().is_some());
        assert_eq!(loadavg.fd.load(Relaxed), fd, "used again");

        let path = std::env::temp_dir().join(format!("cpulocal-loadavg-{}", std::process::id()));
        std::fs::write(&path, "0.00 0.00 0.00 999999/999999 1\n").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        // The program reuses the number: dup2 replaces our file there at
        // once, so no other thread can have been given the number between.
        // SAFETY: both descriptors are open; `fd` is this test's to replace.
        assert_eq!(unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&file), fd) }, fd);
        let runnable = loadavg.runnable().expect("opened again");
        assert!(runnable < 999_999, "read the program's file: {runnable}");
        let again = loadavg.fd.load(Relaxed);
        assert!(again >= 0 && again != fd, "a new descriptor is kept");
        // SAFETY: `fd` now holds this test's file, which was not closed.
        assert_eq!(unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }, 0, "offset untouched");
        // SAFETY: both are this test's: the program's copy and the new one.
        unsafe {
            libc::close(fd);
            libc::close(again);
        }
    }

    #[test]
    fn this_thread_is_runnable() {
        let (runnable, online) = runnable_threads().expect("procfs and sysconf");
        assert!(runnable >= 1, "the caller itself runs");
        assert!(online >= 1);
    }
}
