//! The export file format against torn, truncated and hostile input: the
//! parser never panics, and whatever it accepts prints as clean text.
#![cfg(not(miri))]

use std::time::{Duration, UNIX_EPOCH};

mod prom;

use cpulocal::evcnt::{Event, Exported, Kind, Snapshot};
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Misc), Just(Kind::Intr), Just(Kind::Trap)]
}

fn exported() -> impl Strategy<Value = Exported> {
    let event = (any::<String>(), any::<String>(), kind(), any::<u64>())
        .prop_map(|(g, n, k, v)| Event::new(g, n, k, v));
    (any::<u32>(), any::<u64>(), 0u64..1 << 40, 0u64..1 << 62, prop::collection::vec(event, 0..8))
        .prop_map(|(pid, start, period, ns, events)| {
            let snapshot = Snapshot::new(UNIX_EPOCH + Duration::from_nanos(ns), events);
            Exported::new(pid, start, Duration::from_millis(period), snapshot)
        })
}

/// What a reader prints must be free of control characters but line feeds.
fn assert_prints_clean(e: &Exported) {
    let mut out = Vec::new();
    e.snapshot.write_table(&mut out, Some(&e.snapshot)).unwrap();
    let table = String::from_utf8(out).unwrap();
    assert!(!table.chars().any(|c| c.is_control() && c != '\n'), "{table:?}");
    let mut out = Vec::new();
    e.snapshot.write_prometheus(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let samples = prom::parse(&text);
    assert!(samples.len() <= e.snapshot.events.len());
    for ev in &e.snapshot.events {
        let found = samples.iter().any(|s| {
            s.label("group") == Some(ev.group.as_str()) && s.label("name") == Some(ev.name.as_str())
        });
        assert!(found, "{ev:?} missing from\n{text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_files_round_trip(e in exported()) {
        let parsed = Exported::parse(&e.encode()).unwrap();
        prop_assert_eq!(&parsed, &e);
        assert_prints_clean(&parsed);
    }

    #[test]
    fn every_truncation_is_rejected(e in exported()) {
        let bytes = e.encode();
        for cut in 0..bytes.len() {
            prop_assert!(Exported::parse(&bytes[..cut]).is_err(), "accepted {} of {} bytes", cut, bytes.len());
        }
    }

    #[test]
    fn torn_and_mutated_files_never_panic(
        e in exported(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = e.encode();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(parsed) = Exported::parse(&bytes) {
            assert_prints_clean(&parsed);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(parsed) = Exported::parse(&bytes) {
            assert_prints_clean(&parsed);
        }
    }

    #[test]
    fn hostile_headers_never_panic(
        lines in prop::collection::vec(
            prop_oneof![
                Just("cpulocal-evcnt 1".to_string()),
                "pid [0-9]{1,12}",
                "start [0-9]{1,25}",
                "period_ms [0-9]{1,25}",
                "written_ns [0-9]{1,45}",
                "events [0-9]{1,20}",
                "event (misc|intr|trap|bad)!? [0-9]{1,22} [ -~]{0,12} [ -~]{0,12}",
                Just("end".to_string()),
            ],
            0..14,
        )
    ) {
        let mut text = lines.join("\n");
        text.push('\n');
        if let Ok(parsed) = Exported::parse(text.as_bytes()) {
            assert_prints_clean(&parsed);
        }
    }
}

#[test]
fn oversized_counts_and_names_are_rejected_without_allocating_them() {
    let huge = "cpulocal-evcnt 1\npid 1\nstart 1\nperiod_ms 1\nwritten_ns 1\nevents 18446744073709551615\nend\n";
    assert!(Exported::parse(huge.as_bytes()).is_err());
    let long = format!(
        "cpulocal-evcnt 1\npid 1\nstart 1\nperiod_ms 1\nwritten_ns 1\nevents 1\nevent misc 1 g {}\nend\n",
        "x".repeat(5000)
    );
    assert!(Exported::parse(long.as_bytes()).is_err());
    let far = "cpulocal-evcnt 1\npid 1\nstart 1\nperiod_ms 1\nwritten_ns 999999999999999999999999999999999\nevents 0\nend\n";
    assert!(Exported::parse(far.as_bytes()).is_err());
}
