//! Laptop manners, against real D-Bus services on a private bus: logind played by
//! python3-dbusmock's `logind` template (its `ListInhibitors` lists the inhibitors whose
//! descriptor is still open), so the test sees the daemon hold a sleep inhibitor for each
//! run and let it go when the run ends, on success, at a timeout and at shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::harness::{Scratch, TRIGGERED, history, wait_until};

/// A private bus with dbusmock's logind on it; both stop when dropped.
struct MockLogind {
    bus: Child,
    mock: Child,
    address: String,
    log: std::path::PathBuf,
}

impl MockLogind {
    fn start(scratch: &Scratch) -> MockLogind {
        let socket = scratch.path().join("system_bus_socket");
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .arg(format!("--address=unix:path={}", socket.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon is installed (.ci/packages)");
        let mut line = String::new();
        BufReader::new(bus.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line.trim().to_string();
        let log = scratch.path().join("logind-mock.log");
        let mock = Command::new("/usr/bin/python3")
            .args(["-m", "dbusmock", "--system", "--template", "logind", "-l"])
            .arg(&log)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-dbusmock is installed (.ci/packages)");
        let logind = MockLogind { bus, mock, address, log };
        wait_until("the logind mock on the bus", || logind.inhibitors().is_some());
        logind
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
