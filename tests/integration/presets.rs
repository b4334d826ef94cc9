//! The notification presets, received by real peers: desktop notifications by
//! python3-dbusmock's `notification_daemon` on a private session bus, ntfy and Gotify by a
//! small HTTP server in the test that keeps each raw request. Each says how a run ended,
//! names the task and the result, and carries none of the task's secrets, which the task
//! printed on both streams before it failed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{PATIENCE, Scratch, TRIGGERED, canary, trigger, wait_until, write_private};

/// The `Notify` calls a dbusmock notification daemon received, as JSON, through the mock's
/// own `GetCalls` (the urgency hint with its D-Bus type, so a byte is told from an int).
const NOTIFY_CALLS: &str = r"
import json, os, dbus
bus = dbus.bus.BusConnection(os.environ['DBUS_SESSION_BUS_ADDRESS'])
mock = bus.get_object('org.freedesktop.Notifications', '/org/freedesktop/Notifications')
calls = []
for _, name, args in mock.GetCalls(dbus_interface='org.freedesktop.DBus.Mock'):
    if name == 'Notify':
        hints = {str(k): [type(v).__name__, int(v)] for k, v in args[6].items()}
        calls.append(dict(app=str(args[0]), replaces=int(args[1]), icon=str(args[2]),
                          summary=str(args[3]), body=str(args[4]),
                          actions=[str(a) for a in args[5]], hints=hints, expire=int(args[7])))
print(json.dumps(calls))
";

/// python3-dbusmock's `notification_daemon` on a private session bus; both stop when dropped.
pub(crate) struct MockNotifications {
    bus: Child,
    mock: Child,
    pub(crate) address: String,
}

impl MockNotifications {
    pub(crate) fn start(scratch: &Scratch) -> MockNotifications {
        let (bus, address) = crate::laptop::private_bus(scratch, "session");
        let mock = Command::new("/usr/bin/python3")
            .args(["-m", "dbusmock", "--template", "notification_daemon"])
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-dbusmock is installed (.ci/packages)");
        let mock = MockNotifications { bus, mock, address };
        wait_until("the notification daemon mock on the bus", || mock.calls().is_some());
        mock
    }

    /// The `Notify` calls so far, or `None` before the mock is up.
    pub(crate) fn calls(&self) -> Option<Vec<serde_json::Value>> {
        let out = Command::new("/usr/bin/python3")
            .args(["-c", NOTIFY_CALLS])
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    pub(crate) fn wait_for_calls(&self, count: usize) -> Vec<serde_json::Value> {
        wait_until(&format!("{count} Notify calls"), || {
            self.calls().is_some_and(|c| c.len() >= count)
        });
        self.calls().unwrap()
    }
}

impl Drop for MockNotifications {
    fn drop(&mut self) {
        let _ = self.mock.kill();
        let _ = self.mock.wait();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

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
pub(crate) fn canaries(scratch: &Scratch, tokens: &[&str]) -> (String, String, Vec<String>) {
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
pub(crate) const LEAKY: &str = "    secrets: [s]\n    env: {CANARY: {secret: s}}\n    command: [sh, -c, 'echo \"leak $CANARY\"; echo \"leak $CANARY\" >&2; exit 3']\n";

#[test]
fn a_failure_pops_up_critical_on_the_desktop_and_with_failures_a_success_does_not() {
    let scratch = Scratch::new();
    let desktop = MockNotifications::start(&scratch);
    let (secrets, secret, _) = canaries(&scratch, &[]);
    let task = |name: &str, body: &str, desktop: &str| {
        format!("  {name}:\n    {TRIGGERED}\n{body}    notify: {{desktop: {desktop}}}\n")
    };
    let config = scratch.config(&format!(
        "{secrets}tasks:\n{}{}{}",
        task("fine", "    command: ['true']\n", "failures"),
        task("nightly", LEAKY, "failures"),
        task("always", "    command: ['true']\n", "true"),
    ));
    let daemon = scratch.start_daemon_with(&config, |cmd| {
        cmd.env("DBUS_SESSION_BUS_ADDRESS", &desktop.address);
    });
    // A success, then a failure, then a success that asks for every end: the failure's
    // notification and the last success's are the only ones, in that order.
    trigger(&scratch, &config, "fine", true).expect_code(0);
    trigger(&scratch, &config, "nightly", true).expect_code(1);
    let calls = desktop.wait_for_calls(1);
    trigger(&scratch, &config, "always", true).expect_code(0);
    let calls = [calls, desktop.wait_for_calls(2)].concat();
    let failure = &calls[0];
    assert_eq!(failure["app"], "backupnizza", "{failure}");
    assert_eq!(failure["replaces"], 0, "{failure}");
    assert_eq!(failure["icon"], "", "{failure}");
    assert_eq!(failure["summary"], "backup nightly failed", "{failure}");
    let body = failure["body"].as_str().unwrap();
    assert!(body.starts_with("nightly: failed (exit code 3)"), "{failure}");
    assert_eq!(failure["actions"], serde_json::json!([]), "{failure}");
    assert_eq!(failure["hints"]["urgency"], serde_json::json!(["Byte", 2]), "{failure}");
    assert_eq!(failure["expire"], -1, "{failure}");

    let calls = desktop.calls().unwrap();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[1]["summary"], "backup always success", "{calls:#?}");
    assert_eq!(calls[1]["hints"]["urgency"], serde_json::json!(["Byte", 1]), "{calls:#?}");
    let log = daemon.log_text();
    assert!(log.contains("leak "), "the task printed its secret: {log}");
    for text in [serde_json::to_string(&calls).unwrap(), log] {
        assert!(!text.contains(&secret), "the task's secret went out: {text}");
    }
}

/// A daemon without a desktop session: the notification is a warning, the run unaffected.
#[test]
fn without_a_session_bus_a_desktop_notification_is_one_warning() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "tasks:\n  nightly:\n    {TRIGGERED}\n    command: ['false']\n    notify: {{desktop: true, timeout: 2s}}\n"
    ));
    let nowhere = format!("unix:path={}", scratch.path().join("no-bus").display());
    let daemon = scratch.start_daemon_with(&config, |cmd| {
        cmd.env("DBUS_SESSION_BUS_ADDRESS", &nowhere);
    });
    trigger(&scratch, &config, "nightly", true).expect_code(1);
    let log = daemon.wait_for("the warning", |l| l.contains("desktop notification failed"));
    let warning = log.lines().find(|l| l.contains("desktop notification failed")).unwrap();
    assert!(
        warning.contains("WARN")
            && warning.contains("task=nightly")
            && warning.contains("no session bus")
            && warning.contains("the run's result is unaffected"),
        "{log}"
    );
    assert_eq!(log.matches("desktop notification failed:").count(), 1, "{log}");
    let records = crate::harness::history(&scratch);
    assert!(records.iter().any(|r| r["type"] == "end" && r["status"] == "failed"), "{records:?}");
}

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

/// A minimal SMTP server on loopback (no TLS, `AUTH PLAIN` taken on trust) that hands the
/// test each session's transcript, what the client said and what it answered, when the
/// client quits.
fn smtp_sink() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if tx.send(smtp_session(stream)).is_err() {
                break;
            }
        }
    });
    (address, rx)
}

fn smtp_session(stream: TcpStream) -> String {
    use std::io::BufRead;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    let mut transcript = String::new();
    let say = |out: &mut TcpStream, transcript: &mut String, line: &str| {
        transcript.push_str(&format!("S: {line}\n"));
        let _ = out.write_all(format!("{line}\r\n").as_bytes());
    };
    say(&mut out, &mut transcript, "220 sink ESMTP");
    let mut line = String::new();
    loop {
        line.clear();
        if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            break;
        }
        transcript.push_str(&format!("C: {line}"));
        let verb = line.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                say(&mut out, &mut transcript, "250-sink");
                say(&mut out, &mut transcript, "250 AUTH PLAIN");
            }
            "DATA" => {
                say(&mut out, &mut transcript, "354 go on");
                while !transcript.ends_with("\r\n.\r\n") {
                    line.clear();
                    if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                        return transcript;
                    }
                    transcript.push_str(&line);
                }
                say(&mut out, &mut transcript, "250 queued");
            }
            "AUTH" => say(&mut out, &mut transcript, "235 welcome"),
            "QUIT" => {
                say(&mut out, &mut transcript, "221 bye");
                break;
            }
            _ => say(&mut out, &mut transcript, "250 ok"),
        }
    }
    transcript
}

/// Standard base64 with padding (RFC 4648), for what `AUTH PLAIN` sends.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[test]
fn an_email_names_the_task_and_result_and_carries_no_secret() {
    let scratch = Scratch::new();
    let (smtp, sessions) = smtp_sink();
    let (secrets, secret, passwords) = canaries(&scratch, &["smtp-password"]);
    let config = scratch.config(&format!(
        "{secrets}tasks:\n  nightly:\n    {TRIGGERED}\n{LEAKY}    notify:\n      email:\n        smtp: '{smtp}'\n        from: 'Backups <backups@example.org>'\n        to: [me@example.org, 'You <you@example.net>']\n        starttls: false\n        username: backups\n        password_secret: smtp-password\n"
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "nightly", true).expect_code(1);
    let session = sessions.recv_timeout(PATIENCE).expect("an SMTP session");
    assert!(session.contains("C: MAIL FROM:<backups@example.org>"), "{session}");
    assert!(session.contains("C: RCPT TO:<me@example.org>"), "{session}");
    assert!(session.contains("C: RCPT TO:<you@example.net>"), "{session}");
    assert!(session.contains("\nSubject: backupnizza: nightly failed\r\n"), "{session}");
    assert!(session.contains("task: nightly\r\nresult: failed (exit code 3)\r\n"), "{session}");
    assert!(session.contains("S: 221 bye"), "{session}");
    // The login reached the server: AUTH PLAIN is "\0user\0password", in base64.
    let login = base64(format!("\0backups\0{}", passwords[0]).as_bytes());
    assert!(session.contains(&login), "{session}");
    let log = daemon.log_text();
    assert!(log.contains("leak "), "the task printed its secret: {log}");
    for text in [&session, &log] {
        assert!(!text.contains(&secret), "the task's secret went out: {text}");
    }
    assert!(!log.contains(&passwords[0]), "the SMTP password is in the log: {log}");
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
            "secrets:\n  tok: {{env: TOK}}\ntasks:\n{}{}{}{}{}{}",
            task("a", "ntfy: {url: 'https://ntfy.sh', topic: backups, token_secrt: tok}"),
            task("b", "ntfy: {url: 'https://ntfy.sh', token_secret: tok}"),
            task("c", "gotify: {url: 'https://gotify.example', token_secret: tokk}"),
            task("d", "ntfy: {url: 'ntfy.sh', topic: 'my backups'}"),
            task("e", "desktop: maybe"),
            task("f", "email: {smtp: 'mail.example.org', from: me@example.org, to: ['me@@example'], password_secret: pw}"),
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
        (
            28,
            "tasks.e.notify.desktop: expected true (every run's end), false or failures, found a string (\"maybe\")",
        ),
        (
            33,
            "tasks.f.notify.email.smtp: invalid SMTP server \"mail.example.org\": expected HOST:PORT",
        ),
        (33, "tasks.f.notify.email.to[0]: invalid mail address \"me@@example\""),
        (33, "tasks.f.notify.email.password_secret: `password_secret` needs `username`"),
        (
            33,
            "tasks.f.notify.email.password_secret: `password_secret: pw` names a secret that is not declared under `secrets:`",
        ),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&at(line)) && l.contains(expected)),
            "no {expected:?} at line {line}\n{run}"
        );
    }
}

#[test]
fn no_token_or_password_goes_out_in_the_clear_and_a_redirect_is_not_followed() {
    let scratch = Scratch::new();
    // Over plain http:// or SMTP without STARTTLS to another machine: refused, naming the key.
    let task = |name: &str, notify: &str| {
        format!("  {name}:\n    {TRIGGERED}\n    command: ['true']\n    notify:\n      {notify}\n")
    };
    let file = scratch.write(
        "clear.yaml",
        format!(
            "secrets:\n  tok: {{env: TOK}}\ntasks:\n{}{}{}{}",
            task("a", "gotify: {url: 'http://gotify.example.org', token_secret: tok}"),
            task("b", "ntfy: {url: 'http://ntfy.example.org:8080', topic: t, token_secret: tok}"),
            task("c", "email: {smtp: 'mail.example.org:25', from: a@example.org, to: [b@example.org], starttls: false, username: a, password_secret: tok}"),
            task("d", "ntfy: {url: 'http://[::1]:8080', topic: t, token_secret: tok}"),
        ),
    );
    let run = scratch.backupnizza(["validate", "-c"]).run_with(&file);
    run.expect_code(2);
    let err = run.stderr();
    for expected in [
        "tasks.a.notify.gotify.token_secret: the token would go to gotify.example.org unencrypted",
        "tasks.b.notify.ntfy.token_secret: the token would go to ntfy.example.org unencrypted",
        "tasks.c.notify.email.starttls: `starttls: false` would send the SMTP password to mail.example.org unencrypted",
    ] {
        assert!(err.contains(expected), "no {expected:?}\n{run}");
    }
    assert!(!err.contains("tasks.d."), "a server on this machine may be plain\n{run}");

    // A Gotify server that redirects: the key does not follow, and the log says where to.
    let (elsewhere, taken) = recording_endpoint();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (asked, redirected) = mpsc::channel();
    let location = format!("{elsewhere}/message");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let request = read_request(&mut stream);
            let answer = format!(
                "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes());
            if asked.send(request).is_err() {
                break;
            }
        }
    });
    let (secrets, _, tokens) = canaries(&scratch, &["gotify"]);
    let config = scratch.config(&format!(
        "{secrets}tasks:\n  nightly:\n    {TRIGGERED}\n    command: ['false']\n    notify: {{gotify: {{url: '{url}', token_secret: gotify}}}}\n"
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "nightly", true).expect_code(1);
    let first = redirected.recv_timeout(PATIENCE).expect("the Gotify server was asked");
    assert_eq!(header(&first, "x-gotify-key"), Some(tokens[0].as_str()), "{first}");
    let log = daemon.wait_for("the redirect's failure", |l| l.contains("not followed"));
    assert!(log.contains("redirected to http://127.0.0.1"), "{log}");
    assert!(taken.recv_timeout(Duration::from_secs(2)).is_err(), "the redirect was followed");
    assert!(!log.contains(&tokens[0]), "the token is in the log");
}
