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
pub(crate) fn heavy() -> bool {
    available() && membarrier(CMD_PRIVATE_EXPEDITED) == 0
}
