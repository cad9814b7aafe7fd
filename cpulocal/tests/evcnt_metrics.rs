//! The `metrics` recorder, driven through the `metrics` macros, its output
//! checked with a Prometheus parser.
#![cfg(all(target_os = "linux", not(miri)))]

mod prom;

use prom::strict::{strict, Line};

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

fn text(r: &Recorder) -> String {
    let mut out = Vec::new();
    r.write_prometheus(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// The samples of `text` named `name`.
fn named<'a>(lines: &'a [Line], name: &str) -> Vec<&'a Line> {
    lines.iter().filter(|l| l.name == name).collect()
}

/// The TYPE `text` gives `family`.
fn type_of<'a>(text: &'a str, family: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(&format!("# TYPE {family} ")))
}

#[test]
fn names_that_clean_alike_share_one_family_and_merge_equal_series() {
    let r = Recorder::new();
    metrics::with_local_recorder(&r, || {
        metrics::counter!("a.b").increment(1);
        metrics::counter!("a-b").increment(2);
        metrics::counter!("x.y", "k" => "1").increment(1);
        metrics::counter!("x-y", "k" => "2").increment(2);
        // Gauges are not summed: the one whose name sorts first is kept.
        metrics::gauge!("g.x").set(1.0);
        metrics::gauge!("g-x").set(2.0);
        metrics::histogram!("t.h").record(0.001);
        metrics::histogram!("t-h").record(100.0);
        metrics::describe_counter!("a-b", "Two counters in one.");
    });
    let text = text(&r);
    let lines = strict(&text);
    let a = named(&lines, "a_b");
    assert_eq!((a.len(), a[0].value.as_str()), (1, "3"), "{text}");
    assert_eq!(named(&lines, "x_y").len(), 2, "{text}");
    let g = named(&lines, "g_x");
    assert_eq!((g.len(), g[0].value.as_str()), (1, "2"), "{text}");
    assert_eq!(named(&lines, "t_h_count")[0].value, "2", "{text}");
    assert_eq!(named(&lines, "t_h_sum")[0].value, "100.001", "{text}");
    assert!(text.contains("# HELP a_b Two counters in one.\n"), "{text}");
}

#[test]
fn one_name_of_several_kinds_gives_each_kind_a_family() {
    let r = Recorder::new();
    metrics::with_local_recorder(&r, || {
        metrics::counter!("same").increment(1);
        metrics::gauge!("same").set(2.0);
        metrics::histogram!("same").record(3.0);
        // A real metric of the name a renamed one would take keeps it.
        metrics::gauge!("same_gauge").set(4.0);
        metrics::describe_gauge!("same", "A gauge.");
    });
    let text = text(&r);
    let lines = strict(&text);
    assert_eq!(type_of(&text, "same"), Some("counter"), "{text}");
    assert_eq!(named(&lines, "same")[0].value, "1", "{text}");
    assert_eq!(type_of(&text, "same_gauge"), Some("gauge"), "{text}");
    assert_eq!(named(&lines, "same_gauge")[0].value, "4", "{text}");
    assert_eq!(type_of(&text, "same_gauge_2"), Some("gauge"), "{text}");
    assert_eq!(named(&lines, "same_gauge_2")[0].value, "2", "{text}");
    assert!(text.contains("# HELP same_gauge_2 A gauge.\n"), "{text}");
    assert_eq!(type_of(&text, "same_histogram"), Some("histogram"), "{text}");
    assert_eq!(named(&lines, "same_histogram_count")[0].value, "1", "{text}");
}

#[test]
fn families_never_collide_with_a_histogram_series() {
    let r = Recorder::new();
    metrics::with_local_recorder(&r, || {
        metrics::histogram!("h").record(1.0);
        metrics::counter!("h_count").increment(7);
        metrics::counter!("h_bucket").increment(8);
        metrics::gauge!("h_sum").set(9.0);
        metrics::histogram!("h_bucket").record(1.0);
        // Registered first, still renamed: the shorter name claims first.
        metrics::counter!("k_sum").increment(1);
        metrics::histogram!("k").record(1.0);
    });
    let text = text(&r);
    let lines = strict(&text);
    assert_eq!(type_of(&text, "h"), Some("histogram"), "{text}");
    assert_eq!(named(&lines, "h_count")[0].value, "1", "{text}");
    assert_eq!(named(&lines, "h_count_counter")[0].value, "7", "{text}");
    assert_eq!(named(&lines, "h_bucket_counter")[0].value, "8", "{text}");
    assert_eq!(named(&lines, "h_sum_gauge")[0].value, "9", "{text}");
    assert_eq!(type_of(&text, "h_bucket_histogram"), Some("histogram"), "{text}");
    assert_eq!(named(&lines, "k_sum")[0].value, "1", "{text}");
    assert_eq!(type_of(&text, "k"), Some("histogram"), "{text}");
    assert_eq!(named(&lines, "k_sum_counter")[0].value, "1", "{text}");
}

#[test]
fn reserved_repeated_and_colliding_labels_are_renamed_or_dropped() {
    let r = Recorder::new();
    metrics::with_local_recorder(&r, || {
        metrics::histogram!("hl", "le" => "x").record(1.0);
        metrics::histogram!("hx", "le" => "x", "exported_le" => "y").record(1.0);
        metrics::counter!("cl", "le" => "x").increment(1); // no histogram: kept
        metrics::counter!("reserved", "__name__" => "x", "__y" => "z").increment(1);
        metrics::counter!("collide", "a.b" => "1", "a-b" => "2").increment(1);
        metrics::counter!("repeat", "k" => "1", "k" => "2").increment(1);
        metrics::counter!("repeat", "k" => "1", "k" => "3").increment(2);
        metrics::counter!("odd", "9x" => "v", "" => "e", "a:b" => "c").increment(1);
        metrics::counter!("order", "a" => "1", "b" => "2").increment(1);
        metrics::counter!("order", "b" => "2", "a" => "1").increment(2);
    });
    let text = text(&r);
    let lines = strict(&text);
    let hl = named(&lines, "hl_bucket");
    assert!(hl.iter().all(|l| l.label("exported_le") == Some("x")), "{text}");
    assert!(hl.iter().any(|l| l.label("le") == Some("+Inf")), "{text}");
    let hx = named(&lines, "hx_count")[0];
    assert_eq!(hx.label("exported_le"), Some("y"), "{text}");
    assert_eq!(hx.label("exported_exported_le"), Some("x"), "{text}");
    assert_eq!(named(&lines, "cl")[0].label("le"), Some("x"), "{text}");
    let reserved = named(&lines, "reserved")[0];
    assert_eq!(reserved.label("exported___name__"), Some("x"), "{text}");
    assert_eq!(reserved.label("exported___y"), Some("z"), "{text}");
    assert_eq!(named(&lines, "collide")[0].labels, [("a_b".into(), "1".into())], "{text}");
    let repeat = named(&lines, "repeat");
    assert_eq!(repeat.len(), 1, "{text}");
    assert_eq!((repeat[0].label("k"), repeat[0].value.as_str()), (Some("1"), "3"), "{text}");
    let odd = named(&lines, "odd")[0];
    assert_eq!(
        (odd.label("_9x"), odd.label("_"), odd.label("a_b")),
        (Some("v"), Some("e"), Some("c")),
        "{text}"
    );
    let order = named(&lines, "order");
    assert_eq!((order.len(), order[0].value.as_str()), (1, "3"), "{text}");
}

#[test]
fn the_event_counters_family_is_left_to_them() {
    let r = Recorder::new();
    metrics::with_local_recorder(&r, || {
        metrics::counter!("evcnt_total").increment(1);
        metrics::histogram!("evcnt").record(1.0);
    });
    let text = text(&r);
    let lines = strict(&text);
    assert_eq!(type_of(&text, cpulocal::evcnt::PROMETHEUS_FAMILY), None, "{text}");
    assert_eq!(named(&lines, "evcnt_total_counter")[0].value, "1", "{text}");
    assert_eq!(type_of(&text, "evcnt"), Some("histogram"), "{text}");
}

/// Names and label names from a small alphabet, so that collisions of
/// every sort are likely.
fn odd_name() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        3 => prop::sample::select(vec![
            "a", "a.b", "a-b", "a_b", "h", "h_bucket", "h_sum", "h_count", "le", "__name__",
            "exported_le", "evcnt_total", "evcnt", "", "9", "a:b", "a_counter", "a_gauge",
            "a_histogram", "a_gauge_2", "ü",
        ])
        .prop_map(String::from),
        1 => "[a_.:9-]{0,4}",
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    #[test]
    fn any_names_and_labels_give_a_valid_exposition(
        metrics in proptest::collection::vec(
            (0..3u8, odd_name(), proptest::collection::vec((odd_name(), "[a-b]{0,1}"), 0..3)),
            0..10,
        ),
    ) {
        let r = Recorder::new();
        metrics::with_local_recorder(&r, || {
            for (kind, name, labels) in &metrics {
                let labels: Vec<metrics::Label> =
                    labels.iter().map(|(k, v)| metrics::Label::new(k.clone(), v.clone())).collect();
                match kind {
                    0 => metrics::counter!(name.clone(), labels).increment(1),
                    1 => metrics::gauge!(name.clone(), labels).set(1.0),
                    _ => metrics::histogram!(name.clone(), labels).record(1.0),
                }
            }
        });
        let text = text(&r);
        let lines = strict(&text);
        proptest::prop_assert!(lines.iter().all(|l| l.family != cpulocal::evcnt::PROMETHEUS_FAMILY));
        // Every metric is written: nothing is lost but by merging.
        let counted: f64 = lines
            .iter()
            .filter(|l| type_of(&text, &l.family) == Some("counter"))
            .map(|l| l.value.parse::<f64>().unwrap())
            .sum();
        let counters = metrics.iter().filter(|m| m.0 == 0).count();
        proptest::prop_assert_eq!(counted, counters as f64, "{}", text);
    }
}
