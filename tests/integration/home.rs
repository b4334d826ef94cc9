//! At home on the user's machine: service files, hooks, notifications against a local HTTP
//! server, the metrics file, `explain`, completions and man pages.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::harness::{Scratch, TRIGGERED, canary, write_private};

/// A recorded request: method, path with query, body.
pub(crate) type Request = (String, String, Vec<u8>);

/// A plain HTTP server on 127.0.0.1 that records every request and answers 200.
pub(crate) struct HttpSink {
    pub(crate) url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl HttpSink {
    pub(crate) fn start() -> HttpSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                let mut parts = request_line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                );
                seen.lock().unwrap().push((method, path, body));
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOK",
                );
            }
        });
        HttpSink { url, requests }
    }

    pub(crate) fn wait_for(&self, count: usize) -> Vec<Request> {
        let deadline = std::time::Instant::now() + crate::harness::PATIENCE;
        loop {
            let got = self.requests.lock().unwrap().clone();
            if got.len() >= count {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {count} requests arrived: {got:?}",
                got.len()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn rid_of(path: &str) -> &str {
    path.split("rid=").nth(1).unwrap_or("")
}

#[test]
fn pings_and_webhooks_report_start_success_and_failure() {
    let scratch = Scratch::new();
    let sink = HttpSink::start();
    let ping_secret = scratch.path().join("ping-url");
    let check_uuid = canary();
    write_private(&ping_secret, format!("{}/ping/{check_uuid}", sink.url).as_bytes());
    let config = scratch.config(&format!(
        "secrets:\n  hc: {{file: {}}}\nnotify:\n  ping: {{secret: hc}}\n  webhook: {}/hook\ntasks:\n  good:\n    {TRIGGERED}\n    command: ['true']\n  bad:\n    {TRIGGERED}\n    command: [sh, -c, 'echo broken disk >&2; exit 3']\n",
        ping_secret.display(),
        sink.url
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "good", "-c"]).run_with(&config).expect_code(0);
    let requests = sink.wait_for(4);
    scratch.backupnizza(["trigger", "--wait", "bad", "-c"]).run_with(&config).expect_code(1);
    let requests = {
        drop(requests);
        sink.wait_for(8)
    };

    let pings: Vec<&Request> =
        requests.iter().filter(|(_, p, _)| p.starts_with("/ping/")).collect();
    let hooks: Vec<&Request> = requests.iter().filter(|(_, p, _)| p == "/hook").collect();
    assert_eq!((pings.len(), hooks.len()), (4, 4), "{requests:?}");
    let base = format!("/ping/{check_uuid}");
    let find = |suffix: &str| {
        pings
            .iter()
            .find(|(_, p, _)| p.starts_with(&format!("{base}{suffix}?rid=")))
            .unwrap_or_else(|| panic!("no ping {suffix}: {pings:?}"))
    };
    let (start_good, success) = (find("/start"), find(""));
    assert_eq!(rid_of(&start_good.1), rid_of(&success.1), "start and success pair up");
    let failure = find("/3");
    assert!(failure.2.is_empty(), "no log upload without send_logs");
    assert_ne!(rid_of(&failure.1), rid_of(&success.1));
    // The webhook carries the run's facts.
    let ends: Vec<serde_json::Value> = hooks
        .iter()
        .map(|(_, _, b)| serde_json::from_slice(b).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "end")
        .collect();
    let bad = ends.iter().find(|v| v["task"] == "bad").unwrap();
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["exit_code"], 3);
    assert!(bad["run_id"].as_str().unwrap().len() > 10 && bad["duration_ms"].is_u64());
    assert!(bad.get("stderr_tail").is_none(), "stderr only with send_logs");
    // The ping URL is a credential: logs show its scheme and host only.
    let log = daemon.log_text();
    assert!(!log.contains(&check_uuid), "ping URL in the log");
}

#[test]
fn send_logs_uploads_the_stderr_tail_and_dead_endpoints_do_not_fail_runs() {
    let scratch = Scratch::new();
    let sink = HttpSink::start();
    // A port nobody listens on.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = scratch.config(&format!(
        "tasks:\n  chatty:\n    {TRIGGERED}\n    command: [sh, -c, 'echo first problem >&2; echo second problem >&2; exit 1']\n    notify: {{ping: {}/p, send_logs: true}}\n  lonely:\n    {TRIGGERED}\n    command: ['true']\n    notify: {{ping: http://{dead}/p, webhook: http://{dead}/h, timeout: 2s}}\n",
        sink.url
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "chatty", "-c"]).run_with(&config).expect_code(1);
    let requests = sink.wait_for(2);
    let fail = requests.iter().find(|(_, p, _)| p.starts_with("/p/1?")).unwrap();
    assert_eq!(String::from_utf8_lossy(&fail.2), "first problem\nsecond problem");
    scratch.backupnizza(["trigger", "--wait", "lonely", "-c"]).run_with(&config).expect_code(0);
    let log = daemon.wait_for("the failed notification", |l| l.contains("webhook failed"));
    assert!(
        log.contains(&format!("http://{dead}/…")) && log.contains("the run's result is unaffected"),
        "{log}"
    );
}

#[test]
fn hooks_get_the_run_facts_and_before_75_skips() {
    let scratch = Scratch::new();
    let record = "env | grep ^BACKUPNIZZA_ | sort > hook-$BACKUPNIZZA_HOOK-$BACKUPNIZZA_TASK.env";
    let config = scratch.config(&format!(
        "tasks:
  ok:
    {TRIGGERED}
    command: [sh, -c, 'echo oops >&2; exit 0']
    hooks: {{before: [sh, -c, '{record}'], on_success: [sh, -c, '{record}'], on_failure: [sh, -c, '{record}'], after: [sh, -c, '{record}']}}
  fails:
    {TRIGGERED}
    command: [sh, -c, 'echo disk full >&2; exit 2']
    hooks: {{on_success: [sh, -c, '{record}'], on_failure: [sh, -c, '{record}'], after: [sh, -c, '{record}']}}
  unmounted:
    {TRIGGERED}
    command: [touch, should-not-exist]
    hooks: {{before: [sh, -c, 'exit 75'], after: [touch, after-ran]}}
  gate:
    {TRIGGERED}
    command: [touch, gate-steps-ran]
    hooks: {{before: ['false'], on_success: [touch, gate-success], on_failure: [touch, gate-failure], after: [touch, gate-after]}}
"
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "ok", "-c"]).run_with(&config).expect_code(0);
    let read = |name: &str| std::fs::read_to_string(scratch.path().join(name)).unwrap_or_default();
    assert!(read("hook-before-ok.env").contains("BACKUPNIZZA_HOOK=before"));
    let success = read("hook-on_success-ok.env");
    assert!(
        success.contains("BACKUPNIZZA_STATUS=success")
            && success.contains("BACKUPNIZZA_EXIT_CODE=0"),
        "{success}"
    );
    assert!(
        success.contains("BACKUPNIZZA_RUN_ID=")
            && success.contains("BACKUPNIZZA_DURATION_MS=")
            && success.contains("BACKUPNIZZA_STDERR_TAIL=oops"),
        "{success}"
    );
    assert!(!scratch.path().join("hook-on_failure-ok.env").exists());
    assert!(read("hook-after-ok.env").contains("BACKUPNIZZA_HOOK=after"));

    scratch.backupnizza(["trigger", "--wait", "fails", "-c"]).run_with(&config).expect_code(1);
    let failure = read("hook-on_failure-fails.env");
    assert!(
        failure.contains("BACKUPNIZZA_STATUS=failed")
            && failure.contains("BACKUPNIZZA_EXIT_CODE=2")
            && failure.contains("disk full"),
        "{failure}"
    );
    assert!(
        !scratch.path().join("hook-on_success-fails.env").exists(),
        "on_success ran on failure"
    );
    assert!(scratch.path().join("hook-after-fails.env").exists());

    let run = scratch.backupnizza(["trigger", "--wait", "unmounted", "-c"]).run_with(&config);
    run.expect_code(0);
    assert!(run.stdout().contains("skipped"), "{run}");
    assert!(!scratch.path().join("should-not-exist").exists());
    assert!(!scratch.path().join("after-ran").exists(), "a skipped run runs no further hooks");
    assert!(daemon.log_text().contains("the before hook exited 75: skipping this run"));

    // A failing `before` hook fails the run: no steps, but on_failure and after run.
    let run = scratch.backupnizza(["trigger", "--wait", "gate", "-c"]).run_with(&config);
    run.expect_code(1);
    assert!(run.stdout().contains("the before hook failed"), "{run}");
    assert!(
        !scratch.path().join("gate-steps-ran").exists()
            && !scratch.path().join("gate-success").exists()
    );
    assert!(
        scratch.path().join("gate-failure").exists() && scratch.path().join("gate-after").exists()
    );
}

pub(crate) fn prometheus_parse(path: &Path) -> Vec<(String, String, f64)> {
    let python =
        if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as parse\nfor f in parse(open(sys.argv[1]).read()):\n    for s in f.samples:\n        print(s.name, s.labels.get('task', s.labels.get('reason', '')), s.value)\n";
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python3 (with python3-prometheus-client, installed by .ci/run)");
    assert!(
        out.status.success(),
        "the metrics file does not parse as Prometheus text: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut p = l.split_whitespace();
            let name = p.next().unwrap().to_string();
            let rest: Vec<&str> = p.collect();
            let (label, value) = match rest.as_slice() {
                [value] => (String::new(), value.parse().unwrap()),
                [label, value] => (label.to_string(), value.parse().unwrap()),
                _ => panic!("{l}"),
            };
            (name, label, value)
        })
        .collect()
}

#[test]
fn the_metrics_file_parses_and_updates_after_each_run() {
    let scratch = Scratch::new();
    let metrics = scratch.path().join("metrics/backupnizza.prom");
    std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    let config = scratch.config(&format!(
        "metrics_textfile: {}\ntasks:\n  docs:\n    {TRIGGERED}\n    command: ['true']\n  broken:\n    {TRIGGERED}\n    command: ['false']\n",
        metrics.display()
    ));
    let _daemon = scratch.start_daemon(&config);
    let value = |samples: &[(String, String, f64)], name: &str, label: &str| {
        samples.iter().find(|(n, l, _)| n == name && l == label).map(|(_, _, v)| *v)
    };
    let first = prometheus_parse(&metrics);
    assert_eq!(value(&first, "backupnizza_task_runs_total", "docs"), Some(0.0));
    assert!(value(&first, "backupnizza_task_next_fire_timestamp_seconds", "docs").is_some());
    // The file is rewritten in the background right after each run: poll for it.
    let after = |name: &str, label: &str, want: f64| {
        let deadline = std::time::Instant::now() + crate::harness::PATIENCE;
        loop {
            let samples = prometheus_parse(&metrics);
            if value(&samples, name, label) == Some(want) {
                return samples;
            }
            assert!(std::time::Instant::now() < deadline, "{name}{{{label}}} never became {want}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    scratch.backupnizza(["trigger", "--wait", "docs", "-c"]).run_with(&config).expect_code(0);
    let second = after("backupnizza_task_runs_total", "docs", 1.0);
    assert_eq!(value(&second, "backupnizza_task_last_exit_code", "docs"), Some(0.0));
    assert!(
        value(&second, "backupnizza_task_last_success_timestamp_seconds", "docs").unwrap() > 1.7e9
    );
    scratch.backupnizza(["trigger", "--wait", "broken", "-c"]).run_with(&config).expect_code(1);
    let third = after("backupnizza_task_failures_total", "broken", 1.0);
    assert_eq!(value(&third, "backupnizza_task_failures_total", "broken"), Some(1.0));
    assert_eq!(value(&third, "backupnizza_task_last_exit_code", "broken"), Some(1.0));
    assert_eq!(value(&third, "backupnizza_tokens_minted_total", ""), Some(2.0));
    // Labels carry task names and reasons only.
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(!text.contains(&scratch.path().display().to_string()), "a path in the metrics");
}

#[test]
fn the_systemd_unit_verifies_and_the_plist_is_well_formed() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "tasks:\n  docs:\n    {TRIGGERED}\n    command: [restic, backup, ~/Documents]\n    env: {{RESTIC_REPOSITORY: /srv/restic & co}}\n"
    ));
    let install = scratch.backupnizza(["service", "systemd", "--install", "-c"]).run_with(&config);
    install.expect_code(0);
    assert!(
        install.stderr().contains(
            "systemctl --user daemon-reload && systemctl --user enable --now backupnizza.service"
        ),
        "{install}"
    );
    let unit_path = scratch.path().join(".config/systemd/user/backupnizza.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        "LockPersonality=yes",
        "RestrictSUIDSGID=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    assert!(
        unit.contains("-\"/srv/restic & co\""),
        "the local repository must stay writable:\n{unit}"
    );
    // systemd-analyze needs a user runtime directory; a private one will do.
    let runtime = scratch.path().join("xdg-runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .arg(&unit_path)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("HOME", scratch.path())
        .output()
        .expect("systemd-analyze (Debian package systemd, installed by .ci/run)");
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    let plist = scratch.backupnizza(["service", "launchd", "-c"]).run_with(&config);
    plist.expect_code(0);
    let entries = parse_plist(&plist.stdout());
    let get = |k: &str| {
        entries
            .iter()
            .find(|(key, _)| key == k)
            .map_or_else(|| panic!("no {k} in {entries:?}"), |(_, v)| v.clone())
    };
    assert_eq!(get("Label"), vec!["string:org.backupnizza.daemon"]);
    assert_eq!(
        get("ProgramArguments"),
        vec![
            format!("string:{}", crate::harness::BACKUPNIZZA),
            "string:run".into(),
            "string:-c".into(),
            format!("string:{}", std::fs::canonicalize(&config).unwrap().display())
        ]
    );
    assert_eq!(get("RunAtLoad"), vec!["true"]);
    assert_eq!(get("LimitLoadToSessionType"), vec!["string:Aqua"]);
    assert!(get("KeepAlive").contains(&"false".to_string()));
}

/// Parses a plist with a real XML parser: well-formed, a `<plist>` root holding one `<dict>`;
/// returns the top-level keys with a flat list of their values (`string:...`, `true`, ...).
fn parse_plist(xml: &str) -> Vec<(String, Vec<String>)> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    let mut text = String::new();
    loop {
        match reader.read_event().unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{xml}")) {
            Event::Start(e) => {
                stack.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                text.clear();
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if let Some(last) = entries.last_mut().filter(|_| stack.len() >= 2) {
                    last.1.push(name);
                }
            }
            Event::Text(t) => text.push_str(&t.unescape().unwrap()),
            Event::End(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                assert_eq!(stack.pop().as_deref(), Some(name.as_str()), "mismatched tag");
                match (name.as_str(), stack.len()) {
                    ("key", 2) => entries.push((text.clone(), Vec::new())),
                    ("key", _) => {}
                    (value, depth) if depth >= 2 && value != "dict" && value != "array" => {
                        if let Some(last) = entries.last_mut() {
                            last.1.push(format!("{value}:{text}"));
                        }
                    }
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert!(stack.is_empty(), "unclosed tags: {stack:?}");
    assert!(xml.contains("<plist version=\"1.0\">"));
    entries
}

#[test]
fn completions_and_man_pages_generate_for_both_binaries() {
    let scratch = Scratch::new();
    for program in ["backupnizza", "secretbox"] {
        for shell in ["bash", "zsh", "fish"] {
            let run = scratch.backupnizza(["completions", shell, "--for", program]).run();
            run.expect_code(0);
            assert!(run.stdout().contains(program) && run.stdout().len() > 200, "{run}");
            if shell == "bash" {
                let file = scratch.write(&format!("{program}.bash"), run.stdout());
                let syntax =
                    std::process::Command::new("bash").arg("-n").arg(&file).output().unwrap();
                assert!(syntax.status.success(), "{}", String::from_utf8_lossy(&syntax.stderr));
            }
        }
        let man = scratch.backupnizza(["man", "--for", program]).run();
        man.expect_code(0);
        assert!(man.stdout().contains(&format!(".TH {program} 1")), "{man}");
    }
    let man = scratch.backupnizza(["man"]).run().stdout();
    for sub in [
        "validate",
        "next",
        "run",
        "status",
        "trigger",
        "history",
        "secret",
        "explain",
        "service",
        "completions",
    ] {
        assert!(man.contains(sub), "the man page does not mention {sub}");
    }
}

#[test]
fn explain_tells_what_happened_to_each_occurrence() {
    let scratch = Scratch::new();
    // A history as the daemon writes it, over the last eight hours of an hourly task:
    // ran, failed, a suspend folded into one catch-up, an overlap, a too-late skip, and a
    // stretch where the daemon was down.
    let tz = jiff::tz::TimeZone::UTC;
    let now = jiff::Timestamp::now();
    let hour = |back: i64| {
        let t = now - jiff::SignedDuration::from_hours(back);
        jiff::Timestamp::from_second(t.as_second() / 3600 * 3600).unwrap()
    };
    let at =
        |t: jiff::Timestamp| t.to_zoned(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string();
    let plus = |t: jiff::Timestamp, s: i64| t + jiff::SignedDuration::from_secs(s);
    let records = [
        serde_json::json!({"type": "daemon", "event": "start", "at": at(plus(hour(9), 60)), "pid": 1}),
        serde_json::json!({"type": "start", "run_id": "r1", "task": "hourly", "at": at(hour(8)), "scheduled": at(hour(8)), "trigger": "schedule"}),
        serde_json::json!({"type": "end", "run_id": "r1", "task": "hourly", "at": at(plus(hour(8), 5)), "status": "success", "exit_code": 0, "duration_ms": 5000, "reason": "all steps succeeded", "stderr_tail": []}),
        serde_json::json!({"type": "start", "run_id": "r2", "task": "hourly", "at": at(hour(7)), "scheduled": at(hour(7)), "trigger": "schedule"}),
        serde_json::json!({"type": "end", "run_id": "r2", "task": "hourly", "at": at(plus(hour(7), 5)), "status": "failed", "exit_code": 1, "duration_ms": 5000, "reason": "exit code 1", "stderr_tail": ["Fatal: wrong password"]}),
        serde_json::json!({"type": "skip", "task": "hourly", "at": at(plus(hour(4), 600)), "scheduled": at(hour(6)), "count": 2, "reason": "superseded", "detail": format!("folded into the catch-up run of {}", at(hour(4)))}),
        serde_json::json!({"type": "start", "run_id": "r3", "task": "hourly", "at": at(plus(hour(4), 600)), "scheduled": at(hour(4)), "trigger": "catch_up"}),
        serde_json::json!({"type": "end", "run_id": "r3", "task": "hourly", "at": at(plus(hour(4), 900)), "status": "success", "exit_code": 0, "duration_ms": 300_000, "reason": "all steps succeeded", "stderr_tail": []}),
        serde_json::json!({"type": "skip", "task": "hourly", "at": at(hour(3)), "scheduled": at(hour(3)), "count": 1, "reason": "overlap", "detail": "the previous run is still going (on_overlap: skip)"}),
        serde_json::json!({"type": "skip", "task": "hourly", "at": at(plus(hour(2), 7200)), "scheduled": at(hour(2)), "count": 1, "reason": "too_late", "detail": "more than max_lateness (1h) late"}),
        serde_json::json!({"type": "daemon", "event": "stop", "at": at(plus(hour(2), 60)), "pid": 1}),
    ];
    let state = scratch.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(state.join("history.jsonl"), text).unwrap();
    let config = scratch.config(
        "timezone: UTC\ntasks:\n  hourly:\n    schedule: '0 * * * *'\n    command: ['true']\n",
    );
    let run = scratch.backupnizza(["explain", "hourly", "--since", "9h", "-c"]).run_with(&config);
    run.expect_code(0);
    let out = run.stdout();
    let line = |t: jiff::Timestamp| {
        out.lines()
            .find(|l| l.starts_with(&at(t)))
            .unwrap_or_else(|| panic!("no line for {}\n{out}", at(t)))
            .to_string()
    };
    assert!(line(hour(8)).contains("ran at") && line(hour(8)).contains("success (exit 0"), "{out}");
    assert!(line(hour(7)).contains("failed at") && line(hour(7)).contains("exit 1"), "{out}");
    assert!(line(hour(6)).contains("skipped (folded into a later catch-up run)"), "{out}");
    assert!(line(hour(5)).contains("skipped (folded into a later catch-up run)"), "{out}");
    assert!(
        line(hour(4)).contains("caught up after suspend or downtime")
            && line(hour(4)).contains("10m late"),
        "{out}"
    );
    assert!(line(hour(3)).contains("skipped (the previous run was still going)"), "{out}");
    assert!(line(hour(2)).contains("skipped (too late)"), "{out}");
    assert!(line(hour(1)).contains("missed: the daemon was not running"), "{out}");
    assert!(out.contains("1 ran, 1 failed, 1 caught up, 4 skipped"), "{out}");
    // Offsets are printed: with a zone that has them, the UTC offset shows.
    let berlin = scratch
        .config("timezone: Europe/Berlin\ntasks:\n  hourly:\n    schedule: '0 * * * *'\n    command: ['true']\n");
    let run = scratch.backupnizza(["explain", "hourly", "-c"]).run_with(&berlin);
    assert!(run.stdout().contains("+01:00") || run.stdout().contains("+02:00"), "{run}");
}

#[test]
fn a_notify_command_gets_the_run_facts_redacted_and_a_failing_one_never_fails_the_run() {
    let scratch = Scratch::new();
    let secret = canary();
    let file = scratch.path().join("s");
    write_private(&file, secret.as_bytes());
    let got = scratch.path().join("notified");
    let config = scratch.config(&format!(
        "secrets:\n  s: {{file: {file}}}\nnotify:\n  command: [sh, -c, 'echo \"$BACKUPNIZZA_TASK $BACKUPNIZZA_STATUS $BACKUPNIZZA_EXIT_CODE [$BACKUPNIZZA_REASON] $BACKUPNIZZA_STDERR_TAIL\" >> {got}; env | grep -c SECRETBOX_ >> {got} || true']\n  send_logs: true\ntasks:\n  leaky:\n    {TRIGGERED}\n    secrets: [s]\n    command: [sh, -c, 'echo \"oops $(secretbox get s)\" >&2; exit 4']\n  fine:\n    {TRIGGERED}\n    command: ['true']\n    notify:\n      command: [sh, -c, 'echo notifier broke >&2; exit 9']\n",
        file = file.display(),
        got = got.display(),
    ));
    let daemon = scratch.start_daemon(&config);
    scratch.backupnizza(["trigger", "--wait", "leaky", "-c"]).run_with(&config).expect_code(1);
    crate::harness::wait_until("the notifier", || {
        std::fs::read_to_string(&got).unwrap_or_default().lines().count() >= 2
    });
    let text = std::fs::read_to_string(&got).unwrap();
    assert!(text.starts_with("leaky failed 4 [exit code 4] oops ***\n"), "{text}");
    assert_eq!(text.lines().nth(1), Some("0"), "no token, no socket: {text}");
    assert!(!text.contains(&secret));
    // A notifier that fails: logged, and the run stays a success.
    scratch.backupnizza(["trigger", "--wait", "fine", "-c"]).run_with(&config).expect_code(0);
    let log = daemon.wait_for("the failed notifier", |l| l.contains("the notifier failed"));
    let line = log.lines().find(|l| l.contains("the notifier failed")).unwrap();
    assert!(line.contains("exit code 9") && line.contains("notifier broke"), "{line}");
    assert!(line.contains("the run's result is unaffected"), "{line}");
    let h = crate::harness::history(&scratch);
    let end = h.iter().rev().find(|r| r["type"] == "end" && r["task"] == "fine").unwrap();
    assert_eq!(end["status"], "success");
    assert!(!daemon.log_text().contains(&secret));
}
