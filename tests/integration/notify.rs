//! Notifications never hold up the schedule: endpoints that hang or fail cost only their own
//! notifications, not another task's run, not a firing, and not the daemon's shutdown.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::harness::{Scratch, history};

/// An HTTP endpoint on loopback that accepts every connection and never answers (it keeps
/// the connections open, and reads what is sent so the sender never blocks on a full buffer).
fn hanging_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    url
}

/// An HTTP endpoint on loopback that answers every request with 500.
fn failing_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    url
}

/// Regression: notifications ran on the runtime's blocking threads, which the start of every
/// run needs too. One endpoint that never answered delayed other tasks' processes by 12 s
/// after their start record, and `@every 2s` tasks lost 26-28 of about 40 firings each as
/// overlaps, tasks without notifications included; SIGTERM then took 21 s.
#[test]
fn a_hanging_and_a_failing_endpoint_hold_up_no_run_and_no_shutdown() {
    let scratch = Scratch::new();
    let starts = scratch.path().join("starts");
    // Each process notes its run id and when it really started.
    let note = format!(
        "command: [sh, -c, 'echo \"$BACKUPNIZZA_RUN_ID $(date +%s.%N)\" >> {}']",
        starts.display()
    );
    let task = |name: &str, notify: Option<&str>| {
        let notify = notify
            .map(|url| format!("    notify: {{webhook: {url}, timeout: 10s}}\n"))
            .unwrap_or_default();
        format!("  {name}:\n    schedule: '@every 2s'\n    {note}\n{notify}")
    };
    let config = scratch.config(&format!(
        "shutdown_grace: 10s\ntasks:\n{}{}{}{}{}",
        task("hung", Some(&hanging_endpoint())),
        task("failing", Some(&failing_endpoint())),
        task("a", None),
        task("b", None),
        task("c", None),
    ));
    let daemon = scratch.start_daemon(&config);
    std::thread::sleep(Duration::from_secs(120));
    let stopping = Instant::now();
    let status = daemon.stop();
    let took = stopping.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}, more than shutdown_grace");

    let records = history(&scratch);
    let skipped: Vec<&serde_json::Value> = records.iter().filter(|r| r["type"] == "skip").collect();
    assert!(skipped.is_empty(), "firings were skipped: {skipped:#?}");
    // Every process started within 2 s of its Start record (which has whole seconds: the
    // record's second may begin up to a second before the process).
    let noted = std::fs::read_to_string(&starts).unwrap();
    let mut late = Vec::new();
    let mut runs = 0;
    for record in records.iter().filter(|r| r["type"] == "start") {
        let run_id = record["run_id"].as_str().unwrap();
        let at: jiff::Timestamp = record["at"].as_str().unwrap().parse().unwrap();
        let Some(line) = noted.lines().find(|l| l.starts_with(&format!("{run_id} "))) else {
            continue; // started just before the SIGTERM, cancelled before its process ran
        };
        runs += 1;
        let began: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let after = began - at.as_second() as f64;
        if after > 2.0 {
            late.push(format!("{run_id}: {after:.1} s after its start record"));
        }
    }
    assert!(late.is_empty(), "processes started late:\n{}", late.join("\n"));
    // Five tasks every 2 s for 2 minutes: about 300 runs, all of them on time.
    assert!(runs > 250, "only {runs} runs started");
}
