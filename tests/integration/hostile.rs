//! The catalogue of bad requests: each is answered with a 4xx or a closed connection, never a
//! crash or a stuck worker, and the server still serves a legitimate redemption afterwards.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use backupnizza::broker::Limits;

use crate::broker::InProcess;
use crate::harness::canary;

/// Sends raw bytes and returns the status code of the first response, or `None` if the
/// server closed the connection without one.
fn raw(socket: &std::path::Path, bytes: &[u8]) -> Option<u16> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may close before reading everything; a failed write is an answer too.
    let _ = stream.write_all(bytes);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[test]
fn bad_requests_get_a_4xx_or_a_closed_connection() {
    let limits = Limits {
        header_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let b =
        InProcess::start_with(&[("repo", canary().as_bytes())], Duration::from_secs(60), limits);
    let socket = b.scratch.socket();
    let big_header = format!(
        "GET /v1/version HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let big_body = format!(
        "POST /v1/secrets/repo HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{}",
        "b".repeat(100_000)
    );
    let chunked = format!(
        "POST /v1/secrets/repo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{}",
        "1000\r\n".to_string()
            + &"c".repeat(4096)
            + "\r\n1000\r\n"
            + &"c".repeat(4096)
            + "\r\n0\r\n\r\n"
    );
    let long_name = format!(
        "POST /v1/secrets/{} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        "n".repeat(5000)
    );
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("malformed request line", b"GARBAGE\r\n\r\n".to_vec(), &[400]),
        ("binary noise", vec![0u8, 159, 146, 150, 13, 10, 13, 10], &[400]),
        ("oversized headers", big_header.into_bytes(), &[431, 400]),
        ("oversized body (content-length)", big_body.into_bytes(), &[413]),
        ("oversized body (chunked)", chunked.into_bytes(), &[413]),
        ("unknown route", b"GET /v2/secrets HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), &[404]),
        ("unknown method", b"DELETE /v1/version HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), &[405]),
        ("wrong method on secrets", b"GET /v1/secrets/repo HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), &[405]),
        ("no token", b"POST /v1/secrets/repo HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_vec(), &[401]),
        (
            "garbage token",
            b"POST /v1/secrets/repo HTTP/1.1\r\nhost: x\r\nauthorization: Bearer \xff\xfe\r\ncontent-length: 0\r\n\r\n"
                .to_vec(),
            &[401, 400],
        ),
        (
            "non-UTF-8 name (escaped)",
            b"POST /v1/secrets/%FF%FE HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "non-UTF-8 name (raw)",
            b"POST /v1/secrets/\xff\xfe HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_vec(),
            &[400],
        ),
        ("overlong name", long_name.into_bytes(), &[400]),
        (
            "path traversal",
            b"POST /v1/secrets/../status HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_vec(),
            &[400],
        ),
        ("control route without a daemon", b"GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), &[503]),
        ("truncated request head", b"POST /v1/secrets/repo HTTP/1.1\r\nhost: x\r\ncontent-le".to_vec(), &[]),
        (
            "truncated body",
            b"POST /v1/secrets/repo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc".to_vec(),
            &[408, 400],
        ),
        ("pipelined garbage", b"GET /v1/version HTTP/1.1\r\nhost: x\r\n\r\nGARBAGE\r\n\r\n".to_vec(), &[200]),
        ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), &[400, 505]),
    ];
    for (name, bytes, allowed) in &cases {
        let status = raw(&socket, bytes);
        match status {
            // A closed connection is an acceptable answer to anything malformed.
            None => {
                assert!(
                    allowed.is_empty() || allowed.iter().all(|s| *s >= 400),
                    "{name}: closed without an answer"
                );
            }
            Some(code) => {
                assert!(allowed.contains(&code), "{name}: got {code}, expected one of {allowed:?}");
            }
        }
    }
    // Pipelined garbage: the valid request is answered, then the connection closes.
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET /v1/version HTTP/1.1\r\nhost: x\r\n\r\nGARBAGE\r\n\r\n").unwrap();
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // A client that sends nothing is disconnected after the header timeout; none of the
    // above left a worker stuck: a real redemption still works.
    let mut idle = UnixStream::connect(&socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(idle.read(&mut buf).unwrap_or(0), 0, "an idle connection was not closed");
    let (token, handle) = b.mint(&["repo"], 1);
    let out = b.spawn(&token, handle, "secretbox get repo >/dev/null").wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
