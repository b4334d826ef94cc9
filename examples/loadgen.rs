//! Load generator for the daemon's socket: run it *as a task* (it needs the task's
//! `SECRETBOX_TOKEN` and `SECRETBOX_SOCKET`), with many secrets and a high `redeem_limit`,
//! so one token allows many redemptions. Used by the load tests and the benchmarks.
//!
//!     loadgen SECRETS TOTAL CONCURRENCY
//!
//! Redeems `TOTAL` times, round-robin over secrets `s0`..`s{SECRETS-1}`, over `CONCURRENCY`
//! keep-alive connections, and prints one line:
//! `ok=N failed=N seconds=F rate=F p50_us=N p99_us=N max_us=N`.
//!
//!     loadgen hang
//!
//! Connects, sends half a request, prints `sent` and waits forever: a client to kill
//! mid-request.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("hang") {
        use std::io::Write;
        let socket = std::env::var("SECRETBOX_SOCKET").expect("SECRETBOX_SOCKET");
        let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
        stream
            .write_all(b"POST /v1/secrets/s0 HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
            .unwrap();
        println!("sent");
        loop {
            std::thread::park();
        }
    }
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let [secrets, total, concurrency] = args[..] else {
        eprintln!("usage: loadgen SECRETS TOTAL CONCURRENCY");
        std::process::exit(2);
    };
    let token = std::env::var("SECRETBOX_TOKEN").expect("SECRETBOX_TOKEN (run loadgen as a task)");
    let socket = std::env::var("SECRETBOX_SOCKET").expect("SECRETBOX_SOCKET");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let started = Instant::now();
    let results = runtime.block_on(async {
        let mut handles = Vec::new();
        for worker in 0..concurrency {
            let (token, socket) = (token.clone(), socket.clone());
            let count = total / concurrency + usize::from(worker < total % concurrency);
            handles.push(tokio::spawn(async move {
                run_worker(worker, count, secrets, concurrency, &token, &socket).await
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.push(h.await.unwrap());
        }
        all
    });
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> =
        results.iter().flat_map(|(l, _, _)| l.iter().copied()).collect();
    let ok: usize = results.iter().map(|(_, ok, _)| ok).sum();
    let failed: usize = results.iter().map(|(_, _, f)| f).sum();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "ok={ok} failed={failed} seconds={:.3} rate={:.0} p50_us={} p99_us={} max_us={}",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_micros(),
        pct(0.99).as_micros(),
        latencies.last().copied().unwrap_or_default().as_micros()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Requests per keep-alive connection before a fresh one. The daemon closes any connection
/// after its maximum lifetime (two minutes) whatever it is doing; a worker that kept one
/// connection for all its requests would lose one request to that close whenever the machine
/// is slow enough for a run to outlast it. A few hundred requests take well under a second.
const REQUESTS_PER_CONNECTION: usize = 200;

/// Keep-alive connections doing `count` redemptions; a fresh one every
/// `REQUESTS_PER_CONNECTION` requests, or when the server closes one.
async fn run_worker(
    worker: usize,
    count: usize,
    secrets: usize,
    stride: usize,
    token: &str,
    socket: &str,
) -> (Vec<Duration>, usize, usize) {
    let mut latencies = Vec::with_capacity(count);
    let (mut ok, mut failed) = (0, 0);
    let mut sender = None;
    let auth = format!("Bearer {token}");
    for i in 0..count {
        if i % REQUESTS_PER_CONNECTION == 0
            || sender.as_ref().is_none_or(
                |s: &hyper::client::conn::http1::SendRequest<Empty<Bytes>>| s.is_closed(),
            )
        {
            let stream = tokio::net::UnixStream::connect(socket).await.expect("connect");
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            sender = Some(s);
        }
        let s = sender.as_mut().unwrap();
        let name = format!("s{}", (worker + i * stride) % secrets);
        let request = Request::post(format!("/v1/secrets/{name}"))
            .header("authorization", &auth)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let start = Instant::now();
        if let Ok(response) = s.send_request(request).await {
            let good = response.status().is_success();
            let _ = response.into_body().collect().await;
            latencies.push(start.elapsed());
            if good { ok += 1 } else { failed += 1 }
        } else {
            failed += 1;
            sender = None;
        }
    }
    (latencies, ok, failed)
}
