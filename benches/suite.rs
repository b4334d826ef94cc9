//! The benchmark suite (`.ci/bench`, which runs `cargo bench --bench suite` inside a private
//! D-Bus session with gnome-keyring): the real daemon and `secretbox`, built in release mode,
//! measured against the alternatives side by side. Every figure is a median over repeated
//! runs; comparisons are ratios of medians measured interleaved in one run, because absolute
//! times drift on shared machines. Results: a markdown table on stdout and in
//! `target/bench-results.md` (copied into docs/benchmarks.md).
//!
//! Some measurements must run *inside* a task (only a task's processes may redeem its
//! token), so this binary is also the task: `suite --inside MODE ...`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BACKUPNIZZA: &str = env!("CARGO_BIN_EXE_backupnizza");
const SECRETBOX: &str = env!("CARGO_BIN_EXE_secretbox");

#[expect(
    clippy::too_many_lines,
    reason = "the benchmark driver: one measurement after another, in the order of the table"
)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--inside") {
        inside(&args[i + 1..]);
        return;
    }
    // `cargo bench` passes `--bench`; other arguments select sections (validate, ready, e2e,
    // loop, crowded, redemptions, checks, idle, precision, audit); none runs them all.
    let only: Vec<&str> =
        args[1..].iter().map(String::as_str).filter(|a| !a.starts_with("--")).collect();
    let want = |section: &str| only.is_empty() || only.contains(&section);
    let scratch = tempfile::Builder::new().prefix("bnz-bench-").tempdir().unwrap();
    let dir = scratch.path();
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut row = |what: &str, figure: String, target: &str, met: Option<bool>| {
        let verdict = match met {
            Some(true) => "met".to_string(),
            Some(false) => "**missed**".to_string(),
            None => "-".to_string(),
        };
        println!("{what}: {figure} (target {target}: {verdict})");
        rows.push((what.to_string(), figure, target.to_string(), verdict));
    };

    // Validate first: its peak memory is read from the children's high-water mark.
    if want("validate") {
        let (validate_ms, validate_kib) = bench_validate(dir);
        row(
            "`validate`, 10,000 tasks: time",
            format!("{validate_ms:.0} ms"),
            "≤ 1 s",
            Some(validate_ms <= 1000.0),
        );
        row(
            "`validate`, 10,000 tasks: peak memory",
            format!("{:.1} MiB", validate_kib as f64 / 1024.0),
            "-",
            None,
        );
    }

    if want("ready") {
        let ready = bench_ready(dir);
        row(
            "start-up to READY, 1,000 tasks (file secrets)",
            format!("{ready:.1} ms"),
            "≤ 50 ms",
            Some(ready <= 50.0),
        );
    }

    // The statically linked `secretbox` the Debian package ships (packaging/static-secretbox;
    // .ci/bench builds it and names it here), measured beside the dynamically linked one.
    let static_secretbox = std::env::var_os("BNZ_BENCH_STATIC_SECRETBOX").map(PathBuf::from);
    if want("e2e") {
        let e2e = bench_secretbox(dir, static_secretbox.as_deref());
        row("`secretbox get` end to end", format!("{:.2} ms", e2e.secretbox), "-", None);
        row("`cat` of a 0600 file", format!("{:.2} ms", e2e.cat), "-", None);
        row(
            "`secret-tool lookup` (headless gnome-keyring)",
            format!("{:.2} ms", e2e.secret_tool),
            "-",
            None,
        );
        let vs_cat = e2e.secretbox / e2e.cat;
        let vs_tool = e2e.secretbox / e2e.secret_tool;
        row("`secretbox get` / `cat`", format!("{vs_cat:.2}×"), "≤ 1.5×", Some(vs_cat <= 1.5));
        row(
            "`secretbox get` / `secret-tool lookup`",
            format!("{vs_tool:.2}×"),
            "≤ 0.5×",
            Some(vs_tool <= 0.5),
        );
        if let Some(ms) = e2e.sealed {
            row("sealed `secretbox get` end to end (issue 29)", format!("{ms:.2} ms"), "-", None);
            let ratio = ms / e2e.cat;
            row(
                "sealed `secretbox get` / `cat`",
                format!("{ratio:.2}×"),
                "≤ 1.5×",
                Some(ratio <= 1.5),
            );
        }
        if let Some(ms) = e2e.static_secretbox {
            row("static `secretbox get` end to end", format!("{ms:.2} ms"), "-", None);
            let ratio = ms / e2e.cat;
            row(
                "static `secretbox get` / `cat`",
                format!("{ratio:.2}×"),
                "≤ 1.3×",
                Some(ratio <= 1.3),
            );
        }
    }

    if want("loop") {
        let l = bench_loop(dir, static_secretbox.as_deref());
        row(
            "shell loop, 200 calls, median of 5 rounds: `cat` per call",
            format!("{:.2} ms", l.cat),
            "-",
            None,
        );
        let ratio = l.secretbox / l.cat;
        row(
            "shell loop: `secretbox get` / `cat`",
            format!("{:.2} ms, {ratio:.2}×", l.secretbox),
            "-",
            None,
        );
        if let Some(ms) = l.static_secretbox {
            let ratio = ms / l.cat;
            row(
                "shell loop: static `secretbox get` / `cat`",
                format!("{ms:.2} ms, {ratio:.2}×"),
                "≤ 1.3×",
                Some(ratio <= 1.3),
            );
        }
    }

    if want("crowded") {
        let (median_ms, max_ms) = bench_crowded(dir);
        row(
            "`secretbox get` with 1,000 idle connections held open: median / max of 20",
            format!("{median_ms:.2} ms / {max_ms:.2} ms"),
            "succeeds within 100 ms",
            Some(max_ms <= 100.0),
        );
    }

    for clients in [1, 8, 64].into_iter().filter(|_| want("redemptions")) {
        // Five runs of 20,000 redemptions; the median run by rate, and the median p50/p99.
        let runs: Vec<Load> = (0..5).map(|_| bench_redemptions(dir, clients)).collect();
        let load = Load {
            rate: median(runs.iter().map(|l| l.rate).collect()),
            p50_us: median(runs.iter().map(|l| l.p50_us as f64).collect()) as u128,
            p99_us: median(runs.iter().map(|l| l.p99_us as f64).collect()) as u128,
        };
        let target_met = (clients == 64).then_some(load.rate >= 20_000.0 && load.p99_us <= 2000);
        row(
            &format!(
                "redemptions, {clients} concurrent client{}",
                if clients == 1 { "" } else { "s" }
            ),
            format!("{:.0}/s, p50 {} µs, p99 {} µs", load.rate, load.p50_us, load.p99_us),
            if clients == 64 { "≥ 20,000/s, p99 ≤ 2 ms" } else { "-" },
            target_met,
        );
    }

    if want("checks") {
        for clients in [0, 1, 8] {
            let (with, without) = bench_checks(clients);
            let cost = 1.0 - with / without;
            let how = match clients {
                0 => "one request per connection".to_string(),
                1 => "1 keep-alive client".to_string(),
                n => format!("{n} keep-alive clients"),
            };
            row(
                &format!(
                    "redeemer check and per-process limit: redemptions/s with / without, {how}"
                ),
                format!("{with:.0} / {without:.0} ({:+.1}%)", -cost * 100.0),
                "costs < 10%",
                Some(cost < 0.10),
            );
        }
    }

    if want("idle") {
        let cron_kib = cron_rss();
        match cron_kib {
            Some(kib) => row(
                "Debian `cron` idle RSS (same run)",
                format!("{:.1} MiB", kib as f64 / 1024.0),
                "-",
                None,
            ),
            None => {
                row("Debian `cron` idle RSS (same run)", "cron not installed".into(), "-", None);
            }
        }
        for tasks in [10, 1000] {
            let idle = bench_idle(dir, tasks);
            let mib = idle.rss as f64 / 1024.0;
            // 10 tasks: at most 1.5× what cron holds, measured in the same run; 1,000: 8 MiB.
            let (target, met) = match (tasks, cron_kib) {
                (10, Some(_)) => ("see the next row", None),
                (10, None) => ("≤ 1.5× cron's (cron not installed)", None),
                _ => ("≤ 8 MiB", Some(mib <= 8.0)),
            };
            row(&format!("idle RSS, {tasks} tasks"), format!("{mib:.1} MiB"), target, met);
            if let (10, Some(cron)) = (tasks, cron_kib) {
                let ratio = idle.rss as f64 / cron as f64;
                row(
                    "idle RSS, 10 tasks / cron's",
                    format!("{ratio:.2}×"),
                    "≤ 1.5×",
                    Some(ratio <= 1.5),
                );
            }
            row(
                &format!("idle RSS of the guardian process, {tasks} tasks"),
                format!("{:.1} MiB", idle.guardian_rss as f64 / 1024.0),
                "-",
                None,
            );
            row(
                &format!("idle CPU, {tasks} tasks"),
                format!("{} ms per minute", idle.cpu_ms),
                "≤ 60 ms/min",
                Some(idle.cpu_ms <= 60),
            );
            row(
                &format!(
                    "idle context switches in 60 s, {tasks} tasks (all threads, guardian included)"
                ),
                format!("{} ({})", idle.switches, idle.switch_detail),
                "≤ 5",
                Some(idle.switches <= 5),
            );
        }
        if let Some(switches) = cron_switches() {
            row(
                "Debian `cron` context switches in 60 s (same run)",
                switches.to_string(),
                "-",
                None,
            );
        }
    }

    if want("precision") {
        let (median, max) = bench_precision(dir);
        row(
            "fire offset, 100 firings: median",
            format!("{median:.1} ms"),
            "≤ 20 ms",
            Some(median <= 20.0),
        );
        row(
            "fire offset, 100 firings: max",
            format!("{max:.1} ms"),
            "≤ 100 ms",
            Some(max <= 100.0),
        );
    }

    if want("audit") {
        let ms = bench_audit(dir);
        row(
            "audit with `keep:`, a year of hourly snapshots pruned to 24 (8,760 in the ledger)",
            format!("{ms:.0} ms"),
            "≤ 1 s",
            Some(ms <= 1000.0),
        );
    }

    let mut table = String::from("| measure | result | target | |\n|---|---|---|---|\n");
    for (what, figure, target, verdict) in &rows {
        table.push_str(&format!("| {what} | {figure} | {target} | {verdict} |\n"));
    }
    println!("\n{table}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results.md");
    std::fs::write(&out, &table).unwrap();
    println!("written to {}", out.display());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { f64::midpoint(v[n / 2 - 1], v[n / 2]) }
}

fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A task file with `tasks` tasks (on 1 January only, so none fires during a run of the
/// suite: a daily schedule spread over 1,000 tasks fired every minute of hours 0-16) and `secrets` file
/// secrets s0..; extra YAML is appended under `tasks:`.
fn config(dir: &Path, name: &str, tasks: usize, secrets: usize, extra_tasks: &str) -> PathBuf {
    let mut text = format!(
        "socket: {}\nstate_dir: {}\nlog: {{level: warn}}\nsecrets:\n",
        dir.join(format!("{name}.run/s.sock")).display(),
        dir.join(format!("{name}.state")).display()
    );
    for i in 0..secrets {
        let file = dir.join(format!("secret{i}"));
        if !file.exists() {
            write_private(&file, format!("bench-secret-value-{i}").as_bytes());
        }
        text.push_str(&format!("  s{i}: {{file: {}}}\n", file.display()));
    }
    text.push_str("tasks:\n");
    let all: Vec<String> = (0..secrets).map(|i| format!("s{i}")).collect();
    for i in 0..tasks {
        text.push_str(&format!(
            "  t{i}:\n    schedule: '{} {} 1 1 *'\n    command: [restic, backup, /srv]\n    secrets: [{}]\n",
            i % 60,
            (i / 60) % 24,
            if secrets > 0 { "s0" } else { "" }
        ));
    }
    text.push_str(extra_tasks.replace("SECRETS", &all.join(", ")).as_str());
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the daemon and waits for READY=1; returns it (the caller stops it) and how long
/// that took.
#[allow(clippy::zombie_processes)]
fn start_daemon(dir: &Path, config: &Path, log: &str) -> (std::process::Child, Duration) {
    use std::os::unix::net::UnixDatagram;
    let notify_path = dir.join(format!("{log}.notify"));
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let started = Instant::now();
    let child = Command::new(BACKUPNIZZA)
        .args(["run", "-c"])
        .arg(config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{log}.log"))).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    loop {
        let n = notify.recv(&mut buf).expect("daemon did not become ready");
        if &buf[..n] == b"READY=1" {
            return (child, started.elapsed());
        }
    }
}

fn stop(mut child: std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

fn trigger(config: &Path, task: &str) {
    let out = Command::new(BACKUPNIZZA)
        .args(["trigger", "--wait", task, "-c"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{task}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An audit over a year of hourly backups of which a prune elsewhere kept the newest 24:
/// 8,760 snapshots in the ledger, none seen by an audit yet, 8,736 judged by the `keep:`
/// policy (and recorded as pruned). The snapshot list comes from `cat` (an audit reads its
/// step's stdout, whatever prints it). `trigger --wait`'s wall time, to the End record on
/// disk (8,737 ledger entries written, each one `fdatasync`ed); the median of 3, each with a
/// fresh state directory.
fn bench_audit(dir: &Path) -> f64 {
    const HOURS: usize = 8760;
    let start = jiff::Timestamp::from_second(1_735_689_600).unwrap(); // 2025-01-01T00:00:00Z
    let id = |i: usize| format!("{i:064x}");
    let time = |i: usize| (start + jiff::SignedDuration::from_hours(i as i64)).to_string();
    let mut ledger = String::new();
    for i in 0..HOURS {
        ledger.push_str(&format!(
            "{{\"type\":\"saved\",\"task\":\"backup\",\"run_id\":\"r{i}\",\"at\":\"{}\",\"snapshot_id\":\"{}\"}}\n",
            time(i),
            id(i)
        ));
    }
    let listed: Vec<String> = (HOURS - 24..HOURS)
        .map(|i| {
            format!(
                "{{\"id\":\"{}\",\"time\":\"{}\",\"tree\":\"t{i}\",\"paths\":[\"/srv\"],\"hostname\":\"h\"}}",
                id(i),
                time(i)
            )
        })
        .collect();
    let listing = dir.join("audit-listing.json");
    std::fs::write(&listing, format!("[{}]\n", listed.join(","))).unwrap();
    let mut took = Vec::new();
    for round in 0..3 {
        let name = format!("audit{round}");
        let extra = format!(
            "  backup:\n    schedule: manual\n    command: ['true']\n  audit:\n    schedule: manual\n    command: [cat, {}]\n    audit: {{tasks: [backup], keep: {{last: 24}}}}\n",
            listing.display()
        );
        let config = config(dir, &name, 0, 0, &extra);
        let state = dir.join(format!("{name}.state"));
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        write_private(&state.join("ledger.jsonl"), ledger.as_bytes());
        let (daemon, _) = start_daemon(dir, &config, &name);
        // The audit runs after the steps (its duration_ms is the steps'): the trigger's
        // wall time, to the End record on disk, is the measure.
        let began = Instant::now();
        trigger(&config, "audit");
        took.push(began.elapsed().as_secs_f64() * 1000.0);
        stop(daemon);
        let history = std::fs::read_to_string(state.join("history.jsonl")).unwrap();
        let end = history
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["type"] == "end" && r["task"] == "audit")
            .expect("the audit's End record");
        assert_eq!(end["status"], "success", "{end}");
        let reason = end["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("8736 snapshots pruned by the keep policy"), "{reason}");
    }
    median(took)
}

fn bench_validate(dir: &Path) -> (f64, i64) {
    let path = config(dir, "validate", 10_000, 1, "");
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let out = Command::new(BACKUPNIZZA).args(["validate", "-c"]).arg(&path).output().unwrap();
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    (median(times), usage.max_rss())
}

fn bench_ready(dir: &Path) -> f64 {
    let path = config(dir, "ready", 1000, 1, "");
    let mut times = Vec::new();
    for i in 0..10 {
        let (child, took) = start_daemon(dir, &path, &format!("ready{i}"));
        times.push(took.as_secs_f64() * 1000.0);
        stop(child);
    }
    median(times)
}

struct EndToEnd {
    secretbox: f64,
    cat: f64,
    secret_tool: f64,
    static_secretbox: Option<f64>,
    /// The daemon's sealed `secretbox` image, run as a password command runs it.
    sealed: Option<f64>,
}

fn bench_secretbox(dir: &Path, static_secretbox: Option<&Path>) -> EndToEnd {
    let value = "bench-secret-value-0";
    // The same value in the Secret Service, for `secret-tool lookup`.
    let mut store = Command::new("secret-tool")
        .args([
            "store",
            "--label=backupnizza bench",
            "service",
            "backupnizza-bench",
            "username",
            "bench",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("secret-tool (run the benchmarks with .ci/bench)");
    store.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
    assert!(store.wait().unwrap().success());
    let results = dir.join("e2e.txt");
    let bus = std::env::var("DBUS_SESSION_BUS_ADDRESS")
        .expect("a D-Bus session (run the benchmarks with .ci/bench)");
    let extra = format!(
        "  e2e:\n    schedule: '0 0 1 1 *'\n    command: [{}, --inside, e2e, {}, {}, '300'{}]\n    env: {{DBUS_SESSION_BUS_ADDRESS: '{bus}', BENCH_SEALED_COMMAND: secretbox get s0}}\n    secrets: [s0]\n    redeem_limit: 1000\n",
        std::env::current_exe().unwrap().display(),
        dir.join("secret0").display(),
        results.display(),
        static_secretbox.map(|p| format!(", {}", p.display())).unwrap_or_default(),
    ) + &redeemer(static_secretbox);
    let path = config(dir, "e2e", 0, 1, &extra);
    let (child, _) = start_daemon(dir, &path, "e2e");
    trigger(&path, "e2e");
    stop(child);
    let text = std::fs::read_to_string(results).unwrap();
    let v: Vec<f64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let known = |x: f64| (!x.is_nan()).then_some(x);
    EndToEnd {
        secretbox: v[0],
        cat: v[1],
        secret_tool: v[2],
        static_secretbox: known(v[3]),
        sealed: known(v[4]),
    }
}

/// The task's `redeemers:` line that lets the static `secretbox` redeem (the daemon pins the
/// one beside itself).
fn redeemer(static_secretbox: Option<&Path>) -> String {
    static_secretbox.map(|p| format!("    redeemers: [{}]\n", p.display())).unwrap_or_default()
}

/// Per-call times in a shell loop, as a user's script calls `secretbox get`.
struct Loop {
    cat: f64,
    secretbox: f64,
    static_secretbox: Option<f64>,
}

/// `secretbox get` as a user's loop calls it: a task runs `sh` loops of 200 calls each (one
/// secret per build, so each stays within its 1,000 redemptions), alternated in a random
/// order with the same loop of `cat`, five rounds; the median per call of each.
fn bench_loop(dir: &Path, static_secretbox: Option<&Path>) -> Loop {
    let results = dir.join("loop.txt");
    let extra = format!(
        "  loop:\n    schedule: '0 0 1 1 *'\n    command: [{}, --inside, loop, {}, {}, '5', '200', {}{}]\n    secrets: [s0, s1]\n    redeem_limit: 1000\n",
        std::env::current_exe().unwrap().display(),
        dir.join("secret0").display(),
        results.display(),
        SECRETBOX,
        static_secretbox.map(|p| format!(", {}", p.display())).unwrap_or_default(),
    ) + &redeemer(static_secretbox);
    let path = config(dir, "loop", 0, 2, &extra);
    let (child, _) = start_daemon(dir, &path, "loop");
    trigger(&path, "loop");
    stop(child);
    let text = std::fs::read_to_string(results).unwrap();
    let v: Vec<f64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    Loop { cat: v[0], secretbox: v[1], static_secretbox: v.get(2).copied() }
}

/// A redemption (a real `secretbox get`, from a task) while 1,000 idle connections are held.
fn bench_crowded(dir: &Path) -> (f64, f64) {
    let results = dir.join("crowded.txt");
    let extra = format!(
        "  crowded:\n    schedule: '0 0 1 1 *'\n    command: [{}, --inside, timed, '20', {}]\n    secrets: [s0]\n    redeem_limit: 1000\n",
        std::env::current_exe().unwrap().display(),
        results.display()
    );
    let path = config(dir, "crowded", 0, 1, &extra);
    let (child, _) = start_daemon(dir, &path, "crowded");
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        hard.min(8192),
        hard,
    )
    .unwrap();
    let socket = dir.join("crowded.run/s.sock");
    let idle: Vec<std::os::unix::net::UnixStream> =
        (0..1000).map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap()).collect();
    trigger(&path, "crowded");
    drop(idle);
    stop(child);
    let v: Vec<f64> = std::fs::read_to_string(results)
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1])
}

struct Load {
    rate: f64,
    p50_us: u128,
    p99_us: u128,
}

fn bench_redemptions(dir: &Path, clients: usize) -> Load {
    let results = dir.join(format!("load{clients}.txt"));
    let extra = format!(
        "  load:\n    schedule: '0 0 1 1 *'\n    command: [{exe}, --inside, load, '100', '20000', '{clients}', {}]\n    secrets: [SECRETS]\n    redeem_limit: 1000\n    redeemers: [{exe}]\n",
        results.display(),
        exe = std::env::current_exe().unwrap().display(),
    );
    let path = config(dir, &format!("load{clients}"), 0, 100, &extra);
    let (child, _) = start_daemon(dir, &path, &format!("load{clients}"));
    trigger(&path, "load");
    stop(child);
    let text = std::fs::read_to_string(results).unwrap();
    let v: Vec<f64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    Load { rate: v[0], p50_us: v[1] as u128, p99_us: v[2] as u128 }
}

/// The redeemer check's and the per-process connection limit's cost, A/B in one run: the
/// library's broker served in this process (as the daemon serves it) with both and without
/// either, alternated for ten rounds each; the load client is this binary as a child
/// (`--inside load`), holding a token minted for it and listed as the task's redeemer.
/// Median rates, with and without.
fn bench_checks(clients: usize) -> (f64, f64) {
    use backupnizza::broker::{self, Broker, Limits, Redeemers, Secrets};
    use std::sync::Arc;
    let me = std::env::current_exe().unwrap();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rates = (Vec::new(), Vec::new());
    for round in 0..20 {
        let checked = round % 2 == 0;
        let dir = tempfile::Builder::new().prefix("bnz-bench-checks-").tempdir().unwrap();
        let mut secrets = Secrets::empty();
        for i in 0..100 {
            secrets.insert(&format!("s{i}"), format!("secret-{i}").as_bytes()).unwrap();
        }
        // Without: no redeemer check and no per-process connection accounting.
        let limits = Limits { per_process: checked, ..Limits::default() };
        let mut broker = Broker::new(Arc::new(secrets), Duration::from_secs(600), limits);
        if checked {
            let listed = [me.clone()];
            broker = broker.with_redeemers(
                Redeemers::pin(Some(Path::new(SECRETBOX)), [("bench", &listed[..])]).unwrap(),
            );
        }
        let broker = Arc::new(broker);
        let socket = dir.path().join("s.sock");
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let server = runtime.spawn(broker::serve(listener, broker.clone(), stop.clone()));
        let scope: Vec<Arc<str>> = (0..100).map(|i| Arc::from(format!("s{i}"))).collect();
        let (token, handle) = broker.mint(&Arc::from("bench"), &scope, 1000).unwrap();
        let out = dir.path().join("load.txt");
        let mut child = Command::new(&me)
            .args(["--inside", "load", "100", if clients == 0 { "5000" } else { "20000" }])
            .arg(clients.to_string())
            .arg(&out)
            .env("SECRETBOX_TOKEN", token.expose())
            .env("SECRETBOX_SOCKET", &socket)
            .spawn()
            .unwrap();
        broker.started(handle, child.id());
        assert!(child.wait().unwrap().success());
        broker.reaped(handle, Some(child.id()));
        stop.cancel();
        runtime.block_on(server).unwrap();
        let rate: f64 = std::fs::read_to_string(&out)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        if checked { rates.0.push(rate) } else { rates.1.push(rate) }
    }
    (median(rates.0), median(rates.1))
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// CPU time (user + system) of a process, in milliseconds.
/// CPU time the process has run, in milliseconds: the sum over its threads of the
/// scheduler's own run time (`/proc/PID/task/*/schedstat`, in nanoseconds). `utime+stime`
/// in `/proc/PID/stat` count whole 10 ms clock ticks, charged to whoever runs when the tick
/// lands, which is noise at an idle daemon's few milliseconds a minute.
fn cpu_ms(pid: u32) -> u64 {
    let mut ns = 0u64;
    for thread in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let stat = std::fs::read_to_string(thread.path().join("schedstat")).unwrap_or_default();
        ns += stat.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    }
    ns / 1_000_000
}

/// What an idle daemon costs over a minute.
struct Idle {
    /// KiB, the median of 60 one-second samples.
    rss: u64,
    guardian_rss: u64,
    cpu_ms: u64,
    /// Context switches over the minute, summed over the daemon's and the guardian's threads.
    switches: u64,
    /// Which threads switched, and threads that came or went.
    switch_detail: String,
}

/// Each thread's context switches (voluntary and not), by `pid/tid (name)`, for a process
/// and its children.
fn switches(pid: u32) -> BTreeMap<String, u64> {
    let mut found = BTreeMap::new();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let pids =
        std::iter::once(pid).chain(children.split_whitespace().filter_map(|p| p.parse().ok()));
    for p in pids {
        let Ok(threads) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for thread in threads.flatten() {
            let status = std::fs::read_to_string(thread.path().join("status")).unwrap_or_default();
            let field = |name: &str| -> u64 {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            let name = field_text(&status, "Name:");
            let key = format!("{p}/{} ({name})", thread.file_name().to_string_lossy());
            found.insert(
                key,
                field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:"),
            );
        }
    }
    found
}

fn field_text(status: &str, name: &str) -> String {
    status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("").trim().to_string()
}

/// The switches between two readings: a thread that came counts all of its own, and one
/// that went counts one (its end woke something), as its last count is gone with it.
fn switches_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> (u64, String) {
    let mut total = 0;
    let mut detail = Vec::new();
    for (thread, n) in after {
        let d = n - before.get(thread).copied().unwrap_or(0).min(*n);
        if d > 0 {
            detail.push(format!("{thread}: {d}"));
        }
        if !before.contains_key(thread) {
            detail.push(format!("{thread} started"));
        }
        total += d;
    }
    for thread in before.keys().filter(|t| !after.contains_key(*t)) {
        detail.push(format!("{thread} ended"));
        total += 1;
    }
    let detail = if detail.is_empty() { "none".to_string() } else { detail.join(", ") };
    (total, detail)
}

fn bench_idle(dir: &Path, tasks: usize) -> Idle {
    let path = config(dir, &format!("idle{tasks}"), tasks, 1, "");
    let (child, _) = start_daemon(dir, &path, &format!("idle{tasks}"));
    let pid = child.id();
    // Start-up's last work: the daemon gives back memory 2 s after READY, and tokio's idle
    // blocking threads end 10 s after their last job.
    std::thread::sleep(Duration::from_secs(15));
    let before = cpu_ms(pid);
    let switched = switches(pid);
    // RSS sampled every second over the idle minute; the median sample.
    let mut samples = Vec::new();
    for _ in 0..60 {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(status_kib(pid, "VmRSS:") as f64);
    }
    let used = cpu_ms(pid) - before;
    let (switches, switch_detail) = switches_between(&switched, &switches(pid));
    let guardian = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse::<u32>().ok());
    let guardian_rss = guardian.map_or(0, |g| status_kib(g, "VmRSS:"));
    stop(child);
    Idle { rss: median(samples) as u64, guardian_rss, cpu_ms: used, switches, switch_detail }
}

/// The cron binary, where Debian puts it.
fn cron_binary() -> Option<&'static str> {
    ["/usr/sbin/cron", "/usr/sbin/crond"].into_iter().find(|p| Path::new(p).exists())
}

/// Debian's cron daemon idle RSS, started here for the comparison.
fn cron_rss() -> Option<u64> {
    let mut child = Command::new(cron_binary()?)
        .arg("-f")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_secs(3));
    let rss = status_kib(child.id(), "VmRSS:");
    let _ = child.kill();
    let _ = child.wait();
    Some(rss)
}

/// Debian's cron daemon's context switches over a minute, for the comparison (it wakes once
/// a minute, on the minute).
fn cron_switches() -> Option<u64> {
    let mut child = Command::new(cron_binary()?)
        .arg("-f")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_secs(3));
    let before = switches(child.id());
    std::thread::sleep(Duration::from_secs(60));
    let (n, _) = switches_between(&before, &switches(child.id()));
    let _ = child.kill();
    let _ = child.wait();
    Some(n)
}

fn bench_precision(dir: &Path) -> (f64, f64) {
    let results = dir.join("precision.txt");
    let extra = format!(
        "  tick:\n    schedule: '@every 1s'\n    command: [{}, --inside, stamp, {}]\n",
        std::env::current_exe().unwrap().display(),
        results.display()
    );
    let path = config(dir, "precision", 0, 1, &extra);
    let (child, _) = start_daemon(dir, &path, "precision");
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let n = std::fs::read_to_string(&results).map_or(0, |t| t.lines().count());
        if n >= 100 {
            break;
        }
    }
    stop(child);
    let offsets: Vec<f64> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .take(100)
        .map(|l| l.parse().unwrap())
        .collect();
    let max = offsets.iter().copied().fold(0.0, f64::max);
    (median(offsets), max)
}

/// Interleaved: secretbox, cat, secret-tool (and the static and the sealed `secretbox`
/// when there are), N times each; medians in ms.
fn inside_e2e(args: &[String]) {
    let (file, out, n): (&str, &str, usize) = (&args[1], &args[2], args[3].parse().unwrap());
    let static_secretbox = args.get(4);
    let time = |cmd: &mut Command| {
        let start = Instant::now();
        let o = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
        let took = start.elapsed().as_secs_f64() * 1000.0;
        assert!(
            o.status.success() && !o.stdout.is_empty(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        took
    };
    let (mut sb, mut cat, mut tool, mut st, mut sealed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The daemon turned `secretbox get s0` into its sealed image's path (issue 29).
    let sealed_command =
        std::env::var("BENCH_SEALED_COMMAND").ok().filter(|c| c.starts_with("/proc/self/fd/"));
    // Each round runs them in a random order, so whatever one leaves behind
    // (gnome-keyring keeps working after answering) does not always fall on the same.
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = vec![0, 1, 2];
    if static_secretbox.is_some() {
        order.push(3);
    }
    if sealed_command.is_some() {
        order.push(4);
    }
    for _ in 0..n {
        order.shuffle(&mut rand::rng());
        for &which in &order {
            match which {
                0 => sb.push(time(Command::new(SECRETBOX).args(["get", "s0"]))),
                1 => cat.push(time(Command::new("cat").arg(file))),
                3 => st.push(time(Command::new(static_secretbox.unwrap()).args(["get", "s0"]))),
                4 => {
                    let words: Vec<&str> = sealed_command.as_deref().unwrap().split(' ').collect();
                    sealed.push(time(Command::new(words[0]).args(&words[1..])));
                }
                _ => tool.push(time(Command::new("secret-tool").args([
                    "lookup",
                    "service",
                    "backupnizza-bench",
                    "username",
                    "bench",
                ]))),
            }
        }
    }
    let or_nan = |v: Vec<f64>| if v.is_empty() { f64::NAN } else { median(v) };
    let line = format!(
        "{} {} {} {} {}",
        median(sb),
        median(cat),
        median(tool),
        or_nan(st),
        or_nan(sealed)
    );
    std::fs::write(out, line).unwrap();
}

/// The parts that run as a task of the daemon.
fn inside(args: &[String]) {
    match args[0].as_str() {
        "e2e" => inside_e2e(args),
        "loop" => inside_loop(args),
        // `secretbox get` N times: median and max in ms.
        "timed" => {
            let n: usize = args[1].parse().unwrap();
            let mut times = Vec::new();
            for _ in 0..n {
                let start = Instant::now();
                let o = Command::new(SECRETBOX).args(["get", "s0"]).output().unwrap();
                times.push(start.elapsed().as_secs_f64() * 1000.0);
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            }
            let max = times.iter().copied().fold(0.0, f64::max);
            std::fs::write(&args[2], format!("{} {max}", median(times))).unwrap();
        }
        // Redemptions over `clients` keep-alive connections: rate, p50 and p99 in µs.
        "load" => {
            let secrets: usize = args[1].parse().unwrap();
            let total: usize = args[2].parse().unwrap();
            let clients: usize = args[3].parse().unwrap();
            let out = &args[4];
            let (rate, p50, p99) = load(secrets, total, clients);
            std::fs::write(out, format!("{rate} {p50} {p99}")).unwrap();
        }
        // How late this process started relative to the occurrence it belongs to, in ms.
        "stamp" => {
            let now = jiff::Timestamp::now();
            let scheduled: jiff::Timestamp =
                std::env::var("BACKUPNIZZA_SCHEDULED").unwrap().parse().unwrap();
            let late = now.duration_since(scheduled).as_secs_f64() * 1000.0;
            let mut f =
                std::fs::OpenOptions::new().create(true).append(true).open(&args[1]).unwrap();
            writeln!(f, "{late:.3}").unwrap();
        }
        other => panic!("unknown mode {other}"),
    }
}

/// Inside the task: shell loops of `calls` calls each, of `cat FILE` and of `PROGRAM get` for
/// each program (the first redeems s0, the second s1), `rounds` rounds in a random order;
/// writes the median per call of each, in ms, cat's first.
fn inside_loop(args: &[String]) {
    let (file, out) = (&args[1], &args[2]);
    let rounds: usize = args[3].parse().unwrap();
    let calls: usize = args[4].parse().unwrap();
    let programs = &args[5..];
    let script = r#"n=$1; shift; i=0
while [ "$i" -lt "$n" ]; do "$@" >/dev/null || exit 1; i=$((i + 1)); done"#;
    let time_loop = |command: &[&str]| {
        let start = Instant::now();
        let status = Command::new("sh")
            .args(["-c", script, "sh", &calls.to_string()])
            .args(command)
            .status()
            .unwrap();
        assert!(status.success(), "{command:?} failed in the loop");
        start.elapsed().as_secs_f64() * 1000.0 / calls as f64
    };
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); programs.len() + 1];
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..times.len()).collect();
    for _ in 0..rounds {
        order.shuffle(&mut rand::rng());
        for &which in &order {
            let took = if which == 0 {
                time_loop(&["cat", file])
            } else {
                let secret = format!("s{}", which - 1);
                time_loop(&[&programs[which - 1], "get", &secret])
            };
            times[which].push(took);
        }
    }
    let medians: Vec<String> = times.into_iter().map(|t| median(t).to_string()).collect();
    std::fs::write(out, medians.join(" ")).unwrap();
}

/// `clients` keep-alive connections redeeming `total` times in all; 0 clients: one request
/// per connection, one after the other, with the product's own client (as `secretbox` does).
fn load(secrets: usize, total: usize, clients: usize) -> (f64, u128, u128) {
    if clients == 0 {
        return load_fresh(secrets, total);
    }
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let token = std::env::var("SECRETBOX_TOKEN").unwrap();
    let socket = std::env::var("SECRETBOX_SOCKET").unwrap();
    // One thread for the load, leaving the other core to the daemon: on this 2-core machine
    // a second client thread only adds scheduling delay to the latencies measured.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let started = Instant::now();
    let latencies: Vec<Duration> = runtime.block_on(async {
        let mut handles = Vec::new();
        for worker in 0..clients {
            let (token, socket) = (token.clone(), socket.clone());
            let count = total / clients + usize::from(worker < total % clients);
            handles.push(tokio::spawn(async move {
                let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
                tokio::spawn(conn);
                let auth = format!("Bearer {token}");
                let mut lat = Vec::with_capacity(count);
                for i in 0..count {
                    let name = format!("s{}", (worker + i * clients) % secrets);
                    let req = hyper::Request::post(format!("/v1/secrets/{name}"))
                        .header("authorization", &auth)
                        .header("host", "localhost")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let start = Instant::now();
                    let resp = sender.send_request(req).await.unwrap();
                    assert!(resp.status().is_success(), "{}", resp.status());
                    let _ = resp.into_body().collect().await;
                    lat.push(start.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all
    });
    rate_and_percentiles(started, latencies)
}

fn load_fresh(secrets: usize, total: usize) -> (f64, u128, u128) {
    let token = std::env::var("SECRETBOX_TOKEN").unwrap();
    let socket = std::env::var("SECRETBOX_SOCKET").unwrap();
    let client = backupnizza::client::Client::new(Path::new(&socket), Duration::from_secs(10));
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(total);
    for i in 0..total {
        let path = format!("/v1/secrets/s{}", i % secrets);
        let start = Instant::now();
        let response = client.request(&hyper::Method::POST, &path, Some(&token), &[]).unwrap();
        assert!(response.status.is_success(), "{}", response.status);
        latencies.push(start.elapsed());
    }
    rate_and_percentiles(started, latencies)
}

/// Requests per second since `started`, and the p50 and p99 latencies in µs.
fn rate_and_percentiles(started: Instant, mut latencies: Vec<Duration>) -> (f64, u128, u128) {
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_micros()
    };
    (rate, pct(0.5), pct(0.99))
}
