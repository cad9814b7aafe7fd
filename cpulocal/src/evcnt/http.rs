//! `/metrics` over HTTP (feature `http`).

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the Prometheus text of every event counter (and of the installed
/// [`Recorder`](super::Recorder)'s metrics, with feature `metrics`) at
/// `GET /metrics` on `addr`, from a background thread.
///
/// Other paths answer 404, other methods 405. Bind port 0 to let the system
/// choose, and ask [`Server::local_addr`] which it chose. Dropping the
/// [`Server`] stops it.
///
/// # Errors
/// If `addr` does not resolve or cannot be bound, or the thread cannot be
/// started.
///
/// ```
/// use std::io::{Read, Write};
///
/// static SCRAPED: cpulocal::evcnt::EventCounter = cpulocal::evcnt::EventCounter::new("doc", "serve");
/// SCRAPED.inc();
/// let server = cpulocal::evcnt::serve("127.0.0.1:0").unwrap();
/// let mut conn = std::net::TcpStream::connect(server.local_addr()).unwrap();
/// conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
/// let mut reply = String::new();
/// conn.read_to_string(&mut reply).unwrap();
/// assert!(reply.starts_with("HTTP/1.0 200"));
/// assert!(reply.contains(r#"evcnt_total{group="doc",name="serve",type="misc"} 1"#));
/// ```
pub fn serve<A: ToSocketAddrs>(addr: A) -> io::Result<Server> {
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))?;
    let http = tiny_http::Server::http(addr).map_err(io::Error::other)?;
    let local_addr = http
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("the server is not on an IP address"))?;
    let http = Arc::new(http);
    let thread = {
        let http = Arc::clone(&http);
        thread::Builder::new().name("cpulocal-evcnt-http".into()).spawn(move || {
            for request in http.incoming_requests() {
                // A client that hangs up early is its own problem.
                let _ = respond(request);
            }
        })?
    };
    Ok(Server { http, local_addr, thread: Some(thread) })
}

fn respond(request: tiny_http::Request) -> io::Result<()> {
    let header =
        |v: &str| tiny_http::Header::from_bytes("Content-Type", v).expect("a valid header");
    let path = request.url().split('?').next().unwrap_or_default();
    if path != "/metrics" {
        let reply = tiny_http::Response::from_string("not found; try /metrics\n")
            .with_status_code(404)
            .with_header(header("text/plain; charset=utf-8"));
        return request.respond(reply);
    }
    if !matches!(request.method(), tiny_http::Method::Get | tiny_http::Method::Head) {
        let reply = tiny_http::Response::from_string("only GET\n")
            .with_status_code(405)
            .with_header(header("text/plain; charset=utf-8"))
            .with_header(tiny_http::Header::from_bytes("Allow", "GET, HEAD").expect("valid"));
        return request.respond(reply);
    }
    let mut body = Vec::new();
    super::write_prometheus(&mut body)?;
    // Two texts joined make one valid exposition only if no family is in
    // both: the recorder leaves `PROMETHEUS_FAMILY`, the event counters'
    // only family, alone, renaming its own metrics of that name.
    #[cfg(feature = "metrics")]
    if let Some(recorder) = super::metrics::installed() {
        recorder.write_prometheus(&mut body)?;
    }
    request.respond(tiny_http::Response::from_data(body).with_header(header(CONTENT_TYPE)))
}

/// The server [`serve`] started; dropping it stops it.
#[must_use = "dropping the Server stops it at once"]
pub struct Server {
    http: Arc<tiny_http::Server>,
    local_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The address it listens on.
    ///
    /// ```
    /// let server = cpulocal::evcnt::serve("127.0.0.1:0").unwrap();
    /// assert_ne!(server.local_addr().port(), 0);
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}
