//! The limit for a per-CPU add: a hand-written restartable sequence.
//!
//! The same instruction sequence as `percpu_add` in the library's
//! `sys/linux/rseq.rs`, with nothing around it: the thread's rseq area is
//! glibc's (found from `__rseq_offset` and the `fs:0` thread pointer, once
//! per thread), the words are a plain array of padded `u64`s indexed by the
//! kernel's `cpu_id`. No registration of our own, no per-CPU allocator, no
//! backend choice: what the hardware allows.
//!
//! It needs x86_64 Linux and a glibc (2.35+) that registered rseq; elsewhere
//! [`RawRseq::new`] says why it cannot run and the row is skipped.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// A counter with one padded word per possible CPU, updated by a raw rseq
/// `add`.
#[derive(Debug)]
pub struct RawRseq {
    /// One word per possible CPU id, `1 << STRIDE_SHIFT` bytes apart.
    words: Box<[CachePadded<AtomicU64>]>,
    /// Where a thread glibc could not register adds, atomically.
    spill: CachePadded<AtomicU64>,
    /// glibc's `__rseq_offset`: the rseq area's place from the thread pointer.
    #[cfg_attr(not(all(target_os = "linux", target_arch = "x86_64")), allow(dead_code))]
    offset: isize,
}

/// log2 of the distance between two CPUs' words.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const STRIDE_SHIFT: u32 = 7;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const _: () = assert!(size_of::<CachePadded<AtomicU64>>() == 1 << STRIDE_SHIFT);

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
thread_local! {
    /// This thread's glibc rseq area; null until its first add, then
    /// `UNREGISTERED` if glibc could not register it.
    static AREA: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// `AREA` of a thread without a registered area.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const UNREGISTERED: usize = 1;

/// The abort signature glibc registers its rseq areas with.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const SIG: u32 = 0x5305_3053;

impl RawRseq {
    /// A counter at zero, or why this machine cannot run the sequence.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    pub fn new() -> Result<RawRseq, String> {
        let offset = glibc_rseq_offset()?;
        let cpus = crate::machine::possible_cpus()
            .ok_or("cannot read /sys/devices/system/cpu/possible")?;
        let area = thread_pointer().wrapping_offset(offset);
        // SAFETY: as in `add_slow`.
        let cpu_id = unsafe { area.add(4).cast::<u32>().read_volatile() };
        if cpu_id as usize >= cpus {
            return Err(format!(
                "glibc's rseq area reads cpu_id {}: not registered",
                cpu_id as i32
            ));
        }
        Ok(RawRseq {
            words: (0..cpus).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
            spill: CachePadded::new(AtomicU64::new(0)),
            offset,
        })
    }

    /// Never works: the sequence is x86_64 Linux only.
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    pub fn new() -> Result<RawRseq, String> {
        Err("the raw rseq sequence is written for x86_64 Linux only".into())
    }

    /// Adds `value` to the word of the CPU the thread is on when the add
    /// commits. A plain `add` (no lock prefix), restarted by the kernel if
    /// the thread is preempted, migrated or signalled before it.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[inline(always)]
    pub fn add(&self, value: u64) {
        let area = AREA.with(Cell::get);
        if area as usize <= UNREGISTERED {
            return self.add_slow(value);
        }
        // SAFETY: the rseq ABI as in the library's `percpu_add`: a 32-byte
        // aligned descriptor in `__rseq_cs` naming [6, 7) and the abort
        // handler 4, with SIG in the 4 bytes before it; the descriptor's
        // address stored in the area's `rseq_cs` (byte 8) before the section
        // starts; one committing store (the `add`) as its last instruction.
        // `area` is this thread's glibc area, registered with the kernel
        // (checked by `add_slow` before caching it), so its `cpu_id` is a
        // possible CPU id, below `words.len()`. The words are only ever
        // written by this sequence (and read atomically).
        unsafe {
            std::arch::asm!(
                ".pushsection __rseq_cs, \"aw\"",
                ".balign 32",
                "3:",
                ".long 0, 0",
                ".quad 6f, 7f - 6f, 4f",
                ".popsection",
                ".pushsection __rseq_failure, \"ax\"",
                ".byte 0x0f, 0xb9, 0x3d",
                ".long {sig}",
                "4:",
                "jmp 5f",
                ".popsection",
                "5:",
                "lea {tmp}, [rip + 3b]",
                "mov qword ptr [{area} + 8], {tmp}",
                "6:",
                "mov {tmp:e}, dword ptr [{area} + 4]",
                "shl {tmp}, {shift}",
                "add qword ptr [{words} + {tmp}], {value}",
                "7:",
                area = in(reg) area,
                tmp = out(reg) _,
                words = in(reg) self.words.as_ptr(),
                value = in(reg) value,
                sig = const SIG,
                shift = const STRIDE_SHIFT,
                options(nostack),
            );
        }
    }

    /// The thread's first add: finds its area (fs:0 + `__rseq_offset`) and
    /// caches it if glibc registered it; otherwise adds to `spill`.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[cold]
    #[inline(never)]
    fn add_slow(&self, value: u64) {
        if AREA.with(Cell::get).is_null() {
            let area = thread_pointer().wrapping_offset(self.offset);
            // SAFETY: glibc keeps every thread's `struct rseq` at
            // `__rseq_offset` from its thread pointer; `cpu_id` is the u32 at
            // byte 4, written by the kernel at any time, hence volatile.
            let cpu_id = unsafe { area.add(4).cast::<u32>().read_volatile() };
            // A thread glibc could not register reads -1 or -2.
            let registered = (cpu_id as usize) < self.words.len();
            AREA.with(|a| a.set(if registered { area } else { UNREGISTERED as *mut u8 }));
            if registered {
                return self.add(value);
            }
        }
        self.spill.fetch_add(value, Ordering::Relaxed);
    }

    /// Never called: `new` fails on this platform.
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    pub fn add(&self, value: u64) {
        self.spill.fetch_add(value, Ordering::Relaxed);
    }

    /// The total over every CPU.
    pub fn sum(&self) -> u64 {
        self.words
            .iter()
            .chain([&self.spill])
            .fold(0, |acc, w| acc.wrapping_add(w.load(Ordering::Relaxed)))
    }
}

/// glibc's `__rseq_offset`, if glibc registered rseq for its threads.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn glibc_rseq_offset() -> Result<isize, String> {
    // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names only looks the
    // symbols up.
    let (size, offset) = unsafe {
        (
            libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()),
            libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()),
        )
    };
    if size.is_null() || offset.is_null() {
        return Err("no __rseq_offset: not glibc 2.35 or later".into());
    }
    // SAFETY: glibc defines `__rseq_size` as a `const unsigned int` and
    // `__rseq_offset` as a `const ptrdiff_t`, set before main.
    let (size, offset) = unsafe { (size.cast::<u32>().read(), offset.cast::<isize>().read()) };
    if size < 20 {
        return Err("glibc did not register rseq (GLIBC_TUNABLES=glibc.pthread.rseq=0?)".into());
    }
    Ok(offset)
}

/// The thread pointer: on x86_64 Linux, fs:0 holds the TCB's own address.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn thread_pointer() -> *mut u8 {
    let tp: *mut u8;
    // SAFETY: reading fs:0 (the x86_64 TLS ABI's self pointer) has no side
    // effects.
    unsafe {
        std::arch::asm!(
            "mov {}, qword ptr fs:[0]",
            out(reg) tp,
            options(nostack, readonly, preserves_flags)
        );
    }
    tp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_from_every_thread_are_counted() {
        let Ok(c) = RawRseq::new() else { return };
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..100_000).for_each(|_| c.add(1)));
            }
        });
        assert_eq!(c.sum(), 400_000);
        assert_eq!(c.spill.load(Ordering::Relaxed), 0);
    }
}
