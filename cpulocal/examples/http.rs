// A `/metrics` endpoint (feature `http`), scraped once.
//
//     cargo run --example http --features http

use std::io::{Read, Write};
use std::net::TcpStream;

use cpulocal::evcnt::{self, EventCounter};

static PAGES: EventCounter = EventCounter::new("web", "pages served");

pub fn main() -> std::io::Result<()> {
    let server = evcnt::serve("127.0.0.1:0")?;
    println!("serving http://{}/metrics", server.local_addr());
    PAGES.add(3);
    let mut conn = TcpStream::connect(server.local_addr())?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    print!("{reply}");
    assert!(reply.contains(r#"evcnt_total{group="web",name="pages served",type="misc"} 3"#));
    Ok(())
}
