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
//! registers an area of its own on first use: a constant-initialised
//! thread-local without a destructor, like glibc's own area part of the
//! thread's static TLS. Registering it allocates nothing, so a thread's first
//! per-CPU update may happen in a signal handler. The area is never
//! unregistered: the kernel forgets it when the thread exits, and the
//! thread's static TLS outlives the thread in the kernel's eyes, as glibc's
//! area does.
//!
//! Every sequence compares the CPU id with the number of CPU slots
//! ([`set_limit`]) before it uses it: an id at or beyond it (a too-low
//! possible-CPU count, an area unregistered behind our back, which reads
//! `u32::MAX`) updates the spill slot with an atomic instruction instead.
//!
//! One sequence is shorter: [`percpu_add_fast`], the inline add of
//! `Counter`, `EventCounter` and the read lock, as long as the raw
//! instruction sequence with no checks at all. It reads the area from
//! [`SEQ_AREA`], which a thread's slow path points at the registered area
//! only where every id the kernel can report has a slot (the rseq backend,
//! the possible CPUs known and not lowered by an override) and the regions
//! have the size the sequence is compiled for ([`arm_fast_path`]); it is
//! never null (an unregistered area until then), so nothing is tested
//! before the sequence. Inside, one unsigned comparison of the
//! sign-extended id with the object's base address stands for three
//! checks: a negative id (an area the kernel does not update) and a null
//! base (an object not allocated yet) both fail it, a real id passes.

use std::cell::{Cell, UnsafeCell};
use std::ptr::{self, NonNull};
#[cfg(target_arch = "x86_64")]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicU32, Ordering};
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

impl Area {
    /// An area not registered yet: the kernel fills in the CPU ids.
    const UNREGISTERED: Area = Area {
        cpu_id_start: 0,
        cpu_id: u32::MAX,
        rseq_cs: 0,
        flags: 0,
        node_id: 0,
        mm_cid: 0,
        _pad: 0,
    };
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

const UNINIT: u8 = 0;
const ACTIVE: u8 = 1;
const NONE: u8 = 2;

// Constant-initialised and without destructors: touching them allocates
// nothing and registers nothing (they are plain static TLS).
thread_local! {
    /// This thread's rseq area, or null while it has none for us.
    static AREA: Cell<*mut Area> = const { Cell::new(ptr::null_mut()) };
    static STATE: Cell<u8> = const { Cell::new(UNINIT) };
    /// The area this library registers when glibc has not registered one.
    static OWN: UnsafeCell<Area> = const { UnsafeCell::new(Area::UNREGISTERED) };
    /// The area [`percpu_add_fast`] arms: never null, so the fast path
    /// tests nothing before it. [`NO_AREA`] until the thread's first slow
    /// path ([`arm_fast_path`]), then the registered area where the fast
    /// path applies, else [`PARKED`]. An area the kernel does not update
    /// reads a negative `cpu_id`, which sends the fast path to the slow one.
    static SEQ_AREA: Cell<*mut Area> = const { Cell::new(NO_AREA.0.get()) };
    /// An area never registered, for threads the fast path does not apply
    /// to: their descriptor stores go to memory of their own.
    static PARKED: UnsafeCell<Area> = const { UnsafeCell::new(Area::UNREGISTERED) };
}

/// The area of threads that have not taken a slow path yet. Never
/// registered: its `cpu_id` stays `u32::MAX`. Such threads write their
/// descriptor's address into its `rseq_cs` (nobody reads it) once each
/// before they find their own.
struct NoArea(UnsafeCell<Area>);

// SAFETY: the only writes are the aligned 8-byte stores of `rseq_cs` by
// `percpu_add_fast`'s assembly, single instructions whose value nobody
// reads; the `cpu_id` the sequences read is never written.
unsafe impl Sync for NoArea {}

static NO_AREA: NoArea = NoArea(UnsafeCell::new(Area::UNREGISTERED));

/// Whether the calling thread's slow path already pointed
/// [`percpu_add_fast`] at an area ([`arm_fast_path`]): then there is
/// nothing left to decide.
#[inline]
pub(crate) fn fast_path_decided() -> bool {
    SEQ_AREA.try_with(Cell::get).map_or(true, |a| a != NO_AREA.0.get())
}

/// Points the calling thread's [`percpu_add_fast`] at its registered area
/// if `applies` (the caller knows that every CPU id the kernel can report
/// has a slot, and that regions are [`SEQ_SHIFT`] in size), else at an
/// area of its own that is never registered, so that the fast path always
/// hands over to the slow one.
#[cold]
pub(crate) fn arm_fast_path(applies: bool) {
    let area = match current_area() {
        Some(area) if applies => area.as_ptr(),
        _ => match PARKED.try_with(UnsafeCell::get) {
            Ok(parked) => parked,
            Err(_) => return,
        },
    };
    let _ = SEQ_AREA.try_with(|a| a.set(area));
}

/// The current CPU id by the armed fast path's test, for a per-CPU object
/// whose slot 0's copy is at `base`: the id if the calling thread's
/// [`SEQ_AREA`] is armed (one comparison of the sign-extended id with
/// `base`, as in [`percpu_add_fast`]), its copy then `id << SEQ_SHIFT`
/// bytes from `base`; else `None`, and the caller finds the CPU the general
/// way. A hint, as `cpu::current()` is.
///
/// `base` must be slot 0's copy of a per-CPU allocation (so not null, and
/// above every CPU id wherever the fast path is armed).
#[inline(always)]
pub(crate) fn fast_cpu(base: *mut u8) -> Option<usize> {
    if !HAS_PERCPU_OPS {
        return None;
    }
    let area = SEQ_AREA.with(Cell::get);
    // SAFETY: `SEQ_AREA` is never null: it points at the thread's registered
    // area, at `PARKED` or at `NO_AREA`, all valid for reads as long as the
    // thread's fast path may run (the same read starts `percpu_add_fast`).
    // The kernel writes `cpu_id` asynchronously, hence the volatile read.
    let id = unsafe { ptr::addr_of!((*area).cpu_id).read_volatile() };
    // Sign-extended: an area the kernel does not update reads -1 or -2,
    // above every address; an armed area's ids are below `cpu::count()`.
    let id = id as i32 as isize as usize;
    (id < base as usize).then_some(id)
}

/// The region size (log2 bytes per CPU) [`percpu_add_fast`] is written for:
/// the largest one. Where regions were reserved smaller (`RLIMIT_AS`) the
/// fast path is never armed, and the slow path's sequences shift by the
/// run-time size.
pub(crate) const SEQ_SHIFT: u32 = super::MAX_UNIT_SHIFT;

/// The number of CPU slots the sequences may index directly: `cpu::count()`.
/// An id at or above it goes to the spill slot (slot `LIMIT`). Zero until
/// set, sending everything to the spill slot.
static LIMIT: AtomicU32 = AtomicU32::new(0);

/// Sets the number of CPU ids the sequences trust (`cpu::count()`), before
/// any sequence runs.
pub(crate) fn set_limit(count: usize) {
    LIMIT.store(u32::try_from(count).unwrap_or(u32::MAX), Ordering::Relaxed);
}

#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn limit() -> u32 {
    LIMIT.load(Ordering::Relaxed)
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
/// glibc registered one, or the kernel accepts ours (which then stays
/// registered for the thread, as it would on first use).
pub(crate) fn probe() -> bool {
    if current_area().is_some() || glibc_area().is_some() {
        return true;
    }
    register_own().is_some()
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
    // allocated for as long as the kernel may write to it (the thread's
    // static TLS, or glibc's area; see the module docs).
    unsafe { libc::syscall(libc::SYS_rseq, area, size_of::<Area>() as u32, flags, SIG) }
}

/// Registers the calling thread's own area (see the module docs). Allocates
/// nothing and takes no lock, so it may run in a signal handler, also one
/// that interrupted this very function.
fn register_own() -> Option<NonNull<Area>> {
    let area = OWN.try_with(UnsafeCell::get).ok()?;
    // SAFETY: `area` is this thread's static TLS, 32-byte aligned, and lives
    // as long as the thread does for the kernel (module docs).
    let area = unsafe { NonNull::new_unchecked(area) };
    let rc = rseq_syscall(area.as_ptr(), 0);
    // EBUSY: already registered with these very arguments (a signal handler
    // registered it between our check and the call).
    if rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
        (cpu_id(area) < u32::MAX - 1).then_some(area)
    } else {
        None
    }
}

/// Keeps the code of the sequences (and their `__rseq_cs` descriptors)
/// mapped for the life of the process: a thread may be preempted long after
/// its last sequence with `rseq_cs` still pointing at a descriptor, and the
/// kernel kills a thread whose descriptor it cannot read. When this library
/// is part of a shared object that can be unloaded (`dlclose`), the object
/// is made `RTLD_NODELETE`. Returns whether the code is pinned (always, in
/// the main program).
pub(crate) fn pin_code() -> bool {
    static PINNED: OnceLock<bool> = OnceLock::new();
    *PINNED.get_or_init(|| {
        let ours = dl_info(pin_code as *const libc::c_void);
        // SAFETY: getauxval has no preconditions.
        let phdr = unsafe { libc::getauxval(libc::AT_PHDR) } as *const libc::c_void;
        let main = dl_info(phdr);
        let Some(ours) = ours else {
            // Not in any object the dynamic linker knows: a static program.
            return true;
        };
        if main.is_some_and(|m| m.dli_fbase == ours.dli_fbase) {
            return true; // the main program is never unloaded
        }
        if ours.dli_fname.is_null() {
            return false;
        }
        // SAFETY: `dli_fname` is the NUL-terminated name of an object that is
        // loaded (it contains this function); RTLD_NOLOAD only finds it, and
        // RTLD_NODELETE marks it never to be unloaded. The extra reference
        // is dropped again at once; the mark stays.
        unsafe {
            let handle = libc::dlopen(
                ours.dli_fname,
                libc::RTLD_LAZY | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
            );
            if handle.is_null() {
                return false;
            }
            libc::dlclose(handle);
        }
        true
    })
}

fn dl_info(addr: *const libc::c_void) -> Option<libc::Dl_info> {
    // SAFETY: dladdr only writes the (zeroed, plain-data) info struct.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        (libc::dladdr(addr, &mut info) != 0).then_some(info)
    }
}

// Restartable per-CPU sequences (x86_64), after librseq's
// `include/rseq/arch/x86{.h,/bits.h}`. Every sequence has the same layout,
// emitted by `percpu_sequence!`:
//
//   __rseq_cs:       3: { version 0, flags 0, start 6f, 7f - 6f, abort 4f }
//   __rseq_failure:  ud1 SIG(%rip), %edi    (the 4 signature bytes end at 4)
//                    4: jmp 5f              (abort: re-arm and retry)
//   text:            5: lea tmp, [3b]; mov [area + 8], tmp   (arm rseq_cs)
//                    6: mov cpu:e, [area + 4]                 (cpu_id)
//                       cmp cpu:e, limit:e; jae (out of range)
//                       shl cpu, cl                           (cpu's offset)
//                       ...loads, compares, early exits to 7...
//                       one store to [base + cpu]             (the commit)
//                    7:
//
// If the thread is preempted, migrated or signalled with its instruction
// pointer in [6, 7), the kernel resumes it at 4 instead: the sequence runs
// again from the top, reading the (perhaps new) CPU id. Only the last
// instruction before 7 writes memory, so an aborted attempt has no effect.
// Inputs are read-only in the body and outputs are `out` (never sharing an
// input's register), so a restart sees the same inputs.
//
// The region size is fixed at run time (`sys::unit_shift()`), so the shift
// is by `cl`; the CPU id is checked against `limit` (`cpu::count()`) first.
// An id out of range leaves the sequence without writing; the update then
// goes to the spill slot (`limit << shift`) with an atomic instruction,
// outside the sequence.

/// Emits one restartable sequence: the descriptor, the abort handler that
/// retries, the arming store, then `$body` between the start (6) and the
/// post-commit (7) labels, then `$cold` (reached by jumps to 8 from the
/// body) in a separate section, which must end by jumping back to 7. The body
/// finds the CPU id at `[{area} + 4]`; the caller supplies `area`, `limit`
/// (in), `tmp` (out) and the shift in `ecx` among its operands.
#[cfg(target_arch = "x86_64")]
macro_rules! percpu_sequence {
    ([$($body:literal),* $(,)?], [$($cold:literal),* $(,)?], $($operands:tt)*) => {
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
            ".pushsection .text.unlikely, \"ax\"",
            "8:",
            $($cold,)*
            ".popsection",
            sig = const SIG,
            $($operands)*
        )
    };
}

/// The spill slot's copy of the word at `base`, for updates from a CPU id
/// out of range.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn spill_word<'a>(base: *mut u8, limit: u32) -> &'a AtomicU64 {
    let at = base.wrapping_add((limit as usize) << super::super::unit_shift());
    // SAFETY: the callers' contracts: the spill slot's word is valid, aligned
    // and only ever accessed atomically.
    unsafe { AtomicU64::from_ptr(at.cast()) }
}

/// Adds `value` to the `u64` at `base + (cpu << unit_shift())`, `cpu` being
/// the CPU the thread is on when the addition commits. A plain `add`: no
/// lock prefix, restarted by the kernel if the thread is preempted, migrated
/// or signalled before it. A CPU id at or beyond the limit ([`set_limit`])
/// adds to the spill slot's word with a locked `add` instead.
///
/// # Safety
/// `area` must be the calling thread's registered area, and the word for
/// every CPU slot up to and including the spill slot (slot `cpu::count()`)
/// must be valid for writes, aligned, and, below the spill slot, written
/// only by restartable sequences while any thread may run one on it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn percpu_add(area: NonNull<Area>, base: *mut u8, value: u64) {
    // SAFETY: the caller guarantees the memory; `percpu_sequence!` follows
    // the rseq ABI, and the body's only store, the add, is its last
    // instruction. The cold path adds atomically to the spill slot, which
    // the caller guarantees is valid.
    unsafe {
        percpu_sequence!(
            [
                "mov {tmp:e}, dword ptr [{area} + 4]",
                "cmp {tmp:e}, {limit:e}",
                "jae 8f",
                "shl {tmp}, cl",
                "add qword ptr [{base} + {tmp}], {value}",
            ],
            [
                "mov {tmp:e}, {limit:e}",
                "shl {tmp}, cl",
                "lock add qword ptr [{base} + {tmp}], {value}",
                "jmp 7b",
            ],
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            value = in(reg) value,
            limit = in(reg) limit(),
            in("ecx") super::super::unit_shift(),
            tmp = out(reg) _,
            options(nostack),
        );
    }
}

/// The inline per-CPU add of `Counter`, `EventCounter` and the read lock:
/// adds `value` to the `u64` at `base + OFFSET + (cpu << SEQ_SHIFT)`, `cpu`
/// being the CPU the thread is on when the addition commits. Returns false,
/// having done nothing, when `base` is null (not allocated yet), when the
/// thread's fast path is not armed ([`arm_fast_path`]), or when its area is
/// no longer registered: the caller then takes its slow path.
///
/// [`percpu_add`]'s body with a constant shift and one comparison: the CPU
/// id, sign-extended, must be below `base` as an unsigned number. An armed
/// area belongs to a process in which every id the kernel reports has a
/// slot, and ids are below 2^16 while a region's address is far above; an
/// area the kernel does not update reads a negative id (-1 or -2), which
/// sign-extends above every address; a null `base` is below every id.
///
/// # Safety
/// `base` is null, or slot 0's copy of a per-CPU allocation holding a `u64`
/// at byte `OFFSET` of every slot, valid for writes, aligned, whose CPU
/// slots are written only by restartable sequences while any thread may
/// run one, at an address of 2^32 or more (`cpu::arm_fast_path` checks
/// that regions are).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn percpu_add_fast<const OFFSET: usize>(base: *mut u8, value: u64) -> bool {
    let area = SEQ_AREA.with(Cell::get);
    // SAFETY: `area` is the thread's registered area, or one the kernel does
    // not update (its `cpu_id` is negative); both are valid for the
    // descriptor store. An id that passes the comparison is a CPU id from
    // an armed, registered area (below `cpu::count()`, so its slot exists)
    // and `base` is not null (see above). `percpu_sequence!` follows the
    // rseq ABI; the add is the body's only store and its last instruction;
    // the slow exit leaves before it.
    unsafe {
        percpu_sequence!(
            [
                "movsxd {tmp}, dword ptr [{area} + 4]",
                "cmp {tmp}, {base}",
                "jae {slow}",
                "shl {tmp}, {shift}",
                "add qword ptr [{base} + {tmp} + {offset}], {value}",
            ],
            [],
            area = in(reg) area,
            base = in(reg) base,
            value = in(reg) value,
            shift = const SEQ_SHIFT,
            offset = const OFFSET,
            tmp = out(reg) _,
            slow = label { return false; },
            options(nostack),
        );
    }
    true
}

/// No inline fast path on this architecture: always the slow path.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn percpu_add_fast<const OFFSET: usize>(_base: *mut u8, _value: u64) -> bool {
    false
}

/// Compare-and-store on the current CPU's word (librseq's
/// `percpu_cmpeqv_storev`): if the `u64` at `base + (cpu << unit_shift())`
/// equals `expect`, stores `newv` there. `cpu` is the CPU the thread is on
/// when the comparison runs; the store, if any, is on that CPU too. A CPU
/// id at or beyond the limit compares and stores on the spill slot's word
/// instead, atomically (`compare_exchange(AcqRel, Acquire)`), and reports
/// the spill slot's index as `cpu`.
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
    let cpu: u32;
    let actual: u64;
    let limit = limit();
    // SAFETY: as for `percpu_add`; the body stores (its last instruction)
    // only after the comparison succeeded on the same CPU, and otherwise
    // leaves through the post-commit label without writing.
    unsafe {
        percpu_sequence!(
            [
                "mov {cpu:e}, dword ptr [{area} + 4]",
                "cmp {cpu:e}, {limit:e}",
                "jae 7f",
                "mov {tmp:e}, {cpu:e}",
                "shl {tmp}, cl",
                "mov {actual}, qword ptr [{base} + {tmp}]",
                "cmp {actual}, {expect}",
                "jne 7f",
                "mov qword ptr [{base} + {tmp}], {newv}",
            ],
            [],
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            expect = in(reg) expect,
            newv = in(reg) newv,
            limit = in(reg) limit,
            in("ecx") super::super::unit_shift(),
            cpu = out(reg) cpu,
            tmp = out(reg) _,
            actual = out(reg) actual,
            options(nostack),
        );
    }
    if cpu >= limit {
        return spill_word(base, limit)
            .compare_exchange(expect, newv, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| limit as usize);
    }
    if actual == expect {
        Ok(cpu as usize)
    } else {
        Err(actual)
    }
}

/// Pop from the current CPU's list (librseq's
/// `percpu_cmpnev_storeoffp_load`): reads `head`, the `u64` at
/// `base + (cpu << unit_shift())`; if it differs from `expectnot`, replaces
/// it with the `u64` at address `head + off` (the next link).
///
/// Returns `(cpu, head)`; the pop happened iff `head != expectnot`. A CPU id
/// at or beyond the limit pops nothing: it returns `(limit, expectnot)`, and
/// the caller goes on to the spill slot's list as it does for an empty list.
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
    let cpu: u32;
    let head: u64;
    let limit = limit();
    // SAFETY: as for `percpu_add`; `head + off` is readable while `head` is
    // in the word, which it is for the whole uninterrupted attempt; the
    // store of the next link is the body's last instruction.
    unsafe {
        percpu_sequence!(
            [
                "mov {cpu:e}, dword ptr [{area} + 4]",
                "cmp {cpu:e}, {limit:e}",
                "jae 7f",
                "mov {tmp:e}, {cpu:e}",
                "shl {tmp}, cl",
                "mov {head}, qword ptr [{base} + {tmp}]",
                "cmp {head}, {expectnot}",
                "je 7f",
                "mov {next}, qword ptr [{head} + {off}]",
                "mov qword ptr [{base} + {tmp}], {next}",
            ],
            [],
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            expectnot = in(reg) expectnot,
            off = in(reg) off,
            limit = in(reg) limit,
            in("ecx") super::super::unit_shift(),
            cpu = out(reg) cpu,
            tmp = out(reg) _,
            head = out(reg) head,
            next = out(reg) _,
            options(nostack),
        );
    }
    if cpu >= limit {
        (limit as usize, expectnot)
    } else {
        (cpu as usize, head)
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
                "shl {tmp}, cl",
                "mov qword ptr [{base} + {tmp}], {value}",
            ],
            [],
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            cpu = in(reg) cpu,
            value = in(reg) value,
            in("ecx") super::super::unit_shift(),
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
                "shl {tmp}, cl",
                "mov {actual}, qword ptr [{base} + {tmp}]",
                "cmp {actual}, {expect}",
                "jne 7f",
                "mov qword ptr [{base} + {tmp}], {newv}",
            ],
            [],
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            cpu = in(reg) cpu,
            expect = in(reg) expect,
            newv = in(reg) newv,
            in("ecx") super::super::unit_shift(),
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
                "shl {tmp}, cl",
                "mov {head}, qword ptr [{base} + {tmp}]",
                "cmp {head}, {expectnot}",
                "je 7f",
                "mov {next}, qword ptr [{head} + {off}]",
                "mov qword ptr [{base} + {tmp}], {next}",
            ],
            [],
            area = in(reg) area.as_ptr(),
            base = in(reg) base,
            cpu = in(reg) cpu,
            expectnot = in(reg) expectnot,
            off = in(reg) off,
            in("ecx") super::super::unit_shift(),
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
