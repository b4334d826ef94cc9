//! A small harness for running the real binaries: a temporary directory per test, a command
//! builder, and outputs that print everything useful when an assertion fails.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub(crate) const BACKUPNIZZA: &str = env!("CARGO_BIN_EXE_backupnizza");
pub(crate) const SECRETBOX: &str = env!("CARGO_BIN_EXE_secretbox");

/// A per-test scratch directory, removed when dropped.
pub(crate) struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub(crate) fn new() -> Scratch {
        Scratch { dir: tempfile::Builder::new().prefix("bnz-").tempdir().expect("create temp dir") }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating parent directories) and returns its path.
    pub(crate) fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// A `backupnizza` command with a controlled environment rooted in this directory.
    pub(crate) fn backupnizza<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(BACKUPNIZZA);
        cmd.args(args);
        Cmd { cmd }
    }

    /// Any program, with the environment the harness gives the binaries: the caller's PATH,
    /// LANG and D-Bus session, HOME and XDG directories in this scratch directory, TZ=UTC.
    pub(crate) fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.path()).env_clear();
        for var in ["PATH", "LANG", "DBUS_SESSION_BUS_ADDRESS"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.env("HOME", self.path())
            .env("XDG_RUNTIME_DIR", self.path().join("xdg-run"))
            .env("XDG_STATE_HOME", self.path().join("state"))
            .env("TZ", "UTC");
        cmd
    }
}

pub(crate) struct Cmd {
    pub cmd: Command,
}

impl Cmd {
    pub(crate) fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Cmd {
        self.cmd.env(key, value);
        self
    }

    pub(crate) fn run(mut self) -> Run {
        let output = self.cmd.output().expect("spawn binary");
        Run { command: format!("{:?}", self.cmd), output }
    }
}

/// A finished command, printable in full for assertion messages.
pub(crate) struct Run {
    pub command: String,
    pub output: Output,
}

impl Run {
    pub(crate) fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    #[track_caller]
    pub(crate) fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code(), Some(code), "unexpected exit status\n{self}");
        self
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.command)?;
        writeln!(f, "status: {}", self.output.status)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout())?;
        write!(f, "--- stderr ---\n{}", self.stderr())
    }
}

impl Cmd {
    /// Runs with a path argument appended.
    pub(crate) fn run_with(self, path: &Path) -> Run {
        self.run_with_args(path, &[])
    }

    /// Runs with a path argument and more arguments appended.
    pub(crate) fn run_with_args(mut self, path: &Path, more: &[&str]) -> Run {
        self.cmd.arg(path).args(more);
        self.run()
    }
}

/// A running `backupnizza run`, its log captured to a file. Stopped (SIGTERM) on drop.
pub(crate) struct Daemon {
    pub child: Option<std::process::Child>,
    pub log: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    /// Tells a daemon under libfaketime that its clock moved, as the kernel tells a real one
    /// (a timerfd cancelled by the change): libfaketime moves only what the daemon reads, so
    /// no notice comes, and an idle daemon would not look until its next timer. A status
    /// request wakes it the same way: it reads its clocks at every wake.
    pub(crate) fn clock_moved(&self) {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket)
            .expect("the daemon's socket accepts");
        write!(stream, "GET /v1/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "status after moving the clock: {reply}");
    }
}

/// A schedule that never fires during a test (1 January): tasks run by `trigger` only.
pub(crate) const TRIGGERED: &str = "schedule: '0 0 1 1 *'";

/// `backupnizza trigger TASK [--wait] -c CONFIG`.
pub(crate) fn trigger(scratch: &Scratch, config: &Path, task: &str, wait: bool) -> Run {
    let mut args = vec!["trigger", task];
    if wait {
        args.push("--wait");
    }
    args.push("-c");
    scratch.backupnizza(args).run_with(config)
}

/// The run history the daemon wrote in `scratch/state`, record by record.
pub(crate) fn history(scratch: &Scratch) -> Vec<serde_json::Value> {
    std::fs::read_to_string(scratch.path().join("state/history.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// How long any single wait in a test may take before the test fails. Generous: tests
/// assert behaviour, not speed.
pub(crate) const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

impl Scratch {
    pub(crate) fn socket(&self) -> PathBuf {
        self.path().join("run/s.sock")
    }

    /// Writes a task file whose socket and state live in this directory.
    pub(crate) fn config(&self, body: &str) -> PathBuf {
        let text = format!(
            "socket: {}\nstate_dir: {}\n{body}",
            self.socket().display(),
            self.path().join("state").display()
        );
        self.write("backup.yaml", text)
    }

    /// `backupnizza run -c CONFIG`, not yet started, with its stderr going to `log`.
    pub(crate) fn daemon_command(&self, config: &Path, log: &Path) -> Command {
        self.daemon_command_as(config, log, None)
    }

    /// The same, run as another user through `setpriv` when `uid` is given.
    pub(crate) fn daemon_command_as(&self, config: &Path, log: &Path, uid: Option<u32>) -> Command {
        let privs = uid.map(|uid| (uid, plain_user(uid)));
        self.daemon_command_privs(config, log, privs.as_ref().map(|(u, a)| (*u, a.as_slice())))
    }

    /// The same, run through `setpriv CREDENTIALS --` as `uid` when given, where the
    /// credentials are `setpriv`'s own arguments (`--reuid=`, `--regid=`, `--groups=`,
    /// `--ambient-caps=`, ...), for a daemon with groups or capabilities of its own.
    pub(crate) fn daemon_command_privs(
        &self,
        config: &Path,
        log: &Path,
        privs: Option<(u32, &[String])>,
    ) -> Command {
        let mut cmd = match privs {
            Some((uid, credentials)) => {
                // Copies of the binaries the other user can execute, wherever the repository
                // lives (a clone under /root is not reachable for them).
                let bin = self.bin_as_user(uid);
                let mut cmd = self.command("setpriv");
                cmd.args(credentials).arg("--").arg(bin.join("backupnizza"));
                cmd
            }
            None => self.command(BACKUPNIZZA),
        };
        cmd.args(["run", "-c"]).arg(config);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("create log"));
        cmd
    }

    /// Starts the daemon and waits until it says READY=1 on a notify socket, as systemd does.
    pub(crate) fn start_daemon(&self, config: &Path) -> Daemon {
        self.start_daemon_with(config, |_| {})
    }

    pub(crate) fn start_daemon_with(
        &self,
        config: &Path,
        adjust: impl FnOnce(&mut Command),
    ) -> Daemon {
        self.start_daemon_full(config, None, adjust)
    }

    /// Starts the daemon under libfaketime, its wall clock read from the timestamp file
    /// `clock` (see `offset_to`); its monotonic and boot clocks stay real, so moving the
    /// file is a change of the wall clock to the daemon.
    pub(crate) fn start_daemon_faked(&self, config: &Path, clock: &Path) -> Daemon {
        self.start_daemon_with(config, |cmd| {
            cmd.env("LD_PRELOAD", libfaketime())
                .env("FAKETIME_TIMESTAMP_FILE", clock)
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        })
    }

    /// Starts the daemon (as `uid` if given) and waits for READY=1.
    pub(crate) fn start_daemon_full(
        &self,
        config: &Path,
        uid: Option<u32>,
        adjust: impl FnOnce(&mut Command),
    ) -> Daemon {
        let privs = uid.map(|uid| (uid, plain_user(uid)));
        self.start_daemon_privs(config, privs.as_ref().map(|(u, a)| (*u, a.as_slice())), adjust)
    }

    /// `bin-as-user/` with copies of both binaries owned by `uid`, created on first use.
    pub(crate) fn bin_as_user(&self, uid: u32) -> PathBuf {
        let bin = self.path().join("bin-as-user");
        std::fs::create_dir_all(&bin).unwrap();
        let owner = Some(nix::unistd::Uid::from_raw(uid));
        for program in [BACKUPNIZZA, SECRETBOX] {
            let to = bin.join(Path::new(program).file_name().unwrap());
            if !to.exists() {
                copy_program(program, &to);
            }
            nix::unistd::chown(&to, owner, None).unwrap();
        }
        nix::unistd::chown(&bin, owner, None).unwrap();
        bin
    }

    /// Starts the daemon through `setpriv` with the given credentials (see
    /// [`Scratch::daemon_command_privs`]) and waits for READY=1.
    pub(crate) fn start_daemon_privs(
        &self,
        config: &Path,
        privs: Option<(u32, &[String])>,
        adjust: impl FnOnce(&mut Command),
    ) -> Daemon {
        let uid = privs.map(|(uid, _)| uid);
        use std::os::unix::net::UnixDatagram;
        let log = self.path().join(format!("daemon-{}.log", unique()));
        let notify_path = self.path().join(format!("notify-{}.sock", unique()));
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
        if let Some(uid) = uid {
            // The daemon (another user) must be able to write to the notify socket.
            nix::unistd::chown(&notify_path, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
        }
        let mut cmd = self.daemon_command_privs(config, &log, privs);
        cmd.env("NOTIFY_SOCKET", &notify_path);
        adjust(&mut cmd);
        let child = cmd.spawn().expect("spawn daemon");
        let mut daemon = Daemon { child: Some(child), log, socket: self.socket() };
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut buf = [0u8; 256];
        loop {
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
            {
                return daemon;
            }
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited before it was ready: {status}\n{}", daemon.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon not ready in time\n{}",
                daemon.log_text()
            );
        }
    }
}

/// `setpriv` credentials for a plain user: uid, a gid of the same number, no groups.
pub(crate) fn plain_user(uid: u32) -> Vec<String> {
    vec![format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()]
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Daemon {
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `cond(log)` holds; panics with the log after `PATIENCE`.
    #[track_caller]
    pub(crate) fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let log = self.log_text();
            if cond(&log) {
                return log;
            }
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}\n{log}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits until the log contains `needle` `times` times.
    #[track_caller]
    pub(crate) fn wait_for_count(&self, needle: &str, times: usize) -> String {
        self.wait_for(&format!("{times} x {needle:?}"), |log| log.matches(needle).count() >= times)
    }

    /// Sends a signal to the daemon.
    pub(crate) fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// SIGTERM, then waits for the exit status.
    pub(crate) fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit()
    }

    /// Waits for the daemon to exit on its own.
    pub(crate) fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + PATIENCE;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon did not exit\n{}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
    }
}

/// A secret generated at run time, so finding it anywhere means something leaked.
/// A process's program name: the file name of its `argv[0]` (as `ps -f` shows it). Not
/// `comm`: a program the daemon runs from a sealed image has its descriptor number there.
pub(crate) fn program_name(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(argv0.rsplit(|b| *b == b'/').next().unwrap_or_default()).into_owned()
}

/// The file `program` names on the test's `PATH` (the first, as `execvp` finds it).
pub(crate) fn on_path(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|file| file.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

pub(crate) fn canary() -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("canary-{n:032x}")
}

/// A process's resident memory, from `/proc/PID/status`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// Copies a program by running `cp`, so that this process never holds the copy open for
/// writing: a test thread that forks meanwhile would hold that descriptor until its child
/// execs, and executing the copy then fails with ETXTBSY ("Text file busy").
pub(crate) fn copy_program(from: impl AsRef<Path>, to: impl AsRef<Path>) {
    let out =
        Command::new("cp").arg("--").arg(from.as_ref()).arg(to.as_ref()).output().expect("cp runs");
    assert!(out.status.success(), "cp: {}", String::from_utf8_lossy(&out.stderr));
}

/// sha256 hex of bytes (tasks prove they got a secret by printing only its digest).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a 0600 file.
pub(crate) fn write_private(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Polls `cond` every 100 ms until it holds; panics after `PATIENCE`.
#[track_caller]
pub(crate) fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// libfaketime's preload library (Debian's `faketime` package).
pub(crate) fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime.so.1 (Debian package faketime; .ci/run installs it)")
}

/// A libfaketime spec that makes the clock read `target` now.
pub(crate) fn offset_to(target: jiff::Timestamp) -> String {
    let seconds = target.as_second() - jiff::Timestamp::now().as_second();
    format!("{seconds:+}")
}

/// Gives `path` and everything below it to `uid`:`gid`, never following a symbolic link
/// (for tests that run the daemon or an attacker as another user).
pub(crate) fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let id = (Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)));
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        id.0,
        id.1,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}
