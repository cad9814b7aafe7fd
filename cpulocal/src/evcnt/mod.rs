//! Event counters by group and name, as in NetBSD's evcnt(9), and the ways
//! to read them: a `vmstat -e` table, Prometheus, and a live view from
//! outside the process.
//!
//! - [`EventCounter`]: a per-CPU counter with a group, a name and a
//!   [`Kind`], usable as a `static`. It is listed in the process-wide
//!   registry from its first use until it is dropped.
//! - [`snapshot`]: every live counter's value now; a [`Snapshot`] prints as
//!   a table ([`Snapshot::write_table`], what `vmstat -e` shows) or in the
//!   Prometheus text format ([`Snapshot::write_prometheus`]).
//! - [`export`]: publishes the registry in a file that `cpulocal stat PID`
//!   reads from another process.
//! - `serve` (feature `http`): a `/metrics` endpoint.
//! - `Recorder` (feature `metrics`): the `metrics` crate's recorder, with
//!   per-CPU counters.
//!
//! ```
//! use cpulocal::evcnt::{self, EventCounter, Kind};
//!
//! static RX: EventCounter = EventCounter::new("net", "rx packets");
//! static FAULTS: EventCounter = EventCounter::with_kind(Kind::Trap, "vm", "page faults");
//!
//! RX.add(3);
//! FAULTS.inc();
//!
//! let mut table = Vec::new();
//! evcnt::write_table(&mut table, None).unwrap();
//! let table = String::from_utf8(table).unwrap();
//! assert!(table.contains("net rx packets"));
//! assert!(table.lines().any(|l| l.starts_with("vm page faults") && l.ends_with("trap")));
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io::{self, Write};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::cpu;
use crate::ops::{self, Words};
use crate::percpu::{AllocError, LazyPercpu};

mod export;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "metrics")]
mod metrics;

pub use export::{export, export_every, read_export, ExportError, Exported, Exporter};
#[cfg(feature = "http")]
pub use http::{serve, Server};
#[cfg(feature = "metrics")]
pub use metrics::Recorder;

/// What kind of event a counter counts, like NetBSD's `EVCNT_TYPE_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Anything else (`EVCNT_TYPE_MISC`).
    Misc,
    /// Interrupts (`EVCNT_TYPE_INTR`).
    Intr,
    /// Traps and faults (`EVCNT_TYPE_TRAP`).
    Trap,
}

impl Kind {
    /// The name `vmstat -e` prints: `misc`, `intr` or `trap`.
    ///
    /// ```
    /// assert_eq!(cpulocal::evcnt::Kind::Intr.as_str(), "intr");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Misc => "misc",
            Kind::Intr => "intr",
            Kind::Trap => "trap",
        }
    }

    /// The kind named `name` (as [`as_str`](Self::as_str) writes it).
    ///
    /// ```
    /// use cpulocal::evcnt::Kind;
    /// assert_eq!(Kind::from_name("trap"), Some(Kind::Trap));
    /// assert_eq!(Kind::from_name("TRAP"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::Misc, Kind::Intr, Kind::Trap].into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registered counter, owned by the registry and its [`EventCounter`]
/// together; it stays at one address however the counter moves.
struct Entry {
    /// Its key in the registry, set as it registers (under the lock).
    id: AtomicU64,
    group: Cow<'static, str>,
    name: Cow<'static, str>,
    kind: Kind,
    /// Slot 0 of the counter's per-CPU words, once allocated. Freed only
    /// after the entry has left the registry.
    words: AtomicPtr<u8>,
    /// What was counted while the per-CPU words could not be allocated.
    fallback: AtomicU64,
    /// Whether `fallback` was ever used.
    failed: AtomicBool,
}

impl Entry {
    fn value(&self) -> u64 {
        let fallback = self.fallback.load(Ordering::Relaxed);
        // SAFETY: a non-null `words` is the counter's 8-byte, 8-aligned,
        // zeroed per-CPU allocation; callers hold the registry lock or the
        // counter itself, either of which keeps it from being freed.
        let words =
            ptr::NonNull::new(self.words.load(Ordering::Acquire)).map(|p| unsafe { Words::new(p) });
        words.map_or(0, Words::sum).wrapping_add(fallback)
    }
}

/// Every registered counter's entry, by a number given in the order they
/// registered (the order snapshots keep among counters of one name). A
/// map, not a list: a counter leaves it in `log n` (removing from a list
/// by a scan made dropping 80,000 counters take 5.6 s; now milliseconds).
pub(super) struct Registry {
    next: u64,
    entries: BTreeMap<u64, Arc<Entry>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { next: 0, entries: BTreeMap::new() });

fn registry() -> MutexGuard<'static, Registry> {
    export::hook_fork();
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A per-CPU event counter with a group, a name and a [`Kind`], listed in
/// the process-wide registry (see the [module docs](self)).
///
/// Counting is as cheap as [`Counter`](crate::Counter)'s: after the first
/// use, [`add`](Self::add) is one load and the per-CPU add.
///
/// ```
/// use cpulocal::evcnt::EventCounter;
///
/// static OPENS: EventCounter = EventCounter::new("vfs", "open");
///
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| (0..100).for_each(|_| OPENS.inc()));
///     }
/// });
/// assert_eq!(OPENS.value(), 400);
/// let listed = cpulocal::evcnt::snapshot();
/// assert!(listed.events.iter().any(|e| e.group == "vfs" && e.name == "open" && e.value == 400));
/// ```
///
/// If the per-CPU words cannot be allocated on first use, counting goes on
/// in one atomic word, the next use tries again, and the registry marks the
/// counter ([`Event::alloc_failed`]); see also
/// [`try_init`](Self::try_init).
pub struct EventCounter {
    group: Cow<'static, str>,
    name: Cow<'static, str>,
    kind: Kind,
    words: LazyPercpu,
    /// This counter's registry entry (from `Arc::into_raw`), or null until
    /// the first use.
    entry: AtomicPtr<Entry>,
}

impl EventCounter {
    /// A counter of kind [`Kind::Misc`] at zero. Allocates and registers
    /// nothing until the first use.
    ///
    /// ```
    /// static HITS: cpulocal::evcnt::EventCounter =
    ///     cpulocal::evcnt::EventCounter::new("cache", "hits");
    /// HITS.inc();
    /// assert_eq!(HITS.value(), 1);
    /// ```
    pub const fn new(group: &'static str, name: &'static str) -> EventCounter {
        EventCounter::with_kind(Kind::Misc, group, name)
    }

    /// A counter of kind `kind` at zero. Allocates and registers nothing
    /// until the first use.
    ///
    /// ```
    /// use cpulocal::evcnt::{EventCounter, Kind};
    /// static TICKS: EventCounter = EventCounter::with_kind(Kind::Intr, "timer", "ticks");
    /// assert_eq!(TICKS.kind(), Kind::Intr);
    /// ```
    pub const fn with_kind(kind: Kind, group: &'static str, name: &'static str) -> EventCounter {
        EventCounter {
            group: Cow::Borrowed(group),
            name: Cow::Borrowed(name),
            kind,
            words: LazyPercpu::new(8, 8),
            entry: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// A counter with names made at run time (one per device, say), listed
    /// in the registry from now until it is dropped.
    ///
    /// ```
    /// use cpulocal::evcnt::{self, EventCounter, Kind};
    ///
    /// let queues: Vec<EventCounter> = (0..2)
    ///     .map(|q| EventCounter::dynamic(Kind::Intr, "nic0", format!("queue{q} rx")))
    ///     .collect();
    /// assert!(evcnt::snapshot().events.iter().any(|e| e.name == "queue1 rx"));
    /// drop(queues);
    /// assert!(!evcnt::snapshot().events.iter().any(|e| e.name == "queue1 rx"));
    /// ```
    pub fn dynamic(
        kind: Kind,
        group: impl Into<Cow<'static, str>>,
        name: impl Into<Cow<'static, str>>,
    ) -> EventCounter {
        let counter = EventCounter {
            group: group.into(),
            name: name.into(),
            kind,
            words: LazyPercpu::new(8, 8),
            entry: AtomicPtr::new(ptr::null_mut()),
        };
        counter.entry();
        counter
    }

    /// The group.
    ///
    /// ```
    /// assert_eq!(cpulocal::evcnt::EventCounter::new("net", "rx").group(), "net");
    /// ```
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The name.
    ///
    /// ```
    /// assert_eq!(cpulocal::evcnt::EventCounter::new("net", "rx").name(), "rx");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kind.
    ///
    /// ```
    /// use cpulocal::evcnt::{EventCounter, Kind};
    /// assert_eq!(EventCounter::new("net", "rx").kind(), Kind::Misc);
    /// ```
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Adds one.
    ///
    /// ```
    /// let c = cpulocal::evcnt::EventCounter::new("doc", "inc");
    /// c.inc();
    /// assert_eq!(c.value(), 1);
    /// ```
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n` (wrapping) to the current CPU's count.
    ///
    /// ```
    /// let c = cpulocal::evcnt::EventCounter::new("doc", "add");
    /// c.add(1500);
    /// assert_eq!(c.value(), 1500);
    /// ```
    #[inline]
    pub fn add(&self, n: u64) {
        if !ops::add_inline(self.words.lazy_ptr(), n) {
            self.add_slow(n);
        }
    }

    #[cold]
    #[inline(never)]
    fn add_slow(&self, n: u64) {
        if let Some(ptr0) = self.words.get() {
            // SAFETY: `ptr0` is the published 8-byte, 8-aligned, zeroed
            // allocation, freed only when `self` is dropped.
            unsafe { Words::new(ptr0) }.add(n);
            return cpu::arm_fast_path();
        }
        let entry = self.entry();
        match self.words.get_or_alloc() {
            Ok(ptr0) => {
                entry.words.store(ptr0.as_ptr(), Ordering::Release);
                // SAFETY: as in the first use above.
                unsafe { Words::new(ptr0) }.add(n);
                cpu::arm_fast_path();
            }
            Err(_) => {
                entry.failed.store(true, Ordering::Relaxed);
                entry.fallback.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// This counter's registry entry, registering it on the first call.
    fn entry(&self) -> &Entry {
        let current = self.entry.load(Ordering::Acquire);
        if !current.is_null() {
            // SAFETY: a published entry lives until `self` is dropped.
            return unsafe { &*current };
        }
        let ours = Arc::new(Entry {
            id: AtomicU64::new(0),
            group: self.group.clone(),
            name: self.name.clone(),
            kind: self.kind,
            words: AtomicPtr::new(ptr::null_mut()),
            fallback: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        });
        let raw = Arc::into_raw(Arc::clone(&ours)).cast_mut();
        match self.entry.compare_exchange(ptr::null_mut(), raw, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                let mut registry = registry();
                let id = registry.next;
                registry.next += 1;
                ours.id.store(id, Ordering::Relaxed);
                registry.entries.insert(id, ours);
                // SAFETY: just published; lives until `self` is dropped.
                unsafe { &*raw }
            }
            Err(theirs) => {
                // SAFETY: `raw` came from `Arc::into_raw` above and was not
                // published.
                drop(unsafe { Arc::from_raw(raw) });
                // SAFETY: as for `current`.
                unsafe { &*theirs }
            }
        }
    }

    /// The total over every CPU. Updates racing with it are either in it or
    /// not; with no concurrent updates it is exact.
    ///
    /// ```
    /// let c = cpulocal::evcnt::EventCounter::new("doc", "value");
    /// assert_eq!(c.value(), 0);
    /// c.add(2);
    /// assert_eq!(c.value(), 2);
    /// ```
    pub fn value(&self) -> u64 {
        let entry = self.entry.load(Ordering::Acquire);
        if entry.is_null() {
            return 0;
        }
        // SAFETY: a published entry lives until `self` is dropped. Words
        // published by another thread but not yet in the entry are read
        // here directly.
        let entry = unsafe { &*entry };
        match self.words.get() {
            // SAFETY: as in `add`.
            Some(ptr0) => unsafe { Words::new(ptr0) }
                .sum()
                .wrapping_add(entry.fallback.load(Ordering::Relaxed)),
            None => entry.value(),
        }
    }

    /// Allocates the per-CPU words and registers the counter now, if not
    /// yet done.
    ///
    /// # Errors
    /// [`AllocError`] when per-CPU memory cannot be had. The counter is
    /// registered and counts in its fallback word all the same.
    ///
    /// ```
    /// static JOBS: cpulocal::evcnt::EventCounter = cpulocal::evcnt::EventCounter::new("q", "jobs");
    /// JOBS.try_init().expect("per-CPU memory");
    /// assert!(cpulocal::evcnt::snapshot().events.iter().any(|e| e.name == "jobs"));
    /// ```
    pub fn try_init(&self) -> Result<(), AllocError> {
        let entry = self.entry();
        let ptr0 = self.words.get_or_alloc()?;
        entry.words.store(ptr0.as_ptr(), Ordering::Release);
        Ok(())
    }
}

impl Drop for EventCounter {
    fn drop(&mut self) {
        let entry = *self.entry.get_mut();
        if entry.is_null() {
            return;
        }
        // Leave the registry before the words are freed (after this body,
        // when `words` drops): snapshots read them under the registry lock.
        // SAFETY: `entry` came from `Arc::into_raw` in `entry()` and is
        // released only below.
        let id = unsafe { &*entry }.id.load(Ordering::Relaxed);
        registry().entries.remove(&id);
        // SAFETY: `entry` came from `Arc::into_raw` in `entry()`.
        drop(unsafe { Arc::from_raw(entry) });
    }
}

impl fmt::Debug for EventCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventCounter")
            .field("group", &self.group)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("value", &self.value())
            .finish()
    }
}

/// One counter in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The counter's group.
    pub group: String,
    /// The counter's name.
    pub name: String,
    /// The counter's kind.
    pub kind: Kind,
    /// The counter's value when the snapshot was taken.
    pub value: u64,
    /// Whether the counter could not get per-CPU memory and counted (some
    /// or all of the time) in a single fallback word.
    pub alloc_failed: bool,
}

impl Event {
    /// An event, as a snapshot read from elsewhere holds it.
    ///
    /// ```
    /// use cpulocal::evcnt::{Event, Kind};
    /// let e = Event::new("net", "rx", Kind::Misc, 5);
    /// assert_eq!((e.value, e.alloc_failed), (5, false));
    /// ```
    pub fn new(group: impl Into<String>, name: impl Into<String>, kind: Kind, value: u64) -> Event {
        Event { group: group.into(), name: name.into(), kind, value, alloc_failed: false }
    }
}

/// The registry at one moment: every live counter, sorted by group, then
/// name, then kind.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// When it was taken.
    pub taken: SystemTime,
    /// The counters.
    pub events: Vec<Event>,
}

/// Every live counter's group, name, kind and value now.
///
/// ```
/// static SENT: cpulocal::evcnt::EventCounter = cpulocal::evcnt::EventCounter::new("mail", "sent");
/// SENT.add(2);
/// let s = cpulocal::evcnt::snapshot();
/// let sent = s.events.iter().find(|e| e.group == "mail" && e.name == "sent").unwrap();
/// assert_eq!(sent.value, 2);
/// ```
pub fn snapshot() -> Snapshot {
    let events = registry()
        .entries
        .values()
        .map(|e| Event {
            group: e.group.clone().into_owned(),
            name: e.name.clone().into_owned(),
            kind: e.kind,
            value: e.value(),
            alloc_failed: e.failed.load(Ordering::Relaxed),
        })
        .collect();
    Snapshot::new(SystemTime::now(), events)
}

/// [`snapshot()`] printed as `vmstat -e` does; see
/// [`Snapshot::write_table`].
///
/// # Errors
/// Whatever writing to `out` returns.
///
/// ```
/// static IRQ: cpulocal::evcnt::EventCounter = cpulocal::evcnt::EventCounter::new("pic", "irq 4");
/// IRQ.inc();
/// let mut out = Vec::new();
/// cpulocal::evcnt::write_table(&mut out, None).unwrap();
/// assert!(String::from_utf8(out).unwrap().starts_with("event"));
/// ```
pub fn write_table<W: Write>(out: W, previous: Option<&Snapshot>) -> io::Result<()> {
    snapshot().write_table(out, previous)
}

/// [`snapshot()`] in the Prometheus text format; see
/// [`Snapshot::write_prometheus`].
///
/// # Errors
/// Whatever writing to `out` returns.
///
/// ```
/// static GETS: cpulocal::evcnt::EventCounter = cpulocal::evcnt::EventCounter::new("http", "GET");
/// GETS.add(7);
/// let mut out = Vec::new();
/// cpulocal::evcnt::write_prometheus(&mut out).unwrap();
/// let text = String::from_utf8(out).unwrap();
/// assert!(text.contains(r#"evcnt_total{group="http",name="GET",type="misc"} 7"#));
/// ```
pub fn write_prometheus<W: Write>(out: W) -> io::Result<()> {
    snapshot().write_prometheus(out)
}

/// The Prometheus metric family every counter is a series of.
pub const PROMETHEUS_FAMILY: &str = "evcnt_total";

impl Snapshot {
    /// A snapshot of `events` taken at `taken`; the events are sorted by
    /// group, then name, then kind.
    ///
    /// ```
    /// use cpulocal::evcnt::{Event, Kind, Snapshot};
    /// let s = Snapshot::new(
    ///     std::time::SystemTime::now(),
    ///     vec![Event::new("b", "x", Kind::Misc, 1), Event::new("a", "y", Kind::Misc, 2)],
    /// );
    /// assert_eq!(s.events[0].group, "a");
    /// ```
    pub fn new(taken: SystemTime, mut events: Vec<Event>) -> Snapshot {
        events.sort_by(|a, b| (&a.group, &a.name, a.kind).cmp(&(&b.group, &b.name, b.kind)));
        Snapshot { taken, events }
    }

    /// Prints the counters as `vmstat -e` does: one aligned line per
    /// counter with its event (group and name), total, and type, and, when
    /// `previous` is given, its rate per second since then (a counter that
    /// went down, or is new since `previous`, shows `-`). Counters that
    /// share a group, name and kind are told apart by their order (the
    /// order they were registered in): the first with the first.
    ///
    /// Names are printed with control characters escaped, so a hostile name
    /// cannot drive the terminal.
    ///
    /// # Errors
    /// Whatever writing to `out` returns.
    ///
    /// ```
    /// use cpulocal::evcnt::{Event, Kind, Snapshot};
    /// use std::time::{Duration, UNIX_EPOCH};
    ///
    /// let at = |s| UNIX_EPOCH + Duration::from_secs(s);
    /// let before = Snapshot::new(at(10), vec![Event::new("net", "rx", Kind::Intr, 100)]);
    /// let now = Snapshot::new(at(12), vec![Event::new("net", "rx", Kind::Intr, 300)]);
    /// let mut out = Vec::new();
    /// now.write_table(&mut out, Some(&before)).unwrap();
    /// assert_eq!(
    ///     String::from_utf8(out).unwrap(),
    ///     "event  total rate type\nnet rx   300  100 intr\n"
    /// );
    /// ```
    pub fn write_table<W: Write>(&self, mut out: W, previous: Option<&Snapshot>) -> io::Result<()> {
        let elapsed = previous.and_then(|p| self.taken.duration_since(p.taken).ok());
        let elapsed = elapsed.filter(|d| *d > Duration::ZERO);
        // Each counter's value in `previous`: counters that share a group,
        // name and kind are paired in the order they come (the registry's,
        // which a snapshot's sort keeps), the n-th with the n-th.
        let mut before: HashMap<(&str, &str, Kind), VecDeque<u64>> = HashMap::new();
        for o in previous.map_or(&[][..], |p| &p.events[..]) {
            before.entry((&o.group, &o.name, o.kind)).or_default().push_back(o.value);
        }
        let rows: Vec<(String, String, Option<String>, &str)> = self
            .events
            .iter()
            .map(|e| {
                let event = format!("{} {}", printable(&e.group), printable(&e.name));
                let total = e.value.to_string();
                let then =
                    before.get_mut(&(&e.group, &e.name, e.kind)).and_then(VecDeque::pop_front);
                let rate = elapsed.map(|d| match then.and_then(|b| e.value.checked_sub(b)) {
                    Some(delta) => format!("{:.0}", delta as f64 / d.as_secs_f64()),
                    None => "-".to_string(),
                });
                let kind = if e.alloc_failed { fallback_kind(e.kind) } else { e.kind.as_str() };
                (event, total, rate, kind)
            })
            .collect();
        type Row<'a> = (String, String, Option<String>, &'a str);
        let width = |f: &dyn Fn(&Row) -> usize, min| rows.iter().map(f).max().unwrap_or(0).max(min);
        let ew = width(&|r| r.0.chars().count(), "event".len());
        let tw = width(&|r| r.1.len(), "total".len());
        let rw = width(&|r| r.2.as_ref().map_or(0, String::len), "rate".len());
        let mut buf = String::new();
        use fmt::Write as _;
        let _ = write!(buf, "{:<ew$} {:>tw$}", "event", "total");
        if elapsed.is_some() {
            let _ = write!(buf, " {:>rw$}", "rate");
        }
        buf.push_str(" type\n");
        for (event, total, rate, kind) in &rows {
            let _ = write!(buf, "{event:<ew$} {total:>tw$}");
            if let Some(rate) = rate {
                let _ = write!(buf, " {rate:>rw$}");
            }
            let _ = writeln!(buf, " {kind}");
        }
        out.write_all(buf.as_bytes())
    }

    /// Prints the counters in the Prometheus text exposition format
    /// (version 0.0.4): one counter family, [`PROMETHEUS_FAMILY`], with one
    /// series per counter labelled `group`, `name` and `type`. Label values
    /// are escaped; counters with the same labels are summed into one
    /// series.
    ///
    /// # Errors
    /// Whatever writing to `out` returns.
    ///
    /// ```
    /// use cpulocal::evcnt::{Event, Kind, Snapshot};
    /// let s = Snapshot::new(
    ///     std::time::SystemTime::now(),
    ///     vec![Event::new("disk", "say \"hi\"", Kind::Misc, 3)],
    /// );
    /// let mut out = Vec::new();
    /// s.write_prometheus(&mut out).unwrap();
    /// assert!(String::from_utf8(out)
    ///     .unwrap()
    ///     .contains(r#"evcnt_total{group="disk",name="say \"hi\"",type="misc"} 3"#));
    /// ```
    pub fn write_prometheus<W: Write>(&self, mut out: W) -> io::Result<()> {
        use fmt::Write as _;
        let mut buf = String::new();
        let _ =
            writeln!(buf, "# HELP {PROMETHEUS_FAMILY} Event counters (evcnt) by group and name.");
        let _ = writeln!(buf, "# TYPE {PROMETHEUS_FAMILY} counter");
        let mut i = 0;
        while i < self.events.len() {
            let e = &self.events[i];
            let mut value = e.value;
            i += 1;
            // Sorted, so counters with the same labels are adjacent.
            while i < self.events.len() && same_counter(&self.events[i], e) {
                value = value.wrapping_add(self.events[i].value);
                i += 1;
            }
            let _ = writeln!(
                buf,
                "{PROMETHEUS_FAMILY}{{group=\"{}\",name=\"{}\",type=\"{}\"}} {value}",
                label_value(&e.group),
                label_value(&e.name),
                e.kind
            );
        }
        out.write_all(buf.as_bytes())
    }
}

fn same_counter(a: &Event, b: &Event) -> bool {
    a.group == b.group && a.name == b.name && a.kind == b.kind
}

/// The type column of a counter that could not get per-CPU memory.
fn fallback_kind(kind: Kind) -> &'static str {
    match kind {
        Kind::Misc => "misc (no per-CPU memory)",
        Kind::Intr => "intr (no per-CPU memory)",
        Kind::Trap => "trap (no per-CPU memory)",
    }
}

/// `s` with control characters (and the replacement character) escaped, so
/// that printing it cannot move the cursor or change the terminal.
pub(crate) fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\u{fffd}') {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() || c == '\u{fffd}' {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// `s` escaped as a Prometheus label value: `\`, `"` and line feeds.
pub(crate) fn label_value(s: &str) -> Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}
