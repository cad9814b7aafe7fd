//! Process-wide barriers: `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`,
//! a full barrier on every CPU running a thread of this process, paid by
//! the caller alone; and the cheapest full fence a reader can issue itself.

use std::sync::atomic::{AtomicU8, Ordering};

const CMD_QUERY: libc::c_int = 0;
const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier takes no pointers; unknown commands fail with EINVAL.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

/// Registers the process for expedited private barriers (once) and says
/// whether [`heavy`] may be used. Safe to call from any thread, any time.
pub(crate) fn available() -> bool {
    match STATE.load(Ordering::Acquire) {
        YES => true,
        NO => false,
        _ => probe(),
    }
}

#[cold]
fn probe() -> bool {
    let supported = membarrier(CMD_QUERY);
    let ok = supported >= 0
        && supported & libc::c_long::from(CMD_PRIVATE_EXPEDITED) != 0
        && membarrier(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
        && membarrier(CMD_PRIVATE_EXPEDITED) == 0;
    STATE.store(if ok { YES } else { NO }, Ordering::Release);
    ok
}

/// Issues a full memory barrier on every CPU running a thread of this
/// process. Returns false, having done nothing, if [`available`] is false
/// or no process-wide barrier is left.
///
/// Should the syscall start failing after registration (a seccomp filter
/// installed later), it falls back to shrinking a page's protection, but
/// only where that is known to interrupt every CPU that may hold the page
/// in its TLB ([`page_protection_interrupts`]): the kernel must then shoot
/// down the page's TLB entries with an interrupt on every CPU running this
/// process, which serializes each of them (the mechanism behind .NET's
/// `FlushProcessWriteBuffers` on Linux). Elsewhere it returns false, and
/// the caller must not rely on readers having been fenced.
pub(crate) fn heavy() -> bool {
    available()
        && (membarrier(CMD_PRIVATE_EXPEDITED) == 0
            || (page_protection_interrupts() && page_protection_barrier()))
}

/// Whether narrowing a page's protection is known to interrupt every other
/// CPU that runs this process.
///
/// True only on x86-64 processors without `INVLPGB`: there, Linux flushes
/// remote TLBs by inter-processor interrupts. With `INVLPGB` (AMD Zen 3 and
/// later; Linux 6.15+ uses it) the flush is a broadcast that interrupts
/// nobody, and arm64 always flushes by broadcast instructions (`TLBI ...IS`),
/// so neither is a barrier for the other CPUs.
pub(crate) fn page_protection_interrupts() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // Leaf 0x8000_0008 is read only if the processor reports it.
        let has_invlpgb =
            __cpuid(0x8000_0000).eax >= 0x8000_0008 && __cpuid(0x8000_0008).ebx & (1 << 3) != 0;
        !has_invlpgb
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Narrows, then restores, the protection of a page this thread has just
/// written. Returns false if it could not; the page is then left usable.
#[cold]
pub(crate) fn page_protection_barrier() -> bool {
    use std::sync::{Mutex, OnceLock, PoisonError};

    struct Page(*mut libc::c_void);
    // SAFETY: the page is only touched under the mutex below.
    unsafe impl Send for Page {}

    static PAGE: OnceLock<Option<Mutex<Page>>> = OnceLock::new();
    let page = PAGE.get_or_init(|| {
        // SAFETY: a fresh anonymous mapping touches no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        (p != libc::MAP_FAILED).then(|| Mutex::new(Page(p)))
    });
    let Some(page) = page else { return false };
    let page = page.lock().unwrap_or_else(PoisonError::into_inner);
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: the page is ours and mapped; it is written (so present in the
    // TLB) only while writable, and nothing but this function touches it.
    unsafe {
        page.0.cast::<u8>().write_volatile(1);
        if libc::mprotect(page.0, 4096, libc::PROT_READ) != 0 {
            return false;
        }
        // Restoring must not fail silently: a read-only page would fault at
        // the next write. Retry; if the kernel still refuses, the page is
        // never written again (the barrier is then unavailable).
        for _ in 0..3 {
            if libc::mprotect(page.0, 4096, rw) == 0 {
                return true;
            }
        }
        std::mem::forget(page);
        false
    }
}

/// A full fence issued by the calling thread: every store before it is
/// visible to every CPU before any load after it.
///
/// On x86-64 a locked `or` of zero into the stack (what Linux's `smp_mb()`
/// uses): an order of magnitude cheaper than `mfence` on recent processors,
/// and just as strong for ordinary memory. Elsewhere `fence(SeqCst)`.
#[inline(always)]
pub(crate) fn full_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a locked read-modify-write of zero leaves the stack word as it
    // was; without `nomem` the asm is also a compiler barrier for memory.
    unsafe {
        std::arch::asm!("lock or dword ptr [rsp], 0", options(nostack, preserves_flags));
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
    use std::sync::Barrier;

    /// Store-buffering litmus: thread A stores `x` then (after `a_fence`)
    /// loads `y`; thread B stores `y` then (after `b_barrier`) loads `x`.
    /// Returns how many of `rounds` rounds ended with both loads reading 0,
    /// which a working fence pair forbids.
    fn store_buffering(rounds: u32, a_fence: fn(), b_barrier: fn() -> bool) -> u32 {
        let (x, y) = (AtomicU64::new(0), AtomicU64::new(0));
        let (go, done_a) = (AtomicU32::new(0), AtomicU32::new(0));
        let seen_a = AtomicU64::new(0);
        let failed = AtomicBool::new(false);
        let start = Barrier::new(2);
        let mut both_zero = 0;
        std::thread::scope(|s| {
            s.spawn(|| {
                start.wait();
                for round in 1..=rounds {
                    while go.load(Acquire) != round {
                        std::hint::spin_loop();
                    }
                    x.store(u64::from(round), Relaxed);
                    a_fence();
                    seen_a.store(y.load(Relaxed), Relaxed);
                    done_a.store(round, Release);
                }
            });
            start.wait();
            for round in 1..=rounds {
                go.store(round, Release);
                // Let A start its store before B stores: the overlap that
                // exposes store buffering.
                for i in 0..round % 128 {
                    std::hint::black_box(i);
                }
                y.store(u64::from(round), Relaxed);
                if !b_barrier() {
                    failed.store(true, Relaxed);
                }
                let seen_b = x.load(Relaxed);
                while done_a.load(Acquire) != round {
                    std::hint::spin_loop();
                }
                if seen_a.load(Relaxed) < u64::from(round) && seen_b < u64::from(round) {
                    both_zero += 1;
                }
            }
        });
        assert!(!failed.load(Relaxed), "the barrier reported failure");
        both_zero
    }

    fn compiler_fence() {
        std::sync::atomic::compiler_fence(SeqCst);
    }

    /// The litmus test detects store buffering when neither side fences, so
    /// the tests below that find none are meaningful.
    #[test]
    fn litmus_detects_unfenced_store_buffering() {
        let mut seen = 0;
        for _ in 0..20 {
            seen += store_buffering(20_000, compiler_fence, || {
                compiler_fence();
                true
            });
            if seen > 0 {
                eprintln!("store buffering seen {seen} times without fences");
                return;
            }
        }
        panic!("no store buffering seen without fences: the litmus test cannot detect it here");
    }

    #[test]
    fn full_fences_forbid_store_buffering() {
        let n = store_buffering(20_000, super::full_fence, || {
            super::full_fence();
            true
        });
        assert_eq!(n, 0, "{n} rounds saw both stores late despite full fences");
    }

    /// Interrupts of kind `kind` (`"TLB"`, `"CAL"`: a row of
    /// `/proc/interrupts`) that `cpu` has taken, if the row exists.
    fn interrupts(cpu: usize, kind: &str) -> Option<u64> {
        let text = std::fs::read_to_string("/proc/interrupts").ok()?;
        let header = text.lines().next()?;
        let column = header.split_whitespace().position(|c| c == format!("CPU{cpu}"))?;
        let row = text.lines().find(|l| l.trim_start().starts_with(&format!("{kind}:")))?;
        row.split_whitespace().nth(column + 1)?.parse().ok()
    }

    /// Runs `barrier` 50 times on one allowed CPU while a thread of this
    /// process spins on another, and returns how many `kind` interrupts the
    /// spinning CPU took meanwhile (`None`: not measurable here), and how
    /// long that took.
    fn interrupts_caused(
        kind: &str,
        barrier: &dyn Fn() -> bool,
    ) -> Option<(u64, std::time::Duration)> {
        let cpus = crate::cpu::allowed().ok()?;
        let (&here, &there) = (cpus.first()?, cpus.get(1)?);
        interrupts(there, kind)?;
        let stop = AtomicBool::new(false);
        let ready = Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                crate::cpu::set_affinity(&[there]).expect("pin the spinner");
                ready.wait();
                while !stop.load(Relaxed) {
                    std::hint::spin_loop();
                }
            });
            let old = crate::cpu::allowed().expect("allowed CPUs");
            crate::cpu::set_affinity(&[here]).expect("pin the caller");
            ready.wait();
            let before = interrupts(there, kind);
            let start = std::time::Instant::now();
            for _ in 0..50 {
                assert!(barrier(), "the barrier reported failure");
            }
            let took = start.elapsed();
            let after = interrupts(there, kind);
            stop.store(true, Relaxed);
            crate::cpu::set_affinity(&old).expect("restore affinity");
            Some((after? - before?, took))
        })
    }

    /// Asserts that 50 runs of `barrier` cause at least 50 `kind`
    /// interrupts, over what the same time without them brings, on a CPU
    /// where another thread of the process spins. The spinner may be
    /// preempted on a busy machine (then it takes no interrupt), so a few
    /// tries are allowed; a barrier that interrupts nobody fails them all.
    fn assert_interrupts(kind: &str, barrier: fn() -> bool) {
        let mut last = String::new();
        for _ in 0..5 {
            let Some((caused, took)) = interrupts_caused(kind, &barrier) else {
                eprintln!("needs two allowed CPUs and /proc/interrupts; not tested");
                return;
            };
            // The same time without barriers: what the rest of the machine adds.
            let pause = took / 50;
            let (idle, _) = interrupts_caused(kind, &|| {
                std::thread::sleep(pause);
                true
            })
            .unwrap();
            if caused >= 50 + idle {
                return;
            }
            last = format!("{caused} {kind} interrupts, against {idle} without");
        }
        panic!("50 barriers caused too few interrupts on the other CPU: {last}");
    }

    /// The page-protection barrier is trusted only if it interrupts every
    /// CPU running the process: count the TLB-shootdown interrupts it
    /// causes on a CPU where another thread runs. A flush that interrupts
    /// nobody (a broadcast `INVLPGB`, arm64's `TLBI`) fails this test, and
    /// so does a no-op.
    #[test]
    fn page_protection_barrier_interrupts_the_other_cpus() {
        if !super::page_protection_interrupts() {
            eprintln!("page protection is not a barrier on this processor; not used, not tested");
            return;
        }
        assert_interrupts("TLB", super::page_protection_barrier);
    }

    /// The same for `membarrier`, whose interrupts are function calls.
    #[test]
    fn membarrier_interrupts_the_other_cpus() {
        if !super::available() {
            eprintln!("membarrier unavailable here; not tested");
            return;
        }
        assert_interrupts("CAL", super::heavy);
    }
}
