// A `static` per-CPU counter: no constructor call, no lazy_static; the
// per-CPU words are allocated on the first `inc`.
//
//     cargo run --example static_counter

use cpulocal::Counter;

static REQUESTS: Counter = Counter::new();

pub fn main() {
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10_000 {
                    REQUESTS.inc();
                }
            });
        }
    });
    // A per-CPU counter failing to get memory keeps counting in one word:
    // check up front if that matters.
    assert!(!REQUESTS.alloc_failed());
    let total = REQUESTS.sum();
    let busiest = REQUESTS.per_cpu().max_by_key(|&(_, n)| n).unwrap_or((0, 0));
    println!("{total} requests; CPU {} counted {}", busiest.0, busiest.1);
    // A reporter takes what was counted since its last report.
    assert_eq!(REQUESTS.take(), 40_000);
    assert_eq!(REQUESTS.sum(), 0);
}
