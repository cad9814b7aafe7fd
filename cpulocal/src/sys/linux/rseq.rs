//! The per-thread rseq area and restartable per-CPU sequences.
//!
//! The kernel keeps `cpu_id` in a per-thread `struct rseq` up to date, and
//! aborts a registered critical section (jumping to its abort handler) when
//! the thread is preempted, migrated or signalled before the section's last
//! instruction, its commit. A per-CPU update is then a plain instruction.
//!
//! glibc 2.35 and later registers an area for every thread and exports its
//! place as `__rseq_offset` from the thread pointer; we find those symbols
//! with `dlsym` (weak linkage needs nightly). When glibc did not register
//! (older glibc, `GLIBC_TUNABLES=glibc.pthread.rseq=0`, musl), each thread
//! registers its own heap-allocated area on first use and unregisters it from
//! a thread-local destructor; until unregistration succeeds the area is never
//! freed, so the kernel can never write into freed memory.

use std::cell::Cell;
use std::ptr::{self, NonNull};
use std::sync::OnceLock;

/// The kernel's `struct rseq` (the original 32-byte layout).
#[repr(C, align(32))]
pub(crate) struct Area {
    cpu_id_start: u32,
    cpu_id: u32,
    rseq_cs: u64,
    flags: u32,
    node_id: u32,
    mm_cid: u32,
    _pad: u32,
}

/// The abort signature glibc registers with; the 4 bytes before every abort
/// handler must hold it.
#[cfg(target_arch = "x86_64")]
pub(crate) const SIG: u32 = 0x5305_3053;
#[cfg(target_arch = "aarch64")]
pub(crate) const SIG: u32 = 0xd428_bc00;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) const SIG: u32 = 0x5305_3053;

/// Whether this architecture has restartable per-CPU operations in this
/// module (elsewhere rseq only supplies the CPU id).
pub(crate) const HAS_PERCPU_OPS: bool = cfg!(target_arch = "x86_64");

const UNREGISTER: libc::c_int = 1;

const UNINIT: u8 = 0;
const ACTIVE: u8 = 1;
const NONE: u8 = 2;

thread_local! {
    /// This thread's rseq area, or null while it has none for us.
    static AREA: Cell<*mut Area> = const { Cell::new(ptr::null_mut()) };
    static STATE: Cell<u8> = const { Cell::new(UNINIT) };
    static OWN: Cell<Option<Registration>> = const { Cell::new(None) };
}

/// The calling thread's rseq area, if [`register_current_thread`] gave it one.
#[inline(always)]
pub(crate) fn current_area() -> Option<NonNull<Area>> {
    NonNull::new(AREA.with(Cell::get))
}

/// The CPU id the kernel last wrote into `area`.
#[inline(always)]
pub(crate) fn cpu_id(area: NonNull<Area>) -> u32 {
    // SAFETY: `area` is this thread's live, registered area; the kernel
    // writes `cpu_id` asynchronously, hence the volatile read.
    unsafe { ptr::addr_of!((*area.as_ptr()).cpu_id).read_volatile() }
}

/// Gives the calling thread an rseq area (glibc's, or its own registration).
/// Tries once per thread; returns the area or `None` for good.
#[cold]
pub(crate) fn register_current_thread() -> Option<NonNull<Area>> {
    if let Some(area) = current_area() {
        return Some(area);
    }
    if STATE.try_with(Cell::get).unwrap_or(NONE) != UNINIT {
        return None;
    }
    let area = glibc_area().or_else(register_own);
    let _ = STATE.try_with(|s| s.set(if area.is_some() { ACTIVE } else { NONE }));
    if let Some(area) = area {
        AREA.with(|a| a.set(area.as_ptr()));
    }
    area
}

/// Whether glibc registered rseq for its threads (`__rseq_size > 0`).
pub(crate) fn glibc_registered() -> bool {
    glibc_offset().is_some()
}

/// Whether the calling thread can have an rseq area, without giving it one:
/// glibc registered one, or the kernel accepts (and then forgets) ours.
pub(crate) fn probe() -> bool {
    if current_area().is_some() || glibc_area().is_some() {
        return true;
    }
    let area = Box::into_raw(new_area());
    let ok = rseq_syscall(area, 0) == 0;
    if ok && rseq_syscall(area, UNREGISTER) != 0 {
        // Still registered: leak it rather than free memory the kernel writes.
        return true;
    }
    // SAFETY: not (or no longer) registered; it came from Box::into_raw.
    drop(unsafe { Box::from_raw(area) });
    ok
}

fn new_area() -> Box<Area> {
    Box::new(Area {
        cpu_id_start: 0,
        cpu_id: u32::MAX,
        rseq_cs: 0,
        flags: 0,
        node_id: 0,
        mm_cid: 0,
        _pad: 0,
    })
}

fn glibc_offset() -> Option<isize> {
    static OFFSET: OnceLock<Option<isize>> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names only looks
        // symbols up; glibc defines both as `const` data of these types.
        unsafe {
            let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
            let offset = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
            if size.is_null() || offset.is_null() || size.cast::<u32>().read() < 20 {
                return None;
            }
            Some(offset.cast::<isize>().read())
        }
    })
}

fn glibc_area() -> Option<NonNull<Area>> {
    let offset = glibc_offset()?;
    let tp = thread_pointer()?;
    let area = NonNull::new(tp.wrapping_offset(offset).cast::<Area>())?;
    // A thread whose registration failed reads a negative id (-1 or -2).
    (cpu_id(area) as i32 >= 0).then_some(area)
}

#[cfg(target_arch = "x86_64")]
fn thread_pointer() -> Option<*mut u8> {
    let tp: *mut u8;
    // SAFETY: on x86_64 Linux, fs:0 holds the thread control block's own
    // address (the TLS ABI); reading it has no side effects.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags));
    }
    Some(tp)
}

#[cfg(target_arch = "aarch64")]
fn thread_pointer() -> Option<*mut u8> {
    let tp: *mut u8;
    // SAFETY: reading the thread pointer register has no side effects.
    unsafe {
        std::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags));
    }
    Some(tp)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn thread_pointer() -> Option<*mut u8> {
    None
}

fn rseq_syscall(area: *mut Area, flags: libc::c_int) -> libc::c_long {
    // SAFETY: `area` points to a live, 32-byte aligned `Area` that stays
    // allocated until this thread unregisters it (see `Registration`).
    unsafe { libc::syscall(libc::SYS_rseq, area, size_of::<Area>() as u32, flags, SIG) }
}

/// An area this library registered itself; unregistered (then freed) when
/// the thread's locals are destroyed.
struct Registration(NonNull<Area>);

impl Drop for Registration {
    fn drop(&mut self) {
        AREA.with(|a| a.set(ptr::null_mut()));
        let _ = STATE.try_with(|s| s.set(NONE));
        if rseq_syscall(self.0.as_ptr(), UNREGISTER) == 0 {
            // SAFETY: the kernel no longer knows the area; it came from
            // `Box::into_raw` in `register_own`.
            drop(unsafe { Box::from_raw(self.0.as_ptr()) });
        }
        // Otherwise the area is leaked: the kernel may still write to it.
    }
}

fn register_own() -> Option<NonNull<Area>> {
    let area = Box::into_raw(new_area());
    // SAFETY: Box::into_raw never returns null.
    let area = unsafe { NonNull::new_unchecked(area) };
    // Register the destructor first: a thread whose locals are already being
    // destroyed must not register an area it could never unregister.
    let slot_ok = OWN.try_with(|_| ()).is_ok();
    if !slot_ok || rseq_syscall(area.as_ptr(), 0) != 0 {
        // SAFETY: the kernel refused (or was never asked), so nothing refers to it.
        drop(unsafe { Box::from_raw(area.as_ptr()) });
        return None;
    }
    if OWN.try_with(|own| own.set(Some(Registration(area)))).is_err() {
        // Unreachable in practice (checked above); leak the area rather than
        // free memory the kernel writes to.
        return None;
    }
    Some(area)
}

/// Adds `value` to the `u64` at `base + (cpu << UNIT_SHIFT)`, `cpu` being the
/// CPU the thread is on when the addition commits. A plain `add`: no lock
/// prefix, restarted by the kernel if the thread is preempted, migrated or
/// signalled before it.
///
/// # Safety
/// `area` must be the calling thread's registered area, and the word for
/// every possible CPU id must be valid for writes, aligned, and written only
/// by restartable sequences while any thread may run one on it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn percpu_add(area: NonNull<Area>, base: *mut u8, value: u64) {
    // SAFETY: the caller guarantees the memory; the sequence follows the rseq
    // ABI: a 32-byte aligned descriptor in __rseq_cs, SIG before the abort
    // handler, the descriptor stored before the first instruction of the
    // section, and a single committing store (the add) as its last.
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
            "add qword ptr [{base} + {tmp}], {value}",
            "7:",
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            value = in(reg) value,
            tmp = out(reg) _,
            sig = const SIG,
            shift = const super::UNIT_SHIFT,
            options(nostack),
        );
    }
}

/// Never called: [`HAS_PERCPU_OPS`] is false on this architecture.
///
/// # Safety
/// Must not be called.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn percpu_add(_area: NonNull<Area>, _base: *mut u8, _value: u64) {
    unreachable!("no restartable per-CPU sequences on this architecture")
}
