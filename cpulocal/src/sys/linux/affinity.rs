//! CPU affinity of threads: `sched_getaffinity` / `sched_setaffinity`.

use std::io;

/// A CPU mask large enough for `bits` CPUs (at least the kernel's 1024).
fn mask_words(bits: usize) -> usize {
    bits.max(1024).div_ceil(64)
}

/// The CPUs the thread `tid` (0: the calling thread) may run on, ascending.
pub(crate) fn allowed(tid: libc::pid_t, max_cpus: usize) -> io::Result<Vec<usize>> {
    let mut mask = vec![0u64; mask_words(max_cpus)];
    let bytes = mask.len() * 8;
    // SAFETY: the kernel writes at most `bytes` bytes into `mask`.
    let rc = unsafe { libc::sched_getaffinity(tid, bytes, mask.as_mut_ptr().cast()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cpus = Vec::new();
    for (i, word) in mask.iter().enumerate() {
        for bit in 0..64 {
            if word & (1 << bit) != 0 {
                cpus.push(i * 64 + bit);
            }
        }
    }
    Ok(cpus)
}

/// The CPUs the process (its main thread) may run on.
pub(crate) fn process_allowed(max_cpus: usize) -> io::Result<Vec<usize>> {
    // SAFETY: getpid has no preconditions.
    allowed(unsafe { libc::getpid() }, max_cpus)
}

/// Restricts the calling thread to `cpus`.
pub(crate) fn set_current(cpus: &[usize]) -> io::Result<()> {
    let top = cpus.iter().copied().max().unwrap_or(0) + 1;
    let mut mask = vec![0u64; mask_words(top)];
    for &cpu in cpus {
        mask[cpu / 64] |= 1 << (cpu % 64);
    }
    // SAFETY: the kernel reads `mask.len() * 8` bytes from `mask`.
    let rc = unsafe { libc::sched_setaffinity(0, mask.len() * 8, mask.as_ptr().cast()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
