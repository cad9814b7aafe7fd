//! A `metrics` crate recorder with per-CPU counters (feature `metrics`).

use std::collections::HashMap;
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
    /// Descriptions by metric name: (kind, unit, text).
    help: HashMap<KeyName, (Option<Unit>, SharedString)>,
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
    /// and label names are made valid (other characters become `_`), label
    /// values escaped.
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
        let mut families: Vec<(String, &'static str, Vec<Series>)> = Vec::new();
        let mut family = |key: &Key, kind: &'static str, series: Series| {
            let name = metric_name(key.name());
            match families.iter_mut().find(|f| f.0 == name) {
                Some(f) => f.2.push(series),
                None => families.push((name, kind, vec![series])),
            }
        };
        for (key, c) in &metrics.counters {
            family(key, "counter", Series::Counter(labels(key), c.count.sum()));
        }
        for (key, g) in &metrics.gauges {
            family(key, "gauge", Series::Gauge(labels(key), g.get()));
        }
        for (key, h) in &metrics.histograms {
            let data = h.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
            family(key, "histogram", Series::Histogram(labels(key), data));
        }
        families.sort_by(|a, b| a.0.cmp(&b.0));
        let mut buf = String::new();
        for (name, kind, mut series) in families {
            series.sort_by(|a, b| a.labels().cmp(b.labels()));
            if let Some((unit, help)) =
                metrics.help.iter().find(|(k, _)| metric_name(k.as_str()) == name).map(|(_, v)| v)
            {
                let unit = unit.map(|u| format!(" ({})", u.as_str())).unwrap_or_default();
                let help = format!("{help}{unit}").replace('\\', "\\\\").replace('\n', "\\n");
                let _ = writeln!(buf, "# HELP {name} {help}");
            }
            let _ = writeln!(buf, "# TYPE {name} {kind}");
            for s in &series {
                s.write(&mut buf, &name);
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
    fn describe(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.metrics.write().help.insert(key, (unit, description));
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
        self.describe(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
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

enum Series {
    Counter(Vec<(String, String)>, u64),
    Gauge(Vec<(String, String)>, f64),
    Histogram(Vec<(String, String)>, HistogramData),
}

impl Series {
    fn labels(&self) -> &[(String, String)] {
        match self {
            Series::Counter(l, _) | Series::Gauge(l, _) | Series::Histogram(l, _) => l,
        }
    }

    fn write(&self, buf: &mut String, name: &str) {
        match self {
            Series::Counter(l, v) => {
                let _ = writeln!(buf, "{name}{} {v}", label_set(l, None));
            }
            Series::Gauge(l, v) => {
                let _ = writeln!(buf, "{name}{} {}", label_set(l, None), number(*v));
            }
            Series::Histogram(l, h) => {
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

fn labels(key: &Key) -> Vec<(String, String)> {
    key.labels().map(|l| (metric_name(l.key()), l.value().to_string())).collect()
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

/// `name` as a valid metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn metric_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}
