//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`: a full barrier on every
//! CPU running a thread of this process, paid by the caller alone.

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
/// process. Returns false (doing nothing) if [`available`] is false.
///
/// Should the syscall start failing after registration (a seccomp filter
/// installed later), it falls back to shrinking a page's protection: the
/// kernel must then shoot down that page's TLB entries with an interrupt on
/// every CPU running this process, which serializes each of them (the
/// mechanism behind .NET's `FlushProcessWriteBuffers` on Linux).
pub(crate) fn heavy() -> bool {
    available() && (membarrier(CMD_PRIVATE_EXPEDITED) == 0 || tlb_shootdown())
}

#[cold]
fn tlb_shootdown() -> bool {
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
    // SAFETY: the page is ours, mapped read/write; we write it so that it is
    // present in the TLB, then narrow and restore its protection.
    unsafe {
        page.0.cast::<u8>().write_volatile(1);
        libc::mprotect(page.0, 4096, libc::PROT_READ) == 0
            && libc::mprotect(page.0, 4096, libc::PROT_READ | libc::PROT_WRITE) == 0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_protection_fallback_works() {
        assert!(super::tlb_shootdown());
        assert!(super::tlb_shootdown());
    }
}
