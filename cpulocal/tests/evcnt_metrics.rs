//! The `metrics` recorder, driven through the `metrics` macros, its output
//! checked with a Prometheus parser.
#![cfg(all(target_os = "linux", not(miri)))]

mod prom;

use cpulocal::evcnt::Recorder;
use prometheus_parse::{Scrape, Value};

fn scrape(r: &Recorder) -> (Scrape, String) {
    let mut out = Vec::new();
    r.write_prometheus(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid exposition");
    (scrape, text)
}

fn sample<'a>(s: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> &'a Value {
    &s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {metric} {labels:?}"))
        .value
}

#[test]
fn counters_from_many_threads_are_exact() {
    let r = Recorder::new();
    std::thread::scope(|s| {
        for t in 0..4 {
            let r = &r;
            s.spawn(move || {
                let _local = metrics::set_default_local_recorder(r);
                let method = if t % 2 == 0 { "GET" } else { "POST" };
                for _ in 0..25_000 {
                    metrics::counter!("requests_total", "method" => method).increment(1);
                }
                let handle = metrics::counter!("bytes_total");
                handle.increment(10);
            });
        }
    });
    let (s, text) = scrape(&r);
    assert!(
        matches!(sample(&s, "requests_total", &[("method", "GET")]), Value::Counter(v) if *v == 50_000.0),
        "{text}"
    );
    assert!(
        matches!(sample(&s, "requests_total", &[("method", "POST")]), Value::Counter(v) if *v == 50_000.0),
        "{text}"
    );
    assert!(matches!(sample(&s, "bytes_total", &[]), Value::Counter(v) if *v == 40.0), "{text}");
}

#[test]
fn absolute_raises_and_never_lowers_and_keeps_racing_increments() {
    let r = Recorder::new();
    metrics::with_local_recorder(&r, || {
        metrics::counter!("seen").absolute(100);
        metrics::counter!("seen").absolute(40); // lower: ignored
        metrics::counter!("seen").increment(1);
    });
    let (s, text) = scrape(&r);
    assert!(matches!(sample(&s, "seen", &[]), Value::Counter(v) if *v == 101.0), "{text}");

    // Increments racing absolute() are never lost: the counter ends at the
    // largest absolute value plus at least nothing below what was added.
    let r = Recorder::new();
    std::thread::scope(|sc| {
        let r = &r;
        sc.spawn(move || {
            let _l = metrics::set_default_local_recorder(r);
            for _ in 0..50_000 {
                metrics::counter!("mixed").increment(1);
            }
        });
        sc.spawn(move || {
            let _l = metrics::set_default_local_recorder(r);
            for v in (0..1000).map(|i| i * 10) {
                metrics::counter!("mixed").absolute(v);
            }
        });
    });
    let (s, text) = scrape(&r);
    match sample(&s, "mixed", &[]) {
        Value::Counter(v) => assert!(*v >= 50_000.0, "increments lost: {text}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn gauges_and_histograms_are_correct() {
    let r = Recorder::new();
    metrics::with_local_recorder(&r, || {
        metrics::describe_gauge!("temperature", metrics::Unit::Count, "Degrees.");
        metrics::gauge!("temperature").set(20.0);
        metrics::gauge!("temperature").increment(2.5);
        metrics::gauge!("temperature").decrement(0.5);
        metrics::gauge!("infinite").set(f64::INFINITY);
        for v in [0.001, 0.02, 0.02, 0.7, 100.0] {
            metrics::histogram!("latency", "op" => "read").record(v);
        }
    });
    let (s, text) = scrape(&r);
    assert!(matches!(sample(&s, "temperature", &[]), Value::Gauge(v) if *v == 22.0), "{text}");
    assert!(text.contains("# HELP temperature Degrees. (count)\n"), "{text}");
    assert!(text.contains("infinite +Inf\n"), "{text}");
    match sample(&s, "latency", &[("op", "read")]) {
        Value::Histogram(buckets) => {
            let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
            assert_eq!(at(0.005), Some(1.0), "{text}");
            assert_eq!(at(0.025), Some(3.0), "{text}");
            assert_eq!(at(1.0), Some(4.0), "{text}");
            assert_eq!(at(10.0), Some(4.0), "{text}");
            assert_eq!(at(f64::INFINITY), Some(5.0), "{text}");
        }
        other => panic!("{other:?}\n{text}"),
    }
    assert!(text.contains("latency_count{op=\"read\"} 5\n"), "{text}");
    assert!(text.contains("latency_sum{op=\"read\"} 100.741\n"), "{text}");
}

#[test]
fn names_and_label_values_are_made_valid() {
    let r = Recorder::new();
    metrics::with_local_recorder(&r, || {
        metrics::counter!("http.requests-total", "path" => "/a\"b\\c\nd").increment(2);
    });
    let mut out = Vec::new();
    r.write_prometheus(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let strict = prom::parse(&text);
    let s = strict.iter().find(|s| s.family == "http_requests_total").unwrap();
    assert_eq!(s.label("path"), Some("/a\"b\\c\nd"), "{text}");
    assert_eq!(s.number(), 2.0);
}
