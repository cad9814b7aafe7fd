// The `metrics` facade with per-CPU counters (feature `metrics`): install
// `cpulocal::evcnt::Recorder` and the usual macros count per CPU.
//
//     cargo run --example metrics_recorder --features metrics

use cpulocal::evcnt::Recorder;

pub fn main() -> std::io::Result<()> {
    // A program would call `Recorder::new().install()` once at start-up;
    // here the recorder is scoped, so the example can run inside a test.
    let recorder = Recorder::new();
    metrics::with_local_recorder(&recorder, || {
        metrics::describe_counter!("http_requests_total", "Requests served.");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let _local = metrics::set_default_local_recorder(&recorder);
                    for _ in 0..1_000 {
                        metrics::counter!("http_requests_total", "method" => "GET").increment(1);
                    }
                    metrics::histogram!("http_latency_seconds").record(0.003);
                });
            }
        });
        metrics::gauge!("connections_open").set(12.0);
    });
    let mut text = Vec::new();
    recorder.write_prometheus(&mut text)?;
    let text = String::from_utf8(text).expect("UTF-8");
    print!("{text}");
    assert!(text.contains("http_requests_total{method=\"GET\"} 4000\n"));
    Ok(())
}
