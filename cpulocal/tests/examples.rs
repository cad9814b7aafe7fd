//! Every example under `examples/`, run (not only built) by `cargo test`.
#![cfg(target_os = "linux")]

mod static_counter {
    include!("../examples/static_counter.rs");
}
mod vmstat {
    include!("../examples/vmstat.rs");
}
mod prometheus {
    include!("../examples/prometheus.rs");
}
mod export {
    include!("../examples/export.rs");
}
#[cfg(feature = "metrics")]
mod metrics_recorder {
    include!("../examples/metrics_recorder.rs");
}
#[cfg(feature = "http")]
mod http {
    include!("../examples/http.rs");
}

#[test]
fn static_counter_example() {
    static_counter::main();
}

#[test]
fn vmstat_example() {
    vmstat::main().unwrap();
}

#[test]
fn prometheus_example() {
    prometheus::main().unwrap();
}

#[test]
fn export_example() {
    export::main().unwrap();
}

#[cfg(feature = "metrics")]
#[test]
fn metrics_recorder_example() {
    metrics_recorder::main().unwrap();
}

#[cfg(feature = "http")]
#[test]
fn http_example() {
    http::main().unwrap();
}
