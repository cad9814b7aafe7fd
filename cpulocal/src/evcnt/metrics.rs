//! A `metrics` crate recorder with per-CPU counters (feature `metrics`).

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use metrics::{
    CounterFn, GaugeFn, HistogramFn, Key, KeyName, Metadata, SetRecorderError, SharedString, Unit,
};

use crate::percpu::AllocError;
use crate::{Counter, RwLock};

/// The histogram buckets' upper bounds: Prometheus's client defaults.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A [`metrics::Recorder`] whose counters are per-CPU [`Counter`]s, so that
/// `metrics::counter!(..).increment(n)` from many threads touches no shared
/// cache line for the count itself.
///
/// Gauges are one atomic `f64` each; histograms keep a count, a sum and
/// cumulative buckets (Prometheus's default bounds) under a lock. The
/// registry of metrics is a [`RwLock`](crate::RwLock), whose readers, the
/// macros looking up their handle, do not contend either.
///
/// [`write_prometheus`](Self::write_prometheus) prints every metric in the
/// Prometheus text format; once [`install`](Self::install)ed, `serve`
/// (feature `http`) serves them with the event counters.
///
/// # Names in the Prometheus text
///
/// The `metrics` macros take any names and labels; the text format does
/// not, and a scraper rejects the whole text for one bad line. So the
/// output is made valid whatever was recorded, by these rules:
///
/// - Metric names: characters other than `[a-zA-Z0-9_:]` become `_`, and a
///   name that is empty or starts with a digit gets a `_` in front.
///   Label names likewise, with `:` also becoming `_` (not allowed there).
/// - Metrics of one kind whose names clean alike (`a.b` and `a-b`) are one
///   family, `a_b`. Their series with the same labels are merged: counters
///   and histograms summed, and of gauges the one whose metric name (then
///   labels) sorts first kept.
/// - Families are named in order of their cleaned names, and of kind
///   (counter, gauge, histogram) for one name: each keeps its name unless
///   that name, or for a histogram one of its series' names (`_bucket`,
///   `_sum`, `_count`), is already taken. Such a family is renamed with its
///   kind as a suffix (`same_gauge`, then `same_gauge_2`, ...), to a name no
///   other family has or would have kept. So a counter and a gauge both
///   named `same` give a counter `same` and a gauge `same_gauge`; a counter
///   `h_count` beside a histogram `h` becomes `h_count_counter`.
/// - [`PROMETHEUS_FAMILY`](super::PROMETHEUS_FAMILY), `evcnt_total`, is
///   left to the event counters, so that `serve`'s text, theirs followed by
///   the recorder's, is valid too: a metric named so is renamed as above.
/// - Labels whose names Prometheus reserves, those starting with `__` and
///   `le` on a histogram (it holds the bucket bounds), get `exported_` in
///   front, as Prometheus does with the labels it must rename, repeatedly
///   until the name is that of no other label of the metric.
/// - A label name given twice (as written, or once cleaned) keeps its
///   first value; the later are dropped. Series then the same are merged
///   as above, as are those whose labels differ only in order.
/// - Labels are written sorted by name; `le` comes last.
///
/// A description (`describe_*`) applies to the family of the metrics of
/// its name; one given for another kind is used when its own kind has none.
///
/// ```
/// use cpulocal::evcnt::Recorder;
///
/// let recorder = Recorder::new();
/// metrics::with_local_recorder(&recorder, || {
///     metrics::counter!("requests", "path" => "/").increment(2);
///     metrics::gauge!("queue_depth").set(5.0);
///     metrics::histogram!("latency_seconds").record(0.02);
/// });
/// let mut out = Vec::new();
/// recorder.write_prometheus(&mut out).unwrap();
/// let text = String::from_utf8(out).unwrap();
/// assert!(text.contains("requests{path=\"/\"} 2\n"));
/// assert!(text.contains("queue_depth 5\n"));
/// assert!(text.contains("latency_seconds_bucket{le=\"0.025\"} 1\n"));
/// ```
///
/// Names that clash:
///
/// ```
/// let recorder = cpulocal::evcnt::Recorder::new();
/// metrics::with_local_recorder(&recorder, || {
///     metrics::counter!("same", "k" => "1", "k" => "2").increment(1);
///     metrics::gauge!("same").set(2.0);
///     metrics::histogram!("lat", "le" => "x").record(0.2);
/// });
/// let mut out = Vec::new();
/// recorder.write_prometheus(&mut out).unwrap();
/// let text = String::from_utf8(out).unwrap();
/// assert!(text.contains("# TYPE same counter\nsame{k=\"1\"} 1\n"));
/// assert!(text.contains("# TYPE same_gauge gauge\nsame_gauge 2\n"));
/// assert!(text.contains("lat_bucket{exported_le=\"x\",le=\"0.25\"} 1\n"));
/// ```
pub struct Recorder {
    /// Boxed: the lock and maps are large, and a `Recorder` moves (into
    /// `install`'s error, for one).
    metrics: Box<RwLock<Metrics>>,
}

#[derive(Default)]
struct Metrics {
    counters: Map<PerCpuCounter>,
    gauges: Map<AtomicGauge>,
    histograms: Map<LockedHistogram>,
    /// Descriptions by metric name and the kind they were given for.
    help: HashMap<(KeyName, MetricKind), (Option<Unit>, SharedString)>,
}

/// The recorder [`Recorder::install`] made global.
static INSTALLED: OnceLock<&'static Recorder> = OnceLock::new();

#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(super) fn installed() -> Option<&'static Recorder> {
    INSTALLED.get().copied()
}

impl Recorder {
    /// An empty recorder.
    ///
    /// # Panics
    /// If per-CPU memory cannot be had; see [`Recorder::try_new`].
    ///
    /// ```
    /// let recorder = cpulocal::evcnt::Recorder::new();
    /// # drop(recorder);
    /// ```
    pub fn new() -> Recorder {
        Recorder::try_new().unwrap_or_else(|e| panic!("Recorder: {e}"))
    }

    /// An empty recorder, or the reason per-CPU memory could not be had.
    ///
    /// # Errors
    /// [`AllocError`] when the per-CPU regions have no room or the system
    /// refuses memory.
    ///
    /// ```
    /// let recorder = cpulocal::evcnt::Recorder::try_new().unwrap();
    /// # drop(recorder);
    /// ```
    pub fn try_new() -> Result<Recorder, AllocError> {
        Ok(Recorder { metrics: Box::new(RwLock::try_new(Metrics::default())?) })
    }

    /// Makes this the process's global recorder, for the `metrics` macros
    /// everywhere, and for `serve`.
    ///
    /// # Errors
    /// If a global recorder is already set; the error holds this recorder.
    ///
    /// ```no_run
    /// let recorder = cpulocal::evcnt::Recorder::new().install().unwrap();
    /// metrics::counter!("jobs_done").increment(1);
    /// let mut out = Vec::new();
    /// recorder.write_prometheus(&mut out).unwrap();
    /// ```
    pub fn install(self) -> Result<&'static Recorder, SetRecorderError<Recorder>> {
        if INSTALLED.get().is_some() {
            return Err(SetRecorderError(self));
        }
        let recorder: &'static Recorder = Box::leak(Box::new(self));
        match metrics::set_global_recorder(recorder) {
            Ok(()) => {
                let _ = INSTALLED.set(recorder);
                Ok(recorder)
            }
            Err(_) => {
                // SAFETY: `recorder` was leaked just above and was not
                // installed, so this is its only reference.
                let recorder = unsafe { Box::from_raw(std::ptr::from_ref(recorder).cast_mut()) };
                Err(SetRecorderError(*recorder))
            }
        }
    }

    /// Prints every metric in the Prometheus text format (version 0.0.4):
    /// families sorted by name, each with its `# HELP` (from the `describe_*`
    /// macros) and `# TYPE`; counters as counters, gauges as gauges,
    /// histograms as cumulative `_bucket`s with `_sum` and `_count`. Names
    /// and labels are made valid, and families and series unique, as
    /// [`Recorder`] describes; label values are escaped.
    ///
    /// # Errors
    /// Whatever writing to `out` returns.
    ///
    /// ```
    /// let recorder = cpulocal::evcnt::Recorder::new();
    /// metrics::with_local_recorder(&recorder, || {
    ///     metrics::describe_counter!("hits", "Cache hits.");
    ///     metrics::counter!("hits").absolute(10);
    /// });
    /// let mut out = Vec::new();
    /// recorder.write_prometheus(&mut out).unwrap();
    /// assert_eq!(
    ///     String::from_utf8(out).unwrap(),
    ///     "# HELP hits Cache hits.\n# TYPE hits counter\nhits 10\n"
    /// );
    /// ```
    pub fn write_prometheus<W: Write>(&self, mut out: W) -> io::Result<()> {
        let metrics = self.metrics.read();
        // Sorted, so that which family keeps a contested name, and which
        // gauge of merged ones is kept, do not depend on the maps' order.
        let mut all: Vec<(String, MetricKind, &Key, Value)> = Vec::new();
        for (key, c) in &metrics.counters {
            all.push((
                metric_name(key.name()),
                MetricKind::Counter,
                key,
                Value::Counter(c.count.sum()),
            ));
        }
        for (key, g) in &metrics.gauges {
            all.push((metric_name(key.name()), MetricKind::Gauge, key, Value::Gauge(g.get())));
        }
        for (key, h) in &metrics.histograms {
            let data = h.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
            all.push((metric_name(key.name()), MetricKind::Histogram, key, Value::Histogram(data)));
        }
        all.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        let mut families: Vec<Family<'_>> = Vec::new();
        for (name, kind, key, value) in all {
            match families.last_mut() {
                Some(f) if f.name == name && f.kind == kind => f.members.push((key, value)),
                _ => families.push(Family { name, kind, members: vec![(key, value)] }),
            }
        }
        name_families(&mut families);
        families.sort_by(|a, b| a.name.cmp(&b.name));

        let descriptions: HashMap<(&str, MetricKind), &(Option<Unit>, SharedString)> =
            metrics.help.iter().map(|((name, kind), h)| ((name.as_str(), *kind), h)).collect();
        let mut buf = String::new();
        for family in families {
            let kinds =
                [family.kind, MetricKind::Counter, MetricKind::Gauge, MetricKind::Histogram];
            let described = kinds.iter().find_map(|&kind| {
                family.members.iter().find_map(|(key, _)| descriptions.get(&(key.name(), kind)))
            });
            if let Some((unit, help)) = described {
                let unit = unit.map(|u| format!(" ({})", u.as_str())).unwrap_or_default();
                let help = format!("{help}{unit}").replace('\\', "\\\\").replace('\n', "\\n");
                let _ = writeln!(buf, "# HELP {} {help}", family.name);
            }
            let _ = writeln!(buf, "# TYPE {} {}", family.name, family.kind.as_str());
            let mut series: Vec<(Vec<(String, String)>, Value)> = family
                .members
                .into_iter()
                .map(|(key, value)| (labels(key, family.kind), value))
                .collect();
            // Stable: of equal label sets, the first member's stays first.
            series.sort_by(|a, b| a.0.cmp(&b.0));
            series.dedup_by(|later, first| {
                let same = later.0 == first.0;
                if same {
                    first.1.merge(&later.1);
                }
                same
            });
            for (labels, value) in &series {
                value.write(&mut buf, &family.name, labels);
            }
        }
        out.write_all(buf.as_bytes())
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.metrics.read();
        f.debug_struct("Recorder")
            .field("counters", &m.counters.len())
            .field("gauges", &m.gauges.len())
            .field("histograms", &m.histograms.len())
            .finish()
    }
}

impl Recorder {
    fn describe(
        &self,
        key: KeyName,
        kind: MetricKind,
        unit: Option<Unit>,
        description: SharedString,
    ) {
        self.metrics.write().help.insert((key, kind), (unit, description));
    }

    /// `key`'s handle in the map that `get` and `get_mut` project, made on
    /// first use: found under the read lock (the common case), made under
    /// the write lock.
    fn handle<T: Default>(
        &self,
        key: &Key,
        get: fn(&Metrics) -> &Map<T>,
        get_mut: fn(&mut Metrics) -> &mut Map<T>,
    ) -> Arc<T> {
        if let Some(h) = get(&self.metrics.read()).get(key) {
            return Arc::clone(h);
        }
        let mut metrics = self.metrics.write();
        Arc::clone(get_mut(&mut metrics).entry(key.clone()).or_default())
    }
}

type Map<T> = HashMap<Key, Arc<T>>;

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, MetricKind::Counter, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, MetricKind::Gauge, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, MetricKind::Histogram, unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.handle(key, |m| &m.counters, |m| &mut m.counters))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.handle(key, |m| &m.gauges, |m| &mut m.gauges))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.handle(key, |m| &m.histograms, |m| &mut m.histograms))
    }
}

/// A `metrics` counter: a per-CPU [`Counter`].
#[derive(Default)]
struct PerCpuCounter {
    count: Counter,
}

/// Serializes `absolute` on every counter: each reads the sum and raises it
/// as one step with respect to the others.
static ABSOLUTE: Mutex<()> = Mutex::new(());

impl CounterFn for PerCpuCounter {
    #[inline]
    fn increment(&self, value: u64) {
        self.count.add(value);
    }

    /// Raises the counter to at least `value`. Increments racing with it
    /// are kept: the counter is raised by `value - sum` only.
    fn absolute(&self, value: u64) {
        let _serial = ABSOLUTE.lock().unwrap_or_else(PoisonError::into_inner);
        let sum = self.count.sum();
        if value > sum {
            self.count.add(value - sum);
        }
    }
}

/// A `metrics` gauge: an `f64` in an atomic word.
#[derive(Default)]
struct AtomicGauge(AtomicU64);

impl AtomicGauge {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn update(&self, f: impl Fn(f64) -> f64) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some(f(f64::from_bits(bits)).to_bits())
        });
    }
}

impl GaugeFn for AtomicGauge {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

/// A `metrics` histogram: count, sum and per-bucket counts under a lock.
#[derive(Default)]
struct LockedHistogram(Mutex<HistogramData>);

#[derive(Clone, Default)]
struct HistogramData {
    count: u64,
    sum: f64,
    /// Observations at most `BUCKETS[i]` and above `BUCKETS[i - 1]`; the
    /// rest are only in `count`.
    buckets: [u64; BUCKETS.len()],
}

impl HistogramFn for LockedHistogram {
    fn record(&self, value: f64) {
        self.record_many(value, 1);
    }

    fn record_many(&self, value: f64, count: usize) {
        let count = count as u64;
        let mut h = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        h.count = h.count.wrapping_add(count);
        h.sum += value * count as f64;
        if let Some(i) = BUCKETS.iter().position(|&le| value <= le) {
            h.buckets[i] = h.buckets[i].wrapping_add(count);
        }
    }
}

/// A metric's kind; also the order in which kinds sharing a name claim it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// The metrics printed as one family: their cleaned name (their family's
/// name once [`name_families`] has run), kind and values.
struct Family<'a> {
    name: String,
    kind: MetricKind,
    members: Vec<(&'a Key, Value)>,
}

/// The series names a family `name` of `kind` writes, which no other
/// family may have as its name or write.
fn series_names(name: &str, kind: MetricKind) -> Vec<String> {
    match kind {
        MetricKind::Histogram => ["", "_bucket", "_sum", "_count"]
            .iter()
            .map(|suffix| format!("{name}{suffix}"))
            .collect(),
        MetricKind::Counter | MetricKind::Gauge => vec![name.to_string()],
    }
}

/// Gives every family (sorted by cleaned name and kind) a name of its own:
/// its cleaned name where that is free, or else its name with its kind
/// appended (and a number, if need be). The renamed are named last, so
/// that they can only take names that no metric has.
fn name_families(families: &mut [Family<'_>]) {
    // The event counters' family: `serve` writes it before the recorder's.
    let mut taken: HashSet<String> = HashSet::from([super::PROMETHEUS_FAMILY.to_string()]);
    let mut renamed = Vec::new();
    for (i, f) in families.iter().enumerate() {
        let names = series_names(&f.name, f.kind);
        if names.iter().any(|n| taken.contains(n)) {
            renamed.push(i);
        } else {
            taken.extend(names);
        }
    }
    for i in renamed {
        let f = &mut families[i];
        let base = format!("{}_{}", f.name, f.kind.as_str());
        let mut name = base.clone();
        let mut n = 1;
        while series_names(&name, f.kind).iter().any(|s| taken.contains(s)) {
            n += 1;
            name = format!("{base}_{n}");
        }
        taken.extend(series_names(&name, f.kind));
        f.name = name;
    }
}

/// A metric's value as read for printing.
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(HistogramData),
}

impl Value {
    /// Folds `other`, a series of the same family and labels, into this
    /// one: counts add up (wrapping, as the counters themselves do); of
    /// gauges, which do not add up, this one is kept.
    fn merge(&mut self, other: &Value) {
        match (self, other) {
            (Value::Counter(a), Value::Counter(b)) => *a = a.wrapping_add(*b),
            (Value::Histogram(a), Value::Histogram(b)) => {
                a.count = a.count.wrapping_add(b.count);
                a.sum += b.sum;
                for (a, b) in a.buckets.iter_mut().zip(b.buckets) {
                    *a = a.wrapping_add(b);
                }
            }
            _ => {}
        }
    }

    fn write(&self, buf: &mut String, name: &str, l: &[(String, String)]) {
        match self {
            Value::Counter(v) => {
                let _ = writeln!(buf, "{name}{} {v}", label_set(l, None));
            }
            Value::Gauge(v) => {
                let _ = writeln!(buf, "{name}{} {}", label_set(l, None), number(*v));
            }
            Value::Histogram(h) => {
                let mut cumulative = 0u64;
                for (le, n) in BUCKETS.iter().zip(h.buckets) {
                    cumulative = cumulative.wrapping_add(n);
                    let le = number(*le);
                    let _ = writeln!(buf, "{name}_bucket{} {cumulative}", label_set(l, Some(&le)));
                }
                let _ = writeln!(buf, "{name}_bucket{} {}", label_set(l, Some("+Inf")), h.count);
                let _ = writeln!(buf, "{name}_sum{} {}", label_set(l, None), number(h.sum));
                let _ = writeln!(buf, "{name}_count{} {}", label_set(l, None), h.count);
            }
        }
    }
}

/// `key`'s labels as a metric of `kind` writes them: names cleaned,
/// reserved ones renamed, repeated ones dropped, sorted by name.
fn labels(key: &Key, kind: MetricKind) -> Vec<(String, String)> {
    let cleaned: Vec<(String, &str)> =
        key.labels().map(|l| (label_name(l.key()), l.value())).collect();
    let mut out: Vec<(String, String)> = Vec::with_capacity(cleaned.len());
    for (name, value) in &cleaned {
        let mut name = name.clone();
        if name.starts_with("__") || (kind == MetricKind::Histogram && name == "le") {
            // The first pass always renames: `name` is among `cleaned`.
            while cleaned.iter().any(|(other, _)| *other == name) {
                name.insert_str(0, "exported_");
            }
        }
        if out.iter().all(|(first, _)| *first != name) {
            out.push((name, value.to_string()));
        }
    }
    out.sort();
    out
}

/// `{a="x",le="0.5"}`, or nothing when there are no labels.
fn label_set(labels: &[(String, String)], le: Option<&str>) -> String {
    let mut parts: Vec<String> =
        labels.iter().map(|(k, v)| format!("{k}=\"{}\"", super::label_value(v))).collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// A number as Prometheus writes it (`+Inf`, `-Inf`, `NaN`).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// `name` as a valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn metric_name(name: &str) -> String {
    valid_name(name, |c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name` as a valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`, no `:`.
fn label_name(name: &str) -> String {
    valid_name(name, |c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name` with the characters not `allowed` made `_`, and a `_` in front
/// if it is empty or starts with a digit.
fn valid_name(name: &str, allowed: fn(char) -> bool) -> String {
    let mut out: String = name.chars().map(|c| if allowed(c) { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}
