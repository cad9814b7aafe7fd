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

// Restartable per-CPU sequences (x86_64), after librseq's
// `include/rseq/arch/x86{.h,/bits.h}`. Every sequence has the same layout,
// emitted by `percpu_sequence!`:
//
//   __rseq_cs:       3: { version 0, flags 0, start 6f, 7f - 6f, abort 4f }
//   __rseq_failure:  ud1 SIG(%rip), %edi    (the 4 signature bytes end at 4)
//                    4: jmp 5f              (abort: re-arm and retry)
//   text:            5: lea tmp, [3b]; mov [area + 8], tmp   (arm rseq_cs)
//                    6: mov tmp:e, [area + 4]                 (cpu_id)
//                       shl tmp, UNIT_SHIFT                   (cpu's offset)
//                       ...loads, compares, early exits to 7...
//                       one store to [base + tmp]             (the commit)
//                    7:
//
// If the thread is preempted, migrated or signalled with its instruction
// pointer in [6, 7), the kernel resumes it at 4 instead: the sequence runs
// again from the top, reading the (perhaps new) CPU id. Only the last
// instruction before 7 writes memory, so an aborted attempt has no effect.
// Inputs are read-only in the body and outputs are `out` (never sharing an
// input's register), so a restart sees the same inputs.

/// Emits one restartable sequence: the descriptor, the abort handler that
/// retries, the arming store, then `$body` between the start (6) and the
/// post-commit (7) labels. The body finds the CPU id at `[{area} + 4]`; the
/// caller supplies `area` (in) and `tmp` (out) among its operands.
#[cfg(target_arch = "x86_64")]
macro_rules! percpu_sequence {
    ([$($body:literal),* $(,)?], $($operands:tt)*) => {
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
            $($body,)*
            "7:",
            sig = const SIG,
            shift = const super::UNIT_SHIFT,
            $($operands)*
        )
    };
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
    // SAFETY: the caller guarantees the memory; `percpu_sequence!` follows
    // the rseq ABI, and the body's only store, the add, is its last
    // instruction.
    unsafe {
        percpu_sequence!(
            [
                "mov {tmp:e}, dword ptr [{area} + 4]",
                "shl {tmp}, {shift}",
                "add qword ptr [{base} + {tmp}], {value}",
            ],
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            value = in(reg) value,
            tmp = out(reg) _,
            options(nostack),
        );
    }
}

/// Compare-and-store on the current CPU's word (librseq's
/// `percpu_cmpeqv_storev`): if the `u64` at `base + (cpu << UNIT_SHIFT)`
/// equals `expect`, stores `newv` there. `cpu` is the CPU the thread is on
/// when the comparison runs; the store, if any, is on that CPU too.
///
/// Returns `Ok(cpu)` if it stored, or `Err(actual)`, the value it found.
///
/// # Safety
/// As for [`percpu_add`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn percpu_cmpeqv_storev(
    area: NonNull<Area>,
    base: *mut u8,
    expect: u64,
    newv: u64,
) -> Result<usize, u64> {
    let offset: usize;
    let actual: u64;
    // SAFETY: as for `percpu_add`; the body stores (its last instruction)
    // only after the comparison succeeded on the same CPU, and otherwise
    // leaves through the post-commit label without writing.
    unsafe {
        percpu_sequence!(
            [
                "mov {tmp:e}, dword ptr [{area} + 4]",
                "shl {tmp}, {shift}",
                "mov {actual}, qword ptr [{base} + {tmp}]",
                "cmp {actual}, {expect}",
                "jne 7f",
                "mov qword ptr [{base} + {tmp}], {newv}",
            ],
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            expect = in(reg) expect,
            newv = in(reg) newv,
            tmp = out(reg) offset,
            actual = out(reg) actual,
            options(nostack),
        );
    }
    if actual == expect {
        Ok(offset >> super::UNIT_SHIFT)
    } else {
        Err(actual)
    }
}

/// Pop from the current CPU's list (librseq's
/// `percpu_cmpnev_storeoffp_load`): reads `head`, the `u64` at
/// `base + (cpu << UNIT_SHIFT)`; if it differs from `expectnot`, replaces it
/// with the `u64` at address `head + off` (the next link).
///
/// Returns `(cpu, head)`; the pop happened iff `head != expectnot`.
///
/// # Safety
/// As for [`percpu_add`]; moreover every value other than `expectnot` that
/// a CPU's word can hold must be an address whose `head + off` is a `u64`
/// valid for reads for as long as that value is in the word. (Nobody else
/// can change this CPU's word during the sequence: if anyone runs on the
/// CPU meanwhile, the sequence restarts and never reads the stale `head`.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn percpu_cmpnev_storeoffp_load(
    area: NonNull<Area>,
    base: *mut u8,
    expectnot: u64,
    off: usize,
) -> (usize, u64) {
    let offset: usize;
    let head: u64;
    // SAFETY: as for `percpu_add`; `head + off` is readable while `head` is
    // in the word, which it is for the whole uninterrupted attempt; the
    // store of the next link is the body's last instruction.
    unsafe {
        percpu_sequence!(
            [
                "mov {tmp:e}, dword ptr [{area} + 4]",
                "shl {tmp}, {shift}",
                "mov {head}, qword ptr [{base} + {tmp}]",
                "cmp {head}, {expectnot}",
                "je 7f",
                "mov {next}, qword ptr [{head} + {off}]",
                "mov qword ptr [{base} + {tmp}], {next}",
            ],
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            expectnot = in(reg) expectnot,
            off = in(reg) off,
            tmp = out(reg) offset,
            head = out(reg) head,
            next = out(reg) _,
            options(nostack),
        );
    }
    (offset >> super::UNIT_SHIFT, head)
}

/// Never called: [`HAS_PERCPU_OPS`] is false on this architecture.
///
/// # Safety
/// Must not be called.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn percpu_add(_area: NonNull<Area>, _base: *mut u8, _value: u64) {
    unreachable!("no restartable per-CPU sequences on this architecture")
}

/// Never called: [`HAS_PERCPU_OPS`] is false on this architecture.
///
/// # Safety
/// Must not be called.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn percpu_cmpeqv_storev(
    _area: NonNull<Area>,
    _base: *mut u8,
    _expect: u64,
    _newv: u64,
) -> Result<usize, u64> {
    unreachable!("no restartable per-CPU sequences on this architecture")
}

/// Never called: [`HAS_PERCPU_OPS`] is false on this architecture.
///
/// # Safety
/// Must not be called.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn percpu_cmpnev_storeoffp_load(
    _area: NonNull<Area>,
    _base: *mut u8,
    _expectnot: u64,
    _off: usize,
) -> (usize, u64) {
    unreachable!("no restartable per-CPU sequences on this architecture")
}

// CPU-targeted sequences (librseq's `cpu` argument): each starts by checking
// that the thread runs on CPU `cpu` and leaves through the post-commit label
// without a store if not. `on` is set in a register just before the body
// goes on, so a restarted attempt recomputes it.

/// Stores `value` to CPU `cpu`'s `u64` at `base + (cpu << UNIT_SHIFT)` if
/// the thread runs on `cpu` when the store commits. Returns whether it did.
///
/// # Safety
/// As for [`percpu_add`]; `cpu` must be below the possible-CPU count.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn percpu_store_on(
    area: NonNull<Area>,
    base: *mut u8,
    cpu: u32,
    value: u64,
) -> bool {
    let on: u32;
    // SAFETY: as for `percpu_add`; the only store is the body's last
    // instruction, reached only on CPU `cpu`.
    unsafe {
        percpu_sequence!(
            [
                "xor {on:e}, {on:e}",
                "mov {tmp:e}, dword ptr [{area} + 4]",
                "cmp {tmp:e}, {cpu:e}",
                "jne 7f",
                "mov {on:e}, 1",
                "shl {tmp}, {shift}",
                "mov qword ptr [{base} + {tmp}], {value}",
            ],
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            cpu = in(reg) cpu,
            value = in(reg) value,
            tmp = out(reg) _,
            on = out(reg) on,
            options(nostack),
        );
    }
    on != 0
}

/// [`percpu_cmpeqv_storev`] on CPU `cpu`'s word, if the thread runs on
/// `cpu`: `Ok(())` if it stored, `Err(Some(actual))` if the word held
/// `actual` instead of `expect`, `Err(None)` if the thread was elsewhere.
///
/// # Safety
/// As for [`percpu_store_on`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn percpu_cmpeqv_storev_on(
    area: NonNull<Area>,
    base: *mut u8,
    cpu: u32,
    expect: u64,
    newv: u64,
) -> Result<(), Option<u64>> {
    let on: u32;
    let actual: u64;
    // SAFETY: as for `percpu_cmpeqv_storev`, reached only on CPU `cpu`.
    unsafe {
        percpu_sequence!(
            [
                "xor {on:e}, {on:e}",
                "mov {tmp:e}, dword ptr [{area} + 4]",
                "cmp {tmp:e}, {cpu:e}",
                "jne 7f",
                "mov {on:e}, 1",
                "shl {tmp}, {shift}",
                "mov {actual}, qword ptr [{base} + {tmp}]",
                "cmp {actual}, {expect}",
                "jne 7f",
                "mov qword ptr [{base} + {tmp}], {newv}",
            ],
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            cpu = in(reg) cpu,
            expect = in(reg) expect,
            newv = in(reg) newv,
            tmp = out(reg) _,
            on = out(reg) on,
            actual = out(reg) actual,
            options(nostack),
        );
    }
    match (on, actual) {
        (0, _) => Err(None),
        (_, a) if a == expect => Ok(()),
        (_, a) => Err(Some(a)),
    }
}

/// [`percpu_cmpnev_storeoffp_load`] on CPU `cpu`'s list, if the thread runs
/// on `cpu`: `Some(head)` (popped iff `head != expectnot`), or `None` if the
/// thread was elsewhere.
///
/// # Safety
/// As for [`percpu_cmpnev_storeoffp_load`]; `cpu` must be below the
/// possible-CPU count.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn percpu_cmpnev_storeoffp_load_on(
    area: NonNull<Area>,
    base: *mut u8,
    cpu: u32,
    expectnot: u64,
    off: usize,
) -> Option<u64> {
    let on: u32;
    let head: u64;
    // SAFETY: as for `percpu_cmpnev_storeoffp_load`, reached only on CPU
    // `cpu`.
    unsafe {
        percpu_sequence!(
            [
                "xor {on:e}, {on:e}",
                "mov {tmp:e}, dword ptr [{area} + 4]",
                "cmp {tmp:e}, {cpu:e}",
                "jne 7f",
                "mov {on:e}, 1",
                "shl {tmp}, {shift}",
                "mov {head}, qword ptr [{base} + {tmp}]",
                "cmp {head}, {expectnot}",
                "je 7f",
                "mov {next}, qword ptr [{head} + {off}]",
                "mov qword ptr [{base} + {tmp}], {next}",
            ],
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            cpu = in(reg) cpu,
            expectnot = in(reg) expectnot,
            off = in(reg) off,
            tmp = out(reg) _,
            on = out(reg) on,
            head = out(reg) head,
            next = out(reg) _,
            options(nostack),
        );
    }
    (on != 0).then_some(head)
}

/// Never called: [`HAS_PERCPU_OPS`] is false on this architecture.
///
/// # Safety
/// Must not be called.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn percpu_store_on(
    _area: NonNull<Area>,
    _base: *mut u8,
    _cpu: u32,
    _value: u64,
) -> bool {
    unreachable!("no restartable per-CPU sequences on this architecture")
}

/// Never called: [`HAS_PERCPU_OPS`] is false on this architecture.
///
/// # Safety
/// Must not be called.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn percpu_cmpeqv_storev_on(
    _area: NonNull<Area>,
    _base: *mut u8,
    _cpu: u32,
    _expect: u64,
    _newv: u64,
) -> Result<(), Option<u64>> {
    unreachable!("no restartable per-CPU sequences on this architecture")
}

/// Never called: [`HAS_PERCPU_OPS`] is false on this architecture.
///
/// # Safety
/// Must not be called.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn percpu_cmpnev_storeoffp_load_on(
    _area: NonNull<Area>,
    _base: *mut u8,
    _cpu: u32,
    _expectnot: u64,
    _off: usize,
) -> Option<u64> {
    unreachable!("no restartable per-CPU sequences on this architecture")
}
