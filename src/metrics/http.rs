//! `GET /metrics` on a local address: one small thread, one connection at a
//! time, each request read within [`TIMEOUT`] and at most [`MAX_REQUEST`]
//! bytes, answered from the latest rendered text and closed. Nothing a client
//! sends can make it panic or hold it for longer than the timeouts.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// How long a client has to send its request (all of it), and to take the answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The largest request (request line and headers) read; a scrape needs a few hundred bytes.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long an answered client is given to close before the socket is.
const LINGER: Duration = Duration::from_millis(200);
/// How often the thread looks at the stop flag while no one connects.
const STOP_CHECK: Duration = Duration::from_millis(250);

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The serving thread; [`Server::stop`] ends it.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` and serves `latest` from a thread; `timeout` bounds each connection.
    pub fn start(
        addr: SocketAddr,
        latest: Arc<Mutex<String>>,
        timeout: Duration,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        // Non-blocking, so a client gone between poll and accept cannot block the thread.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || run(&listener, &latest, &flag, timeout))?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address actually bound (the port, when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ends the thread and closes the socket; waits at most for the connection in hand.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn run(listener: &TcpListener, latest: &Mutex<String>, stop: &AtomicBool, timeout: Duration) {
    let wait = PollTimeout::try_from(STOP_CHECK).unwrap_or(PollTimeout::MAX);
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(err) => {
                tracing::error!("metrics endpoint stopped: poll: {err}");
                return;
            }
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(err) = serve(stream, latest, timeout) {
                    tracing::debug!(%peer, "metrics request: {err}");
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => {
                // EMFILE and the like: do not spin on it.
                tracing::debug!("metrics endpoint: accept: {err}");
                std::thread::sleep(STOP_CHECK);
            }
        }
    }
}

/// Reads one request from `stream`, answers it and closes.
fn serve(mut stream: TcpStream, latest: &Mutex<String>, timeout: Duration) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(timeout))?;
    let deadline = Instant::now() + timeout;
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let answer = loop {
        if head_end(&request).is_some() {
            let body = latest.lock().map(|t| t.clone()).unwrap_or_default();
            break respond(&request, &body);
        }
        if request.len() >= MAX_REQUEST {
            break status_only(
                431,
                "Request Header Fields Too Large",
                "request too large\n",
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break status_only(408, "Request Timeout", "request not received in time\n");
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) if request.is_empty() => return Ok(()),
            // The client stopped sending: answer what it said, if anything.
            Ok(0) => {
                let body = latest.lock().map(|t| t.clone()).unwrap_or_default();
                break respond(&request, &body);
            }
            Ok(n) => {
                let room = MAX_REQUEST.saturating_sub(request.len());
                request.extend_from_slice(chunk.get(..n.min(room)).unwrap_or_default());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break status_only(408, "Request Timeout", "request not received in time\n");
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    stream.write_all(&answer)?;
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // A close with unread input sends a reset that can destroy the answer
    // before the client reads it: read on, briefly and boundedly, until it closes.
    stream.set_read_timeout(Some(LINGER))?;
    let until = Instant::now() + LINGER;
    let mut drained = 0;
    while drained < MAX_REQUEST * 8 && Instant::now() < until {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// Where the request's head ends (after the empty line), if it has.
fn head_end(request: &[u8]) -> Option<usize> {
    let crlf = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = request.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The answer to a request (its head; a body is never read): `body` for
/// `GET /metrics`, the headers alone for `HEAD`, else 400, 404 or 405.
pub fn respond(request: &[u8], body: &str) -> Vec<u8> {
    let line_end = request
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(request.len());
    let line = request.get(..line_end).unwrap_or_default();
    let line = std::str::from_utf8(line)
        .unwrap_or("")
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return status_only(400, "Bad Request", "bad request\n");
    };
    if method.is_empty() || !version.starts_with("HTTP/1.") {
        return status_only(400, "Bad Request", "bad request\n");
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path != "/metrics" {
        return status_only(404, "Not Found", "not found: the metrics are at /metrics\n");
    }
    match method {
        "GET" => answer(200, "OK", &[("Content-Type", CONTENT_TYPE)], body, true),
        "HEAD" => answer(200, "OK", &[("Content-Type", CONTENT_TYPE)], body, false),
        _ => answer(
            405,
            "Method Not Allowed",
            &[
                ("Allow", "GET, HEAD"),
                ("Content-Type", "text/plain; charset=utf-8"),
            ],
            "method not allowed: use GET\n",
            true,
        ),
    }
}

fn status_only(code: u16, reason: &str, body: &str) -> Vec<u8> {
    answer(
        code,
        reason,
        &[("Content-Type", "text/plain; charset=utf-8")],
        body,
        true,
    )
}

fn answer(
    code: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: &str,
    with_body: bool,
) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {code} {reason}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    if with_body {
        out.push_str(body);
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn answers_by_method_and_path() {
        let ok = text(&respond(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            "a 1\n",
        ));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 4\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\na 1\n"), "{ok}");
        let query = text(&respond(b"GET /metrics?x=1 HTTP/1.0\n\n", "a 1\n"));
        assert!(query.starts_with("HTTP/1.1 200"), "{query}");
        let head = text(&respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", "a 1\n"));
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(head.contains("Content-Length: 4\r\n"), "{head}");
        for (request, status) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "404"),
            (b"GET /metrics/ HTTP/1.1\r\n\r\n", "404"),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", "404"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", "405"),
            (b"DELETE /metrics HTTP/1.1\r\n\r\n", "405"),
            (b"GET /metrics\r\n\r\n", "400"),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", "400"),
            (b"GET /metrics HTTP/1.1 x\r\n\r\n", "400"),
            (b"GET /metrics SPDY/3\r\n\r\n", "400"),
            (b"\r\n\r\n", "400"),
            (b"", "400"),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", "400"),
        ] {
            let out = text(&respond(request, "a 1\n"));
            assert!(
                out.starts_with(&format!("HTTP/1.1 {status} ")),
                "{:?}: {out}",
                text(request)
            );
            assert!(!out.contains("a 1"), "{out}");
        }
        let not_allowed = text(&respond(b"PUT /metrics HTTP/1.1\r\n\r\n", ""));
        assert!(
            not_allowed.contains("Allow: GET, HEAD\r\n"),
            "{not_allowed}"
        );
    }

    #[test]
    fn head_end_finds_the_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        text(&out)
    }

    #[test]
    fn serves_over_tcp_and_survives_bad_clients() {
        let latest = Arc::new(Mutex::new("sftp_ha_x 1\n".to_string()));
        let server = Server::start(
            "127.0.0.1:0".parse().unwrap(),
            latest.clone(),
            Duration::from_millis(300),
        )
        .unwrap();
        let addr = server.local_addr();
        let ok = exchange(addr, b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("sftp_ha_x 1\n"),
            "{ok}"
        );

        // A new text is served at once.
        *latest.lock().unwrap() = "sftp_ha_x 2\n".into();
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.ends_with("sftp_ha_x 2\n"), "{ok}");

        // A client that says nothing gets a 408 after the timeout, and holds no one up for longer.
        let silent = TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.ends_with("sftp_ha_x 2\n"), "{ok}");
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(silent);

        // Too much: refused once the limit is reached, without reading on.
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_REQUEST * 2));
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(&big);
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        assert!(text(&out).starts_with("HTTP/1.1 431"), "{}", text(&out));

        // Half a request, then the client stops writing: answered with what it said.
        let out = exchange(addr, b"GET /metrics HTTP/1.1\r\n");
        assert!(
            out.starts_with("HTTP/1.1 408") || out.starts_with("HTTP/1.1 200"),
            "{out}"
        );
        // Garbage bytes, a client that connects and leaves: still serving.
        let _ = exchange(addr, &[0u8, 159, 146, 150, b'\n', b'\n']);
        drop(TcpStream::connect(addr).unwrap());
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

        let start = Instant::now();
        server.stop();
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(
            TcpStream::connect(addr).is_err(),
            "the port is closed after stop"
        );
    }
}
