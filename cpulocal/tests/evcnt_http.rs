//! `/metrics` over HTTP, scraped with a real HTTP client.
#![cfg(all(target_os = "linux", not(miri)))]

mod prom;

use cpulocal::evcnt::{self, EventCounter};
use prom::strict::strict;

static SERVED: EventCounter = EventCounter::new("http-test", "served");

#[test]
fn metrics_endpoint_serves_the_registry() {
    SERVED.add(12);
    let server = evcnt::serve("127.0.0.1:0").unwrap();
    let base = format!("http://{}", server.local_addr());
    let reply = ureq::get(&format!("{base}/metrics")).call().unwrap();
    assert_eq!(reply.status(), 200);
    assert!(reply.content_type().starts_with("text/plain"), "{}", reply.content_type());
    let body = reply.into_string().unwrap();
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    let served = scrape
        .samples
        .iter()
        .find(|s| s.labels.get("group") == Some("http-test"))
        .unwrap_or_else(|| panic!("not served: {body}"));
    assert!(matches!(served.value, prometheus_parse::Value::Counter(v) if v == 12.0));

    // Values are read at each scrape.
    SERVED.inc();
    let body = ureq::get(&format!("{base}/metrics")).call().unwrap().into_string().unwrap();
    assert!(
        body.contains(r#"evcnt_total{group="http-test",name="served",type="misc"} 13"#),
        "{body}"
    );

    match ureq::get(&format!("{base}/elsewhere")).call() {
        Err(ureq::Error::Status(404, _)) => {}
        other => panic!("expected 404, got {other:?}"),
    }
    match ureq::post(&format!("{base}/metrics")).call() {
        Err(ureq::Error::Status(405, _)) => {}
        other => panic!("expected 405, got {other:?}"),
    }
    let addr = server.local_addr();
    drop(server);
    // tiny_http closes its listener from its own accept thread, just after
    // the drop: wait (up to a minute on a loaded machine) for it to go.
    let closed = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::net::TcpStream::connect(addr).is_err()
    });
    assert!(closed, "still listening after drop");
}

/// The process has one global recorder: the tests that need it install
/// it through this, whichever runs first.
#[cfg(feature = "metrics")]
fn install_recorder() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        cpulocal::evcnt::Recorder::new().install().unwrap();
    });
}

/// What `server` serves at `/metrics`.
#[cfg(feature = "metrics")]
fn served(server: &evcnt::Server) -> String {
    ureq::get(&format!("http://{}/metrics", server.local_addr()))
        .call()
        .unwrap()
        .into_string()
        .unwrap()
}

#[cfg(feature = "metrics")]
#[test]
fn an_installed_recorder_is_served_too() {
    install_recorder();
    metrics::counter!("jobs_total", "queue" => "mail").increment(4);
    let server = evcnt::serve("127.0.0.1:0").unwrap();
    let body = served(&server);
    assert!(body.contains("jobs_total{queue=\"mail\"} 4\n"), "{body}");
    assert!(cpulocal::evcnt::Recorder::new().install().is_err(), "installed twice");
}

/// The event counters' text and the recorder's, served as one, are one
/// valid exposition even when the recorder has metrics named like the
/// event counters' family.
#[cfg(feature = "metrics")]
#[test]
fn the_served_text_is_valid_whatever_the_recorder_holds() {
    static MIXED: EventCounter = EventCounter::new("http-mixed", "served");
    MIXED.add(3);
    install_recorder();
    metrics::counter!(evcnt::PROMETHEUS_FAMILY, "group" => "http-mixed").increment(5);
    metrics::gauge!(evcnt::PROMETHEUS_FAMILY).set(1.0);
    metrics::histogram!("evcnt").record(1.0);
    let server = evcnt::serve("127.0.0.1:0").unwrap();
    let body = served(&server);
    let lines = strict(&body);
    let family = |name: &str, group: &str| {
        lines
            .iter()
            .find(|l| l.name == name && l.label("group") == Some(group))
            .map(|l| l.value.as_str())
    };
    assert_eq!(family(evcnt::PROMETHEUS_FAMILY, "http-mixed"), Some("3"), "{body}");
    assert_eq!(family("evcnt_total_counter", "http-mixed"), Some("5"), "{body}");
    assert!(lines.iter().any(|l| l.name == "evcnt_total_gauge"), "{body}");
    assert!(lines.iter().any(|l| l.family == "evcnt" && l.name == "evcnt_count"), "{body}");
}
