//! The notification presets, received by real peers on loopback: ntfy and Gotify by a small
//! HTTP server in the test that keeps each raw request. Each says how a run ended, names
//! the task and the result, and carries none of the task's secrets, which the task printed
//! on both streams before it failed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{PATIENCE, Scratch, TRIGGERED, canary, trigger, write_private};

/// An HTTP server on loopback that answers every request `200 {}` and hands the raw
/// request (head and body) to the test, one message per request.
fn recording_endpoint() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let request = read_request(&mut stream);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            );
            if tx.send(request).is_err() {
                break;
            }
        }
    });
    (url, rx)
}

/// One request: its head, then a body of `content-length` bytes (or chunks up to the last).
fn read_request(stream: &mut TcpStream) -> String {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    loop {
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            let chunked = head.contains("transfer-encoding: chunked");
            if (chunked && text.ends_with("0\r\n\r\n"))
                || (!chunked && buf.len() >= end + 4 + length)
            {
                break;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The value of header `name` (case-insensitive) in a raw request.
fn header<'a>(request: &'a str, name: &str) -> Option<&'a str> {
    let head = request.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn body(request: &str) -> &str {
    request.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The task file's `secrets:` with the task's secret `s` and the named tokens, each a canary
/// in a 0600 file: (the YAML, the task's secret, the tokens in order).
fn canaries(scratch: &Scratch, tokens: &[&str]) -> (String, String, Vec<String>) {
    let mut yaml = String::from("secrets:\n");
    let mut values = Vec::new();
    for name in std::iter::once("s").chain(tokens.iter().copied()) {
        let value = canary();
        let file = scratch.path().join(format!("{name}.secret"));
        write_private(&file, format!("{value}\n").as_bytes());
        yaml.push_str(&format!("  {name}: {{file: {}}}\n", file.display()));
        values.push(value);
    }
    let secret = values.remove(0);
    (yaml, secret, values)
}

/// A task that prints its secret on stdout and stderr, then fails with exit code 3.
const LEAKY: &str = "    secrets: [s]\n    env: {CANARY: {secret: s}}\n    command: [sh, -c, 'echo \"leak $CANARY\"; echo \"leak $CANARY\" >&2; exit 3']\n";

#[test]
fn ntfy_and_gotify_get_a_failure_loud_and_without_the_tasks_secret() {
    let scratch = Scratch::new();
    let (ntfy, ntfy_requests) = recording_endpoint();
    let (gotify, gotify_requests) = recording_endpoint();
    let (secrets, secret, tokens) = canaries(&scratch, &["ntfy-token", "gotify-token"]);
    let notify = format!(
        "    notify:\n      ntfy: {{url: '{ntfy}', topic: backups, token_secret: ntfy-token}}\n      gotify: {{url: '{gotify}/', token_secret: gotify-token}}\n"
    );
    let config = scratch.config(&format!(
        "{secrets}tasks:\n  nightly:\n    {TRIGGERED}\n{LEAKY}{notify}  fine:\n    {TRIGGERED}\n    command: ['true']\n{notify}  chatty:\n    {TRIGGERED}\n{LEAKY}    notify:\n      send_logs: true\n      ntfy: {{url: '{ntfy}', topic: logs}}\n"
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "nightly", true).expect_code(1);

    let mut seen = Vec::new();
    let request = ntfy_requests.recv_timeout(PATIENCE).expect("an ntfy publish");
    seen.push(request.clone());
    assert!(request.starts_with("POST /backups HTTP/1.1\r\n"), "{request}");
    assert_eq!(header(&request, "Title"), Some("backupnizza: nightly failed"), "{request}");
    assert_eq!(header(&request, "Priority"), Some("5"), "{request}");
    assert_eq!(header(&request, "Tags"), Some("warning"), "{request}");
    let bearer = format!("Bearer {}", tokens[0]);
    assert_eq!(header(&request, "Authorization"), Some(bearer.as_str()), "{request}");
    let text = body(&request);
    assert!(text.contains("task: nightly\nresult: failed (exit code 3)\n"), "{request}");
    assert!(!text.contains("stderr"), "no stderr without send_logs: {request}");

    let request = gotify_requests.recv_timeout(PATIENCE).expect("a Gotify message");
    seen.push(request.clone());
    assert!(request.starts_with("POST /message HTTP/1.1\r\n"), "{request}");
    assert_eq!(header(&request, "X-Gotify-Key"), Some(tokens[1].as_str()), "{request}");
    let message: serde_json::Value = serde_json::from_str(body(&request)).expect("JSON");
    assert_eq!(message["title"], "backupnizza: nightly failed", "{request}");
    assert_eq!(message["priority"], 8, "{request}");
    let words = message["message"].as_str().unwrap();
    assert!(words.contains("task: nightly") && words.contains("result: failed"), "{request}");

    // A success is quieter, and says so.
    trigger(&scratch, &config, "fine", true).expect_code(0);
    let request = ntfy_requests.recv_timeout(PATIENCE).expect("the success's publish");
    assert_eq!(header(&request, "Title"), Some("backupnizza: fine success"), "{request}");
    assert_eq!(header(&request, "Priority"), Some("3"), "{request}");
    assert_eq!(header(&request, "Tags"), Some("white_check_mark"), "{request}");
    let request = gotify_requests.recv_timeout(PATIENCE).expect("the success's message");
    let message: serde_json::Value = serde_json::from_str(body(&request)).expect("JSON");
    assert_eq!(message["priority"], 4, "{request}");

    // With send_logs, the stderr tail comes too, masked.
    trigger(&scratch, &config, "chatty", true).expect_code(1);
    let request = ntfy_requests.recv_timeout(PATIENCE).expect("the tail's publish");
    seen.push(request.clone());
    assert!(request.starts_with("POST /logs HTTP/1.1\r\n"), "{request}");
    assert_eq!(header(&request, "Authorization"), None, "{request}");
    assert!(body(&request).contains("last lines of stderr:\n  leak "), "{request}");

    // Ends only: no start was published, and nothing more comes.
    assert!(ntfy_requests.recv_timeout(Duration::from_secs(2)).is_err());
    let log = daemon.log_text();
    assert!(log.contains("leak "), "the task printed its secret: {log}");
    for text in seen.iter().chain([&log]) {
        assert!(!text.contains(&secret), "the task's secret went out: {text}");
    }
}

/// Each mistake in a preset is reported at once, by key path and line, with what to write.
#[test]
fn preset_mistakes_are_named_by_their_key() {
    let scratch = Scratch::new();
    let task = |name: &str, notify: &str| {
        format!("  {name}:\n    {TRIGGERED}\n    command: ['true']\n    notify:\n      {notify}\n")
    };
    let file = scratch.write(
        "b.yaml",
        format!(
            "secrets:\n  tok: {{env: TOK}}\ntasks:\n{}{}{}{}",
            task("a", "ntfy: {url: 'https://ntfy.sh', topic: backups, token_secrt: tok}"),
            task("b", "ntfy: {url: 'https://ntfy.sh', token_secret: tok}"),
            task("c", "gotify: {url: 'https://gotify.example', token_secret: tokk}"),
            task("d", "ntfy: {url: 'ntfy.sh', topic: 'my backups'}"),
        ),
    );
    let run = scratch.backupnizza(["validate", "-c"]).run_with(&file);
    run.expect_code(2);
    let err = run.stderr();
    let at = |line: usize| format!("{}:{line}:", file.display());
    for (line, expected) in [
        (
            8,
            "tasks.a.notify.ntfy.token_secrt: unknown key \"token_secrt\" (did you mean `token_secret`?)",
        ),
        (13, "tasks.b.notify.ntfy: missing required key `topic`"),
        (
            18,
            "tasks.c.notify.gotify.token_secret: `token_secret: tokk` names a secret that is not declared under `secrets:` (did you mean `tok`?)",
        ),
        (23, "tasks.d.notify.ntfy.url: invalid URL \"ntfy.sh\""),
        (23, "tasks.d.notify.ntfy.topic: invalid topic \"my backups\""),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&at(line)) && l.contains(expected)),
            "no {expected:?} at line {line}\n{run}"
        );
    }
}
