//! Laptop manners, against real D-Bus services on a private bus: logind played by
//! python3-dbusmock's `logind` template (its `ListInhibitors` lists the inhibitors whose
//! descriptor is still open), so the test sees the daemon hold a sleep inhibitor for each
//! run and let it go when the run ends, on success, at a timeout and at shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::harness::{Scratch, TRIGGERED, history, wait_until};

/// A private bus with a dbusmock template on it (logind, upower); both stop when dropped.
struct MockLogind {
    bus: Child,
    mock: Child,
    address: String,
    log: std::path::PathBuf,
}

/// A private `dbus-daemon` whose socket is in `scratch` (named after `name`), serving the
/// test as the system or the session bus: the daemon (to kill when done) and its address.
pub(crate) fn private_bus(scratch: &Scratch, name: &str) -> (Child, String) {
    let socket = scratch.path().join(format!("{name}_bus_socket"));
    let mut bus = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .arg(format!("--address=unix:path={}", socket.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon is installed (.ci/packages)");
    let mut line = String::new();
    BufReader::new(bus.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (bus, line.trim().to_string())
}

impl MockLogind {
    fn start(scratch: &Scratch) -> MockLogind {
        let logind = MockLogind::template(scratch, "logind", "{}");
        wait_until("the logind mock on the bus", || logind.inhibitors().is_some());
        logind
    }

    fn template(scratch: &Scratch, template: &str, parameters: &str) -> MockLogind {
        let (bus, address) = private_bus(scratch, template);
        let log = scratch.path().join(format!("{template}-mock.log"));
        let mock = Command::new("/usr/bin/python3")
            .args(["-m", "dbusmock", "--system", "--template", template, "-p", parameters, "-l"])
            .arg(&log)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-dbusmock is installed (.ci/packages)");
        MockLogind { bus, mock, address, log }
    }

    /// `dbus-send --system ARGS...` on this bus; its output, or `None` when it failed.
    fn send(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("dbus-send")
            .arg("--system")
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ListInhibitors`' answer as dbus-send prints it, or `None` before the mock is up.
    fn inhibitors(&self) -> Option<String> {
        let out = Command::new("dbus-send")
            .args([
                "--system",
                "--print-reply",
                "--dest=org.freedesktop.login1",
                "/org/freedesktop/login1",
                "org.freedesktop.login1.Manager.ListInhibitors",
            ])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn holds(&self, task: &str) -> bool {
        self.inhibitors().is_some_and(|l| l.contains(&format!("backup of {task}")))
    }

    /// How many `Inhibit` calls the mock recorded.
    fn inhibit_calls(&self) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().matches(" Inhibit ").count()
    }
}

impl Drop for MockLogind {
    fn drop(&mut self) {
        let _ = self.mock.kill();
        let _ = self.mock.wait();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

#[test]
fn each_run_holds_a_sleep_inhibitor_until_it_ends_also_at_a_timeout_and_at_shutdown() {
    let scratch = Scratch::new();
    let logind = MockLogind::start(&scratch);
    let go = scratch.path().join("go");
    let config = scratch.config(&format!(
        "tasks:
  backup:
    {TRIGGERED}
    command: [sh, -c, 'while ! test -e {go}; do sleep 0.1; done']
  hung:
    {TRIGGERED}
    timeout: 1s
    kill_grace: 1s
    command: [sleep, '300']
  awake:
    {TRIGGERED}
    inhibit_sleep: false
    command: [sleep, '1']
  long:
    {TRIGGERED}
    command: [sleep, '300']
",
        go = go.display()
    ));
    let mut daemon = scratch.start_daemon_with(&config, |cmd| {
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", &logind.address);
    });
    let trigger = |task: &str| scratch.backupnizza(["trigger", task, "-c"]).run_with(&config);

    // While the run lasts, logind lists its inhibitor; when it ends, the descriptor is closed.
    trigger("backup").expect_code(0);
    wait_until("the backup's inhibitor", || logind.holds("backup"));
    let listed = logind.inhibitors().unwrap();
    assert!(
        listed.contains("\"sleep\"")
            && listed.contains("\"backupnizza\"")
            && listed.contains("\"block\""),
        "{listed}"
    );
    std::fs::write(&go, "").unwrap();
    wait_until("the backup's end", || {
        history(&scratch).iter().any(|r| r["type"] == "end" && r["task"] == "backup")
    });
    wait_until("the inhibitor released", || !logind.holds("backup"));

    // At a timeout.
    scratch.backupnizza(["trigger", "--wait", "hung", "-c"]).run_with(&config).expect_code(1);
    wait_until("the timed-out run's inhibitor released", || !logind.holds("hung"));
    assert_eq!(logind.inhibit_calls(), 2, "one Inhibit call per run");

    // Turned off for a task.
    scratch.backupnizza(["trigger", "--wait", "awake", "-c"]).run_with(&config).expect_code(0);
    assert_eq!(logind.inhibit_calls(), 2, "inhibit_sleep: false asks nothing");

    // At shutdown.
    trigger("long").expect_code(0);
    wait_until("the long run's inhibitor", || logind.holds("long"));
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit();
    wait_until("the inhibitor released at shutdown", || !logind.holds("long"));
    assert_eq!(logind.inhibit_calls(), 3);
}

/// UPower, mocked, says whether the machine is on battery.
fn set_on_battery(upower: &MockLogind, on: bool) {
    let value = format!("variant:boolean:{on}");
    upower
        .send(&[
            "--print-reply",
            "--dest=org.freedesktop.UPower",
            "/org/freedesktop/UPower",
            "org.freedesktop.DBus.Properties.Set",
            "string:org.freedesktop.UPower",
            "string:OnBattery",
            &value,
        ])
        .expect("the UPower mock takes OnBattery");
}

fn starts(scratch: &Scratch, task: &str) -> Vec<serde_json::Value> {
    history(scratch).into_iter().filter(|r| r["type"] == "start" && r["task"] == task).collect()
}

#[test]
fn on_battery_a_run_is_deferred_and_runs_once_on_ac_and_force_after_and_max_lateness_bound_it() {
    let scratch = Scratch::new();
    let upower = MockLogind::template(&scratch, "upower", r#"{"OnBattery": true}"#);
    wait_until("the UPower mock", || {
        upower
            .send(&[
                "--print-reply",
                "--dest=org.freedesktop.UPower",
                "/org/freedesktop/UPower",
                "org.freedesktop.DBus.Properties.Get",
                "string:org.freedesktop.UPower",
                "string:OnBattery",
            ])
            .is_some()
    });
    let config = scratch.config(
        "tasks:
  backup:
    schedule: '@every 2s'
    when: {ac_power: true}
    command: ['true']
  forced:
    schedule: '@every 2s'
    when: {ac_power: true}
    force_after: 1s
    command: ['true']
  late:
    schedule: '@every 2s'
    max_lateness: 3s
    when: {ac_power: true}
    command: ['true']
",
    );
    let daemon = scratch.start_daemon_with(&config, |cmd| {
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", &upower.address);
    });
    daemon.wait_for("the deferral", |l| {
        l.contains("task=backup") && l.contains("deferred: on battery")
    });
    let status = scratch.backupnizza(["status", "-c"]).run_with(&config);
    let line =
        status.stdout().lines().find(|l| l.starts_with("backup ")).unwrap_or_default().to_string();
    assert!(line.contains("deferred: on battery since "), "{}", status.stdout());
    // force_after: never succeeded, so older than 1s: it runs on battery all the same.
    wait_until("the forced run", || {
        history(&scratch)
            .iter()
            .any(|r| r["type"] == "end" && r["task"] == "forced" && r["status"] == "success")
    });
    // max_lateness: a deferral past it is skipped.
    wait_until("the late run skipped", || {
        history(&scratch).iter().any(|r| {
            r["type"] == "end"
                && r["task"] == "late"
                && r["status"] == "skipped"
                && r["reason"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("deferred past max_lateness (on battery"))
        })
    });
    assert!(starts(&scratch, "backup").is_empty(), "nothing ran on battery");

    set_on_battery(&upower, false);
    wait_until("the backup on AC", || {
        history(&scratch)
            .iter()
            .any(|r| r["type"] == "end" && r["task"] == "backup" && r["status"] == "success")
    });
    let first = starts(&scratch, "backup").remove(0);
    assert_eq!(first["deferred"]["why"], "on battery", "{first}");
    // Once: the deferred occurrence ran once; the ones that fired meanwhile were skipped.
    let explain = scratch.backupnizza(["explain", "backup", "-c"]).run_with(&config).stdout();
    assert!(explain.contains("(deferred ") && explain.contains(": on battery)"), "{explain}");
    let log = daemon.log_text();
    assert!(log.contains("the run conditions hold after"), "{log}");
    // UPower's PropertiesChanged woke the deferred run (its poll is 30 s once a signal is
    // expected), rather than a poll finding AC by chance.
    assert!(log.contains("UPower signalled a change: checking the run conditions again"), "{log}");
}

#[test]
fn a_metered_connection_defers_until_network_manager_signals_it_is_not() {
    let scratch = Scratch::new();
    let nm = MockLogind::template(&scratch, "networkmanager", "{}");
    // The template has no Metered property: add it, as "yes" (1).
    let add = || {
        nm.send(&[
            "--print-reply",
            "--dest=org.freedesktop.NetworkManager",
            "/org/freedesktop/NetworkManager",
            "org.freedesktop.DBus.Mock.AddProperty",
            "string:org.freedesktop.NetworkManager",
            "string:Metered",
            "variant:uint32:1",
        ])
    };
    wait_until("the NetworkManager mock", || add().is_some());
    let config = scratch.config(
        "tasks:\n  offsite:\n    schedule: '@every 2s'\n    when: {unmetered: true}\n    command: ['true']\n",
    );
    let daemon = scratch.start_daemon_with(&config, |cmd| {
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", &nm.address);
    });
    daemon.wait_for("the deferral", |l| l.contains("deferred: the network connection is metered"));
    assert!(starts(&scratch, "offsite").is_empty());
    // 4: "guessed no", as NetworkManager says for an ordinary Wi-Fi.
    nm.send(&[
        "--print-reply",
        "--dest=org.freedesktop.NetworkManager",
        "/org/freedesktop/NetworkManager",
        "org.freedesktop.DBus.Properties.Set",
        "string:org.freedesktop.NetworkManager",
        "string:Metered",
        "variant:uint32:4",
    ])
    .expect("the NetworkManager mock takes Metered");
    wait_until("the run once the connection is unmetered", || {
        history(&scratch)
            .iter()
            .any(|r| r["type"] == "end" && r["task"] == "offsite" && r["status"] == "success")
    });
    let log = daemon.log_text();
    assert!(
        log.contains("NetworkManager signalled a change: checking the run conditions again"),
        "{log}"
    );
}

#[test]
fn a_network_condition_waits_for_the_server_to_listen() {
    let scratch = Scratch::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = scratch.config(&format!(
        "tasks:\n  offsite:\n    schedule: '@every 2s'\n    when: {{network: '127.0.0.1:{port}'}}\n    command: ['true']\n"
    ));
    let daemon = scratch.start_daemon(&config);
    daemon.wait_for("the deferral", |l| {
        l.contains(&format!("deferred: 127.0.0.1:{port} is not reachable"))
    });
    assert!(starts(&scratch, "offsite").is_empty());
    let _server = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    wait_until("the run once the server listens", || {
        history(&scratch)
            .iter()
            .any(|r| r["type"] == "end" && r["task"] == "offsite" && r["status"] == "success")
    });
}

#[test]
fn after_a_resume_the_catch_up_run_waits_resume_settle() {
    use crate::harness::offset_to;
    let scratch = Scratch::new();
    let clock = scratch.path().join("faketime");
    let before: jiff::Timestamp = "2030-06-01T02:00:00Z".parse().unwrap();
    std::fs::write(&clock, offset_to(before)).unwrap();
    let config = scratch.config(
        "timezone: UTC\nresume_settle: 3s\ntasks:\n  every-ten:\n    schedule: '*/10 * * * *'\n    command: ['true']\n    max_lateness: 1h\n",
    );
    let daemon = scratch.start_daemon_faked(&config, &clock);
    // The lid opens 1h25m later, as the daemon's clocks tell it (see clock.rs).
    std::fs::write(&clock, offset_to("2030-06-01T03:25:00Z".parse().unwrap())).unwrap();
    daemon.clock_moved();
    let log = daemon.wait_for("the catch-up run", |l| l.contains("run started"));
    let stamp = |needle: &str| -> jiff::Timestamp {
        let line = log
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle}: {log}"));
        line.split_whitespace().next().unwrap().parse().unwrap()
    };
    assert!(log.contains("after the resume before catching up (resume_settle 3s)"), "{log}");
    let waited = stamp("run started").duration_since(stamp("the wall clock moved forward"));
    assert!(
        waited >= jiff::SignedDuration::from_secs(3),
        "started {waited:?} after the resume: {log}"
    );
}

#[test]
fn a_run_the_machine_slept_through_says_so_in_its_record() {
    use crate::harness::offset_to;
    let scratch = Scratch::new();
    let clock = scratch.path().join("faketime");
    std::fs::write(&clock, offset_to("2030-06-01T02:00:00Z".parse().unwrap())).unwrap();
    let go = scratch.path().join("go");
    let config = scratch.config(&format!(
        "timezone: UTC\nresume_settle: 0s\ntasks:\n  backup:\n    {TRIGGERED}\n    command: [sh, -c, 'while ! test -e {}; do sleep 0.1; done']\n",
        go.display()
    ));
    let daemon = scratch.start_daemon_faked(&config, &clock);
    scratch.backupnizza(["trigger", "backup", "-c"]).run_with(&config).expect_code(0);
    daemon.wait_for("the run", |l| l.contains("run started"));
    std::fs::write(&clock, offset_to("2030-06-01T03:00:00Z".parse().unwrap())).unwrap();
    daemon.clock_moved();
    daemon.wait_for("the jump", |l| l.contains("the wall clock moved forward"));
    std::fs::write(&go, "").unwrap();
    wait_until("the run's end", || {
        history(&scratch).iter().any(|r| r["type"] == "end" && r["task"] == "backup")
    });
    let records = history(&scratch);
    let end = records.iter().find(|r| r["type"] == "end" && r["task"] == "backup").unwrap();
    assert!(
        end["reason"].as_str().unwrap().ends_with("; the machine was suspended during the run"),
        "{end}"
    );
}

#[test]
fn an_occurrence_in_a_blackout_window_is_deferred_to_its_end() {
    use crate::harness::offset_to;
    let scratch = Scratch::new();
    let clock = scratch.path().join("faketime");
    // A Saturday, inside the window.
    std::fs::write(&clock, offset_to("2030-06-01T09:00:30Z".parse().unwrap())).unwrap();
    let config = scratch.config(
        "timezone: UTC\nresume_settle: 0s\ntasks:\n  quiet:\n    schedule: '@every 2s'\n    max_lateness: 1h\n    blackout: ['09:00-09:01 sat,sun']\n    command: ['true']\n",
    );
    let daemon = scratch.start_daemon_faked(&config, &clock);
    daemon.wait_for("the deferral", |l| {
        l.contains("deferred: in the blackout window 09:00-09:01 sat,sun")
    });
    assert!(starts(&scratch, "quiet").is_empty(), "nothing runs inside the window");
    // The window ends: the clock moves on to 09:01:05.
    std::fs::write(&clock, offset_to("2030-06-01T09:01:05Z".parse().unwrap())).unwrap();
    wait_until("the run after the window", || {
        history(&scratch)
            .iter()
            .any(|r| r["type"] == "end" && r["task"] == "quiet" && r["status"] == "success")
    });
    let first = starts(&scratch, "quiet").remove(0);
    assert_eq!(first["deferred"]["why"], "in the blackout window 09:00-09:01 sat,sun", "{first}");
    let at: jiff::Timestamp = first["at"].as_str().unwrap().parse().unwrap();
    let end: jiff::Timestamp = "2030-06-01T09:01:00Z".parse().unwrap();
    assert!(at >= end, "started at {at}, before the window's end: {first}");
}
