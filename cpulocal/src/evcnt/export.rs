//! Publishing the registry in a file, and reading it from another process.
//!
//! The file is `evcnt.PID` in a directory of the user's own: `cpulocal`
//! under `$XDG_RUNTIME_DIR`, or `cpulocal-UID` under the temporary directory
//! when that is not set. The directory must be the user's, not a link, and
//! closed to everyone else (mode 0700, which this module creates it with);
//! the file is created 0600. The exporter rewrites it (a new file renamed
//! over the old, so readers never see a half-written one) every period, and
//! sooner while a reader asks for a shorter interval (`evcnt.PID.want`).
//!
//! The format is text, one record a line:
//!
//! ```text
//! cpulocal-evcnt 1
//! pid 4242
//! start 123456
//! period_ms 1000
//! written_ns 1732760000000000000
//! events 1
//! event misc 17 net rx%20packets
//! end
//! ```
//!
//! `start` is the process's start time (field 22 of `/proc/PID/stat`), so a
//! file left by a dead process whose PID was reused is not taken for the new
//! process's. Group and name are percent-encoded (every byte outside `!` to
//! `~`, and `%`). A reader checks every line and limit and rejects the file
//! on the first fault: it is never trusted, only parsed.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, UNIX_EPOCH};

use super::{snapshot, Event, Kind, Registry, Snapshot};

const MAGIC: &str = "cpulocal-evcnt 1";
/// The largest file a reader accepts.
const MAX_FILE: u64 = 16 << 20;
/// The most events a reader accepts.
const MAX_EVENTS: usize = 100_000;
/// The longest group or name a reader accepts, in bytes after decoding.
const MAX_NAME: usize = 1024;
/// A reader's request for a shorter period expires after this long.
const WANT_TTL: Duration = Duration::from_secs(10);
/// The shortest period a reader can ask for.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// The directory export files live in, created (mode 0700) if missing.
///
/// # Errors
/// If it cannot be created, or exists but is not a directory of the
/// current user's closed to others: then nothing is written or read there.
fn runtime_dir() -> io::Result<PathBuf> {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(base) if base.is_absolute() && base.is_dir() => base.join("cpulocal"),
        _ => std::env::temp_dir().join(format!("cpulocal-{uid}")),
    };
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    }
    let meta = fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of user {uid} closed to others (mode {:o})",
                dir.display(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(dir)
}

fn file_name(pid: u32) -> String {
    format!("evcnt.{pid}")
}

/// The start time of process `pid` in clock ticks since boot, if it exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything;
    // the fields after its last ')' are plain. starttime is field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A published registry, as [`read_export`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Exported {
    /// The exporting process.
    pub pid: u32,
    /// Its start time, in clock ticks since boot.
    pub start: u64,
    /// How often it rewrites the file (unless asked for more often).
    pub period: Duration,
    /// The counters, and when the exporter read them.
    pub snapshot: Snapshot,
}

impl Exported {
    /// The file's bytes.
    ///
    /// ```
    /// use cpulocal::evcnt::{Event, Exported, Kind, Snapshot};
    /// use std::time::{Duration, UNIX_EPOCH};
    ///
    /// let snapshot = Snapshot::new(
    ///     UNIX_EPOCH + Duration::from_secs(1),
    ///     vec![Event::new("net", "rx packets", Kind::Intr, 17)],
    /// );
    /// let e = Exported::new(42, 7, Duration::from_secs(1), snapshot);
    /// let bytes = e.encode();
    /// assert!(String::from_utf8_lossy(&bytes).contains("event intr 17 net rx%20packets\n"));
    /// assert_eq!(Exported::parse(&bytes).unwrap(), e);
    /// ```
    ///
    /// What it writes, [`parse`](Self::parse) accepts: names longer than
    /// 1,024 bytes are cut there (at a character boundary), and counters
    /// past the first 100,000, or past 16 MiB of text, are left out. (A
    /// file that broke either limit was refused whole, which hid every
    /// counter of the process from `cpulocal stat`.)
    pub fn encode(&self) -> Vec<u8> {
        use fmt::Write as _;
        // Room for the header and the last line within the file's limit.
        let budget = usize::try_from(MAX_FILE).unwrap_or(usize::MAX) - 4096;
        let mut lines = String::new();
        let mut events = 0;
        for e in self.snapshot.events.iter().take(MAX_EVENTS) {
            let failed = if e.alloc_failed { "!" } else { "" };
            let line = format!(
                "event {}{failed} {} {} {}\n",
                e.kind,
                e.value,
                encode_name(cut_name(&e.group)),
                encode_name(cut_name(&e.name))
            );
            if lines.len() + line.len() > budget {
                break;
            }
            lines.push_str(&line);
            events += 1;
        }
        let mut s = String::with_capacity(lines.len() + 256);
        let written = self.snapshot.taken.duration_since(UNIX_EPOCH).unwrap_or_default();
        let _ = writeln!(s, "{MAGIC}");
        let _ = writeln!(s, "pid {}", self.pid);
        let _ = writeln!(s, "start {}", self.start);
        let _ = writeln!(s, "period_ms {}", self.period.as_millis());
        let _ = writeln!(s, "written_ns {}", written.as_nanos());
        let _ = writeln!(s, "events {events}");
        s.push_str(&lines);
        let _ = writeln!(s, "end");
        s.into_bytes()
    }

    /// An export, to be [`encode`](Self::encode)d.
    ///
    /// ```
    /// use cpulocal::evcnt::{Exported, Snapshot};
    /// let e = Exported::new(1, 2, std::time::Duration::from_secs(1), cpulocal::evcnt::snapshot());
    /// assert_eq!(e.pid, 1);
    /// ```
    pub fn new(pid: u32, start: u64, period: Duration, snapshot: Snapshot) -> Exported {
        Exported { pid, start, period, snapshot }
    }

    /// Parses a file's bytes, checking everything.
    ///
    /// # Errors
    /// [`ExportError::Malformed`] on any fault: a missing or unknown line,
    /// a bad number, a bad encoding, a name that is too long, too many
    /// events, or a missing `end` (a truncated file).
    ///
    /// ```
    /// use cpulocal::evcnt::{ExportError, Exported};
    /// assert!(matches!(Exported::parse(b"cpulocal-evcnt 1\npid 1\n"), Err(ExportError::Malformed(_))));
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<Exported, ExportError> {
        parse(bytes).map_err(ExportError::Malformed)
    }
}

fn encode_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_name(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3).ok_or("a cut-off %-escape")?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("bad %-escape %{hex}"));
                }
                out.push(u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?);
                i += 3;
            }
            b if b.is_ascii_graphic() => {
                out.push(b);
                i += 1;
            }
            b => return Err(format!("byte {b:#04x} in a name")),
        }
        if out.len() > MAX_NAME {
            return Err(format!("a name longer than {MAX_NAME} bytes"));
        }
    }
    String::from_utf8(out).map_err(|_| "a name that is not UTF-8".to_string())
}

/// `name`, cut to at most [`MAX_NAME`] bytes at a character boundary.
fn cut_name(name: &str) -> &str {
    if name.len() <= MAX_NAME {
        return name;
    }
    let mut end = MAX_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn parse(bytes: &[u8]) -> Result<Exported, String> {
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let body = text.strip_suffix('\n').ok_or("no final line feed (truncated?)")?;
    let mut lines = body.split('\n');
    let mut next = |what: &str| lines.next().ok_or_else(|| format!("no {what} line (truncated?)"));
    if next("header")? != MAGIC {
        return Err(format!("not an export file: the first line is not {MAGIC:?}"));
    }
    fn field<T: std::str::FromStr>(line: &str, key: &str) -> Result<T, String> {
        let value = line
            .strip_prefix(key)
            .and_then(|v| v.strip_prefix(' '))
            .ok_or_else(|| format!("expected a {key:?} line"))?;
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 39 {
            return Err(format!("bad {key} {value:?}"));
        }
        value.parse().map_err(|_| format!("{key} {value:?} is out of range"))
    }
    let pid: u32 = field(next("pid")?, "pid")?;
    let start: u64 = field(next("start")?, "start")?;
    let period_ms: u64 = field(next("period_ms")?, "period_ms")?;
    let written_ns: u128 = field(next("written_ns")?, "written_ns")?;
    let count: usize = field(next("events")?, "events")?;
    if count > MAX_EVENTS {
        return Err(format!("{count} events (at most {MAX_EVENTS})"));
    }
    let secs = u64::try_from(written_ns / 1_000_000_000).map_err(|_| "written_ns out of range")?;
    let written = Duration::new(secs, (written_ns % 1_000_000_000) as u32);
    let taken = UNIX_EPOCH.checked_add(written).ok_or("written_ns out of range")?;
    let mut events = Vec::with_capacity(count.min(1024));
    for n in 0..count {
        let line = next("event")?;
        let mut parts = line.split(' ');
        let bad = || format!("event line {n} is malformed");
        if parts.next() != Some("event") {
            return Err(bad());
        }
        let kind = parts.next().ok_or_else(bad)?;
        let (kind, alloc_failed) = match kind.strip_suffix('!') {
            Some(k) => (k, true),
            None => (kind, false),
        };
        let kind = Kind::from_name(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
        let value: u64 = field(&format!("v {}", parts.next().ok_or_else(bad)?), "v")?;
        let group = decode_name(parts.next().ok_or_else(bad)?)?;
        let name = decode_name(parts.next().ok_or_else(bad)?)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        events.push(Event { group, name, kind, value, alloc_failed });
    }
    if next("end")? != "end" {
        return Err("expected the end line".into());
    }
    if lines.next().is_some() {
        return Err("lines after the end line".into());
    }
    Ok(Exported {
        pid,
        start,
        period: Duration::from_millis(period_ms),
        snapshot: Snapshot::new(taken, events),
    })
}

/// Why [`read_export`] has no live counters to show.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExportError {
    /// The process does not export its counters (or is not the current
    /// user's): there is no file.
    NotExported {
        /// The process asked for.
        pid: u32,
        /// Where the file would be.
        path: PathBuf,
    },
    /// The file was left by a process that is gone (or by an earlier
    /// process with the same PID). Its figures are not shown.
    Stale {
        /// The process asked for.
        pid: u32,
        /// The stale file.
        path: PathBuf,
        /// How it was found out.
        why: String,
    },
    /// The file is not a valid export file.
    Malformed(String),
    /// The file or its directory could not be read.
    Io(io::Error),
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::NotExported { pid, path } => write!(
                f,
                "process {pid} does not export its counters (no {}; it must call \
                 cpulocal::evcnt::export() and run as the same user)",
                path.display()
            ),
            ExportError::Stale { pid, path, why } => {
                write!(f, "{} is stale: {why}; not showing process {pid}", path.display())
            }
            ExportError::Malformed(why) => write!(f, "malformed export file: {why}"),
            ExportError::Io(e) => write!(f, "cannot read the export file: {e}"),
        }
    }
}

impl std::error::Error for ExportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExportError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ExportError {
    fn from(e: io::Error) -> Self {
        ExportError::Io(e)
    }
}

/// Reads the counters that process `pid` exports (see [`export`]).
///
/// It also asks the exporter to rewrite its file at least every
/// `interval`, for readers that refresh more often than its period (the
/// request lapses after ten seconds without a read).
///
/// # Errors
/// - [`ExportError::NotExported`] when there is no file for `pid`;
/// - [`ExportError::Stale`] when the file's process is gone, or `pid` is now
///   another process;
/// - [`ExportError::Malformed`] when the file is not valid, larger than
///   16 MiB, or not a regular file of the current user's;
/// - [`ExportError::Io`] when it cannot be read.
///
/// ```
/// use cpulocal::evcnt::{self, EventCounter};
///
/// static SEEN: EventCounter = EventCounter::new("doc", "read_export");
/// SEEN.add(5);
/// let exporter = evcnt::export().unwrap();
/// let me = evcnt::read_export(std::process::id(), None).unwrap();
/// assert!(me.snapshot.events.iter().any(|e| e.name == "read_export" && e.value == 5));
/// drop(exporter);
/// assert!(evcnt::read_export(std::process::id(), None).is_err());
/// ```
pub fn read_export(pid: u32, interval: Option<Duration>) -> Result<Exported, ExportError> {
    let dir = runtime_dir()?;
    let path = dir.join(file_name(pid));
    let mut file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ExportError::NotExported { pid, path })
        }
        Err(e) => return Err(ExportError::Io(e)),
    };
    let meta = file.metadata()?;
    // SAFETY: getuid has no preconditions and cannot fail.
    if !meta.is_file() || meta.uid() != unsafe { libc::getuid() } {
        return Err(ExportError::Malformed(format!(
            "{} is not a regular file of the current user's",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    Read::by_ref(&mut file).take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    let exported = Exported::parse(&bytes)?;
    let stale = |why: String| Err(ExportError::Stale { pid, path: path.clone(), why });
    if exported.pid != pid {
        return stale(format!("it names process {}", exported.pid));
    }
    match start_time(pid) {
        None => stale(format!("process {pid} is gone")),
        Some(start) if start != exported.start => {
            stale(format!("process {pid} is not the one that wrote it (it was restarted)"))
        }
        Some(_) => {
            if let Some(interval) = interval {
                // Best effort: without it the exporter's own period applies.
                let _ = write_private(&dir.join(format!("{}.want", file_name(pid))), |f| {
                    write!(f, "{}", interval.as_millis())
                });
            }
            Ok(exported)
        }
    }
}

/// Writes `path` (mode 0600) through a temporary file renamed over it, so
/// that a reader sees the old contents or the new, whole.
fn write_private(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        fill(&mut f)?;
        f.flush()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The export in progress, if any: its file, removed at exit.
struct Published {
    path: PathBuf,
    /// The process that exports: a child forked from it must not remove
    /// its parent's file when it exits.
    pid: u32,
    /// Set at exit: write nothing more.
    exiting: bool,
}

static PUBLISHED: Mutex<Option<Published>> = Mutex::new(None);

/// The pid of the exporting process (0: none), checked at exit before
/// taking any lock: a child forked while the exporter thread held
/// [`PUBLISHED`] must neither wait for it nor remove its parent's file.
static EXPORTER_PID: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// The locks [`before_fork`] took, until the fork is over on either
    /// side.
    static HELD_OVER_FORK: std::cell::RefCell<Option<HeldOverFork>> =
        const { std::cell::RefCell::new(None) };
}

type HeldOverFork = (MutexGuard<'static, Option<Published>>, MutexGuard<'static, Registry>);

/// Makes `fork` safe for the registry and the export: a child gets them
/// unlocked. Without it, a child forked while another thread (the
/// exporter, writing its file every period, or a thread making or dropping
/// a counter) held one of their locks waited forever at its first use of
/// either: 10 of 40 children, forked while a process with 40,000 counters
/// exported every 10 ms. Registered at the registry's first use.
pub(super) fn hook_fork() {
    static HOOKED: std::sync::Once = std::sync::Once::new();
    // The handlers take and release this module's two locks in the order
    // every thread takes them (the export's, then the registry's), and
    // touch nothing else.
    HOOKED.call_once(|| crate::sys::at_fork(before_fork, after_fork));
}

/// Before `fork`: takes the export's lock, then the registry's (the
/// order in which the exporter takes them), so that no other thread holds
/// either while the process is copied.
extern "C" fn before_fork() {
    let published = PUBLISHED.lock().unwrap_or_else(PoisonError::into_inner);
    let registry = super::REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = HELD_OVER_FORK.try_with(|held| *held.borrow_mut() = Some((published, registry)));
}

/// After `fork`, in the parent and in the child: releases what
/// [`before_fork`] took (in the child, the same thread's copies).
extern "C" fn after_fork() {
    let _ = HELD_OVER_FORK.try_with(|held| drop(held.borrow_mut().take()));
}

extern "C" fn remove_at_exit() {
    if EXPORTER_PID.load(Ordering::Relaxed) != std::process::id() {
        return;
    }
    let mut published = PUBLISHED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = published.as_mut().filter(|p| p.pid == std::process::id()) {
        p.exiting = true;
        let _ = fs::remove_file(&p.path);
    }
}

/// Publishes this process's counters for `cpulocal stat PID`, rewriting
/// the file every second; see [`export_every`].
///
/// # Errors
/// As for [`export_every`].
///
/// ```
/// let exporter = cpulocal::evcnt::export().unwrap();
/// assert!(exporter.path().exists());
/// let path = exporter.path().to_owned();
/// drop(exporter); // stops, and removes the file
/// assert!(!path.exists());
/// ```
pub fn export() -> io::Result<Exporter> {
    export_every(Duration::from_secs(1))
}

/// Publishes this process's counters in a file of the user's runtime
/// directory (see `cpulocal stat`), rewritten every `period` by a
/// background thread, and sooner while a reader asks for it.
///
/// The file is removed when the returned [`Exporter`] is dropped, and at
/// normal process exit (`exit`, or `main` returning) if it is still there.
/// A process killed by a signal leaves it behind; readers then see that
/// the process is gone and say the file is stale.
///
/// # Errors
/// - the runtime directory cannot be made, or is not the user's alone
///   ([`io::ErrorKind::PermissionDenied`]);
/// - the file cannot be written;
/// - this process already exports ([`io::ErrorKind::AlreadyExists`]);
/// - the thread cannot be started.
///
/// ```
/// use std::time::Duration;
/// let exporter = cpulocal::evcnt::export_every(Duration::from_millis(100)).unwrap();
/// assert!(cpulocal::evcnt::export().is_err()); // one at a time
/// drop(exporter);
/// ```
pub fn export_every(period: Duration) -> io::Result<Exporter> {
    let period = period.max(MIN_PERIOD);
    let dir = runtime_dir()?;
    let pid = std::process::id();
    let path = dir.join(file_name(pid));
    let want = dir.join(format!("{}.want", file_name(pid)));
    let start = start_time(pid)
        .ok_or_else(|| io::Error::other("cannot read this process's start time from /proc"))?;
    {
        let mut published = PUBLISHED.lock().unwrap_or_else(PoisonError::into_inner);
        // One inherited from the parent across `fork` is not ours: its
        // thread does not exist here, and its file is the parent's.
        if published.as_ref().is_some_and(|p| p.pid == pid) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "this process already exports its counters",
            ));
        }
        let _ = fs::remove_file(&want);
        write_file(&path, start, period)?;
        *published = Some(Published { path: path.clone(), pid, exiting: false });
        EXPORTER_PID.store(pid, Ordering::Relaxed);
    }
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    // SAFETY: `remove_at_exit` is a plain function that only takes a lock
    // and removes a file; failure to register only leaves the file behind.
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(remove_at_exit);
    });
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let thread = {
        let (stop, path, want) = (Arc::clone(&stop), path.clone(), want.clone());
        thread::Builder::new()
            .name("cpulocal-evcnt-export".into())
            .spawn(move || export_loop(&path, &want, start, period, &stop))
    };
    match thread {
        Ok(thread) => Ok(Exporter { path, want, stop, thread: Some(thread), pid }),
        Err(e) => {
            unpublish(&path, &want);
            Err(e)
        }
    }
}

fn write_file(path: &Path, start: u64, period: Duration) -> io::Result<()> {
    let bytes = Exported::new(std::process::id(), start, period, snapshot()).encode();
    write_private(path, |f| f.write_all(&bytes))
}

fn export_loop(
    path: &Path,
    want: &Path,
    start: u64,
    period: Duration,
    stop: &(Mutex<bool>, Condvar),
) {
    let (lock, wake) = stop;
    let mut stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
    while !*stopped {
        let wait = wanted(want).map_or(period, |w| w.min(period));
        stopped = wake.wait_timeout(stopped, wait).unwrap_or_else(PoisonError::into_inner).0;
        if *stopped {
            break;
        }
        let published = PUBLISHED.lock().unwrap_or_else(PoisonError::into_inner);
        match published.as_ref() {
            Some(p) if !p.exiting => {
                // A failed write leaves the last good file, which readers
                // see age; try again next period.
                let _ = write_file(path, start, period);
            }
            _ => break,
        }
    }
}

/// The interval a reader asked for, if it asked in the last ten seconds.
fn wanted(want: &Path) -> Option<Duration> {
    let meta = fs::symlink_metadata(want).ok()?;
    if !meta.is_file() || meta.len() > 32 {
        return None;
    }
    let age = meta.modified().ok()?.elapsed().unwrap_or_default();
    if age > WANT_TTL {
        return None;
    }
    let ms: u64 = fs::read_to_string(want).ok()?.trim().parse().ok()?;
    Some(Duration::from_millis(ms).max(MIN_PERIOD))
}

fn unpublish(path: &Path, want: &Path) {
    let mut published = PUBLISHED.lock().unwrap_or_else(PoisonError::into_inner);
    // Not a later export's (of a forked child) that replaced ours.
    if published.as_ref().is_some_and(|p| p.path != path) {
        return;
    }
    *published = None;
    EXPORTER_PID.store(0, Ordering::Relaxed);
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(want);
}

/// A running export, from [`export`]: dropping it stops the thread and
/// removes the file.
#[must_use = "dropping the Exporter stops the export at once"]
pub struct Exporter {
    path: PathBuf,
    want: PathBuf,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    /// The process that started the export: a child forked from it that
    /// drops its copy of the `Exporter` has no such thread and no file.
    pid: u32,
}

impl Exporter {
    /// The file readers read.
    ///
    /// ```
    /// let exporter = cpulocal::evcnt::export().unwrap();
    /// let name = exporter.path().file_name().unwrap().to_str().unwrap();
    /// assert_eq!(name, format!("evcnt.{}", std::process::id()));
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            // A copy inherited across `fork`: the thread is the parent's
            // (joining it here panicked) and so is the file. Its handle and
            // the stop flag, which the parent's thread may have held at the
            // fork, are left alone.
            std::mem::forget(self.thread.take());
            return;
        }
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        unpublish(&self.path, &self.want);
    }
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter").field("path", &self.path).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_stable_and_dead_pids_have_none() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(start_time(me), start_time(me));
        assert_eq!(start_time(u32::MAX), None);
    }

    /// Whatever the registry holds, the file written is one the reader
    /// accepts: long names cut, counters past the limits left out.
    #[test]
    fn what_is_encoded_parses_whatever_the_names_and_counts() {
        let long = "é".repeat(2_000) + "x"; // 4,001 bytes, cut inside no character
        let mut events = vec![Event::new("g", long.as_str(), Kind::Misc, 1)];
        events.extend((0..MAX_EVENTS).map(|i| Event::new("many", format!("c{i}"), Kind::Misc, 2)));
        let snapshot = Snapshot::new(UNIX_EPOCH + Duration::from_secs(5), events);
        let e = Exported::new(1, 2, Duration::from_secs(1), snapshot);
        let parsed = Exported::parse(&e.encode()).expect("the encoding parses");
        assert_eq!(parsed.snapshot.events.len(), MAX_EVENTS);
        let cut = parsed.snapshot.events.iter().find(|e| e.group == "g").unwrap();
        assert_eq!(cut.name, "é".repeat(MAX_NAME / 2));
        // Names so long that the file would pass 16 MiB: cut off there.
        let huge = "%".repeat(MAX_NAME); // 3 bytes a character encoded
        let events =
            (0..10_000).map(|i| Event::new(huge.as_str(), format!("{i}{huge}"), Kind::Misc, 3));
        let snapshot = Snapshot::new(UNIX_EPOCH, events.collect());
        let bytes = Exported::new(1, 2, Duration::from_secs(1), snapshot).encode();
        assert!(bytes.len() as u64 <= MAX_FILE);
        let parsed = Exported::parse(&bytes).expect("the encoding parses");
        assert!((2_000..10_000).contains(&parsed.snapshot.events.len()));
    }

    #[test]
    fn names_round_trip_through_the_encoding() {
        for s in ["plain", "with space", "100%", "tab\there", "ünï", "new\nline", ""] {
            assert_eq!(decode_name(&encode_name(s)).unwrap(), s);
        }
        assert!(decode_name("%G0").is_err());
        assert!(decode_name("%4").is_err());
        assert!(decode_name("%FF").is_err(), "a lone 0xff is not UTF-8");
    }
}
