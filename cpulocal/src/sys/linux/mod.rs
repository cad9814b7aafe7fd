//! Linux: rseq, `getcpu`, `membarrier`, `mmap`, affinity and futex.

pub(crate) mod affinity;
pub(crate) mod membarrier;
pub(crate) mod rseq;

use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// log2 of the bytes of address space reserved for each CPU's region.
///
/// 1 GiB: far more than any realistic per-CPU working set, and a shift the
/// rseq sequences can take as an immediate. Untouched pages cost nothing.
#[cfg(target_pointer_width = "64")]
pub(crate) const UNIT_SHIFT: u32 = 30;
#[cfg(not(target_pointer_width = "64"))]
pub(crate) const UNIT_SHIFT: u32 = 22;

/// The number of possible CPU ids, from `/sys/devices/system/cpu/possible`.
///
/// Every CPU id the kernel reports (rseq `cpu_id`, `getcpu`) is below it,
/// also for CPUs that come online later.
pub(crate) fn possible_cpus() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").ok()?;
    parse_cpu_list(&text).map(|max| max + 1)
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
        let base = NonNull::new(base.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
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
    use super::parse_cpu_list;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n"), Some(0));
        assert_eq!(parse_cpu_list("0-1\n"), Some(1));
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(11));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
