//! The socket client used by `secretbox` and by `backupnizza status` / `trigger`: one HTTP/1.1
//! request over one blocking connection to the daemon's Unix socket, bounded by one
//! deadline.
//!
//! Blocking and hand-written on purpose. `secretbox` runs once per `--password-command`, so
//! its cost is mostly start-up: an async runtime (epoll, eventfd, a signal pipe) and a
//! general HTTP client cost more than the exchange itself, which is one request the daemon
//! answers with a `Content-Length` body and `Connection: close`. The response is parsed with
//! `httparse` (the parser hyper uses), read into buffers that are wiped on drop and never
//! reallocated behind our back, and bounded in size.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use zeroize::Zeroizing;

use crate::protocol::ErrorBody;

/// Largest response body we read, unless [`Client::with_max_response`] says otherwise.
const MAX_RESPONSE: usize = 1024 * 1024;
/// Largest response head (status line and headers) we read.
const MAX_HEAD: usize = 16 * 1024;
/// Headers a response may carry (the daemon sends four or five).
const MAX_HEADERS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing to talk to: no socket, nobody listening, permission denied.
    #[error("cannot reach the daemon at {}: {reason}", socket.display())]
    Unreachable { socket: PathBuf, reason: String },
    #[error("the daemon at {} did not answer within {}", socket.display(), crate::time::Human(*timeout))]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    /// The process serving the socket is not the daemon we were told about: nothing was sent.
    #[error("the process serving {} is not the daemon that started this process ({found}); nothing was sent to it", socket.display())]
    NotTheDaemon { socket: PathBuf, found: String },
}

/// The daemon a client expects on the other end: its pid and when that process started
/// (`SECRETBOX_DAEMON=PID:START`, START in clock ticks since boot as in `/proc/PID/stat`), so
/// a socket renamed away and replaced by another process is noticed before a token is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerId {
    pub pid: u32,
    pub started: u64,
}

impl ServerId {
    /// This process, for the environment of the processes it starts.
    pub fn this_process() -> Option<ServerId> {
        let pid = std::process::id();
        crate::sys::proc::start_time(pid).map(|started| ServerId { pid, started })
    }

    /// Parses `PID:START`.
    pub fn parse(text: &str) -> Option<ServerId> {
        let (pid, started) = text.split_once(':')?;
        Some(ServerId { pid: pid.parse().ok()?, started: started.parse().ok()? })
    }
}

impl std::fmt::Display for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.pid, self.started)
    }
}

/// A response: status and body (wiped on drop: it may hold a secret).
pub struct Response {
    pub status: StatusCode,
    pub body: Zeroizing<Vec<u8>>,
}

impl Response {
    /// The error body of a non-2xx response, if it has one.
    pub fn error(&self) -> Option<ErrorBody> {
        serde_json::from_slice(&self.body).ok()
    }
}

pub struct Client {
    socket: PathBuf,
    timeout: Duration,
    server: Option<ServerId>,
    max_response: usize,
    /// A sealed `secretbox`'s proof, sent with every request ([`crate::protocol::image`]).
    proof: Option<String>,
}

impl Client {
    pub fn new(socket: &Path, timeout: Duration) -> Client {
        Client {
            socket: socket.to_path_buf(),
            timeout,
            server: None,
            max_response: MAX_RESPONSE,
            proof: None,
        }
    }

    /// Sends the proof that this process runs the daemon's sealed `secretbox` image, when
    /// it does (its key slot is filled): see [`crate::protocol::image`].
    #[must_use]
    pub fn with_image_proof(mut self) -> Client {
        let key = crate::protocol::image::image_key();
        self.proof = key.zip(ServerId::this_process()).map(|(key, me)| {
            crate::protocol::image::proof_text(&crate::protocol::image::proof(
                &key, me.pid, me.started,
            ))
        });
        self
    }

    /// Reads response bodies of up to `bytes` (the run history is larger than any other
    /// answer).
    #[must_use]
    pub fn with_max_response(mut self, bytes: usize) -> Client {
        self.max_response = bytes;
        self
    }

    /// Sends nothing unless the socket is served by `server` (checked with `SO_PEERCRED` on
    /// the connected socket, and the start time of the pid it names).
    #[must_use]
    pub fn expect_server(mut self, server: Option<ServerId>) -> Client {
        self.server = server;
        self
    }

    fn check_server(&self, stream: &UnixStream) -> Result<(), ClientError> {
        let Some(expected) = self.server else { return Ok(()) };
        let not_the_daemon =
            |found: String| ClientError::NotTheDaemon { socket: self.socket.clone(), found };
        let pid = peer_pid(stream)
            .map_err(|e| not_the_daemon(format!("its credentials cannot be read: {e}")))?;
        if pid != Some(expected.pid) {
            let found = pid.map_or("no pid".to_string(), |p| format!("pid {p}"));
            return Err(not_the_daemon(format!("expected pid {}, found {found}", expected.pid)));
        }
        if crate::sys::proc::start_time(expected.pid) != Some(expected.started) {
            return Err(not_the_daemon(format!(
                "pid {} is another process than the daemon that started this one",
                expected.pid
            )));
        }
        Ok(())
    }

    /// Sends one request and reads its answer, all within the client's timeout. `token`, if
    /// given, goes in the `Authorization` header.
    pub fn request(
        &self,
        method: &Method,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<Response, ClientError> {
        let deadline = Deadline { end: Instant::now() + self.timeout };
        let mut stream = self.connect(&deadline).map_err(|e| {
            // SO_SNDTIMEO ran out while the daemon's listen queue was full: a timeout.
            if is_timeout(&e) {
                self.timed_out()
            } else {
                ClientError::Unreachable { socket: self.socket.clone(), reason: e.to_string() }
            }
        })?;
        self.check_server(&stream)?;
        // The whole request in one buffer (it holds the token): one write, wiped on drop.
        let capacity =
            256 + method.as_str().len() + path.len() + token.map_or(0, str::len) + body.len();
        let mut request = Zeroizing::new(Vec::with_capacity(capacity));
        let _ = write!(
            request,
            "{method} {path} HTTP/1.1\r\nHost: backupnizza\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(token) = token {
            request.extend_from_slice(b"Authorization: Bearer ");
            request.extend_from_slice(token.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        if let Some(proof) = &self.proof {
            let _ = write!(request, "{}: {proof}\r\n", crate::protocol::image::PROOF_HEADER);
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);
        deadline.arm(&stream).ok_or_else(|| self.timed_out())?;
        stream.write_all(&request).map_err(|e| self.io_error(&e))?;
        self.read_response(&mut stream, &deadline)
    }

    fn timed_out(&self) -> ClientError {
        ClientError::Timeout { socket: self.socket.clone(), timeout: self.timeout }
    }

    /// A failed read or write: the deadline, or the daemon went away mid-exchange.
    fn io_error(&self, e: &std::io::Error) -> ClientError {
        if is_timeout(e) { self.timed_out() } else { ClientError::Protocol(e.to_string()) }
    }

    /// One read into `buf` within what is left of the deadline; whether the stream ended.
    fn read_more(
        &self,
        buf: &mut Buffer,
        stream: &mut UnixStream,
        deadline: &Deadline,
    ) -> Result<bool, ClientError> {
        deadline.arm(stream).ok_or_else(|| self.timed_out())?;
        Ok(buf.read_from(stream).map_err(|e| self.io_error(&e))? == 0)
    }

    /// A connected socket; `connect` itself is bounded by the deadline (a Unix stream
    /// `connect` waits while the listener's queue is full, for at most `SO_SNDTIMEO`).
    fn connect(&self, deadline: &Deadline) -> std::io::Result<UnixStream> {
        use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
        #[cfg(target_os = "linux")]
        let flags = SockFlag::SOCK_CLOEXEC;
        #[cfg(not(target_os = "linux"))]
        let flags = SockFlag::empty();
        let fd = socket::socket(AddressFamily::Unix, SockType::Stream, flags, None)?;
        // No SOCK_CLOEXEC here (macOS): set after the call; the clients are single-threaded,
        // so no exec can come in between.
        #[cfg(not(target_os = "linux"))]
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
        let left = deadline.left().ok_or(std::io::ErrorKind::TimedOut)?;
        socket::setsockopt(&fd, sockopt::SendTimeout, &timeval(left))?;
        let addr = UnixAddr::new(self.socket.as_path())?;
        socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
        Ok(UnixStream::from(fd))
    }

    fn read_response(
        &self,
        stream: &mut UnixStream,
        deadline: &Deadline,
    ) -> Result<Response, ClientError> {
        let mut buf = Buffer::with_capacity(4096);
        let mut eof = false;
        // The head first: read until httparse has the whole of it.
        let (status, head_len, framing) = loop {
            if !buf.bytes().is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut parsed = httparse::Response::new(&mut headers);
                match parsed.parse(buf.bytes()) {
                    Ok(httparse::Status::Complete(len)) => {
                        let code = parsed.code.unwrap_or(0);
                        let status = StatusCode::from_u16(code).map_err(|_| {
                            ClientError::Protocol(format!("invalid status code {code}"))
                        })?;
                        break (status, len, Framing::of(parsed.headers)?);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => {
                        return Err(ClientError::Protocol(format!("malformed response: {e}")));
                    }
                }
            }
            if eof {
                let why = if buf.bytes().is_empty() {
                    "the daemon closed the connection without answering"
                } else {
                    "the daemon closed the connection in the middle of its answer"
                };
                return Err(ClientError::Protocol(why.to_string()));
            }
            if buf.bytes().len() >= MAX_HEAD {
                return Err(ClientError::Protocol(format!(
                    "the response head is larger than {MAX_HEAD} bytes"
                )));
            }
            eof = self.read_more(&mut buf, stream, deadline)?;
        };
        let too_large = || {
            ClientError::Protocol(format!(
                "the response is larger than {} bytes",
                self.max_response
            ))
        };
        // Then the body: exactly Content-Length bytes, or (no length) up to the end.
        let wanted = match framing {
            Framing::Length(n) if n > self.max_response => return Err(too_large()),
            Framing::Length(n) => Some(n),
            Framing::Chunked | Framing::ToEnd => None,
        };
        loop {
            let have = buf.bytes().len() - head_len;
            if wanted.is_some_and(|n| have >= n) || (wanted.is_none() && eof) {
                break;
            }
            if eof {
                return Err(ClientError::Protocol(
                    "the daemon closed the connection before the whole answer was sent".to_string(),
                ));
            }
            // A chunked body carries framing bytes too: allow for them.
            if have > self.max_response.saturating_mul(2).saturating_add(64) {
                return Err(too_large());
            }
            eof = self.read_more(&mut buf, stream, deadline)?;
        }
        let raw = &buf.bytes()[head_len..];
        let body = match (framing, wanted) {
            (Framing::Chunked, _) => dechunk(raw, self.max_response)?,
            (_, Some(n)) => Zeroizing::new(raw[..n].to_vec()),
            (_, None) if raw.len() > self.max_response => return Err(too_large()),
            (_, None) => Zeroizing::new(raw.to_vec()),
        };
        Ok(Response { status, body })
    }
}

/// How the body of a response ends.
#[derive(Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    ToEnd,
}

impl Framing {
    fn of(headers: &[httparse::Header<'_>]) -> Result<Framing, ClientError> {
        let value = |name: &str| {
            headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        };
        if value("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
            return Ok(Framing::Chunked);
        }
        match value("content-length") {
            Some(text) => text
                .parse()
                .map(Framing::Length)
                .map_err(|_| ClientError::Protocol(format!("invalid Content-Length {text:?}"))),
            None => Ok(Framing::ToEnd),
        }
    }
}

/// Decodes a complete chunked body (chunk extensions and trailers ignored).
fn dechunk(mut raw: &[u8], max: usize) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let bad = |why: &str| ClientError::Protocol(format!("malformed chunked body: {why}"));
    let mut body = Zeroizing::new(Vec::with_capacity(raw.len().min(max)));
    loop {
        let line_end = memchr::memmem::find(raw, b"\r\n").ok_or_else(|| bad("no chunk size"))?;
        let size_text = std::str::from_utf8(&raw[..line_end]).map_err(|_| bad("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if raw.len() < size + 2 || &raw[size..size + 2] != b"\r\n" {
            return Err(bad("a chunk is cut short"));
        }
        if body.len() + size > max {
            return Err(ClientError::Protocol(format!("the response is larger than {max} bytes")));
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// The one deadline a request's connect, write and reads share.
struct Deadline {
    end: Instant,
}

impl Deadline {
    fn left(&self) -> Option<Duration> {
        self.end.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }

    /// Sets the socket's read and write timeouts to what is left; `None` once it has passed.
    fn arm(&self, stream: &UnixStream) -> Option<()> {
        let left = self.left()?;
        stream.set_read_timeout(Some(left)).ok()?;
        stream.set_write_timeout(Some(left)).ok()
    }
}

/// A read buffer that may hold a secret: grown by copying into a fresh allocation and wiping
/// the old one, never by `Vec`'s own reallocation (which would leave the old bytes behind).
struct Buffer {
    data: Zeroizing<Vec<u8>>,
}

impl Buffer {
    fn with_capacity(bytes: usize) -> Buffer {
        Buffer { data: Zeroizing::new(Vec::with_capacity(bytes)) }
    }

    fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// One `read` into the spare capacity; the number of bytes read (0 at end of stream).
    fn read_from(&mut self, stream: &mut UnixStream) -> std::io::Result<usize> {
        const CHUNK: usize = 4096;
        if self.data.capacity() - self.data.len() < CHUNK {
            let mut bigger = Zeroizing::new(Vec::with_capacity(self.data.capacity() * 2 + CHUNK));
            bigger.extend_from_slice(&self.data);
            self.data = bigger;
        }
        let len = self.data.len();
        self.data.resize(len + CHUNK, 0);
        let read = loop {
            match stream.read(&mut self.data[len..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        self.data.truncate(len + *read.as_ref().unwrap_or(&0));
        read
    }
}

fn timeval(d: Duration) -> nix::sys::time::TimeVal {
    // At least a microsecond: a zero timeout means "wait for ever" to the kernel.
    let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX).max(1);
    nix::sys::time::TimeVal::new(micros / 1_000_000, (micros % 1_000_000) as _)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// The pid of the process at the other end of a connected Unix socket.
#[cfg(target_os = "linux")]
fn peer_pid(stream: &UnixStream) -> std::io::Result<Option<u32>> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(u32::try_from(cred.pid()).ok().filter(|p| *p > 0))
}

#[cfg(target_os = "macos")]
fn peer_pid(stream: &UnixStream) -> std::io::Result<Option<u32>> {
    let pid = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::LocalPeerPid)?;
    Ok(u32::try_from(pid).ok().filter(|p| *p > 0))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn peer_pid(_stream: &UnixStream) -> std::io::Result<Option<u32>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded() {
        let body = dechunk(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n", 100).unwrap();
        assert_eq!(&body[..], b"hello world");
        assert!(dechunk(b"5\r\nhel", 100).is_err());
        assert!(dechunk(b"zz\r\n", 100).is_err());
        assert!(dechunk(b"5\r\nhello\r\n0\r\n\r\n", 4).is_err());
    }

    #[test]
    fn a_growing_buffer_keeps_what_it_read() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || b.write_all(&data))
        };
        let mut buf = Buffer::with_capacity(16);
        while buf.bytes().len() < data.len() {
            assert_ne!(buf.read_from(&mut a).unwrap(), 0);
        }
        writer.join().unwrap().unwrap();
        assert_eq!(buf.bytes(), &data[..]);
    }
}
