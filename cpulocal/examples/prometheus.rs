// The registry in the Prometheus text format, as a scrape would get it
// (see the `http` example for the endpoint itself).
//
//     cargo run --example prometheus

use cpulocal::evcnt::{self, EventCounter};

static LOGINS: EventCounter = EventCounter::new("auth", "logins");
static FAILED: EventCounter = EventCounter::new("auth", "failed \"bad password\"");

pub fn main() -> std::io::Result<()> {
    LOGINS.add(10);
    FAILED.add(2);
    let mut text = Vec::new();
    evcnt::write_prometheus(&mut text)?;
    let text = String::from_utf8(text).expect("UTF-8");
    print!("{text}");
    assert!(
        text.contains(r#"evcnt_total{group="auth",name="failed \"bad password\"",type="misc"} 2"#)
    );
    Ok(())
}
