//! End to end with real restic against a real append-only REST server (`rclone serve restic
//! --append-only` on a random loopback port): the daemon fires backups by schedule and by
//! trigger, restic gets its password from `secretbox` out of the kernel keyring, a prune is
//! refused by the server and recorded as a failure, and the password (a canary) shows up in
//! no log line, history record, environment or argument list on the way.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::harness::{Scratch, canary, history};

/// `rclone serve restic --append-only` on 127.0.0.1, port chosen by the kernel.
pub(crate) struct RestServer {
    child: Child,
    pub url: String,
}

impl RestServer {
    pub(crate) fn start(dir: &Path) -> RestServer {
        RestServer::serve("rclone", &["restic", "--append-only"], dir)
    }

    /// `PROGRAM serve ARGS... --addr 127.0.0.1:0 DIR`: an rclone server on a loopback port
    /// the kernel chooses, its URL read from its log (`.../` stripped).
    pub(crate) fn serve(
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        dir: &Path,
    ) -> RestServer {
        RestServer::serve_on(program, args, dir, "127.0.0.1:0")
    }

    /// The same on `addr` (`127.0.0.1:PORT`): a server started again where one was.
    pub(crate) fn serve_on(
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        dir: &Path,
        addr: &str,
    ) -> RestServer {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new(program)
            .arg("serve")
            .args(args)
            .args(["--addr", addr])
            .arg(dir)
            .env("RCLONE_CONFIG", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rclone is installed (.ci/run installs it)");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("rclone exited before serving").unwrap();
            if let Some(at) = line.find("http://127.0.0.1:") {
                break line[at..].trim().trim_end_matches([']', '/']).to_string();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        RestServer { child, url }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples every process under `root` (environment and argument list) until stopped,
/// recording what it saw; short-lived children like restic and secretbox are caught too.
pub(crate) struct ProcSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub seen: Arc<Mutex<Vec<(u32, String)>>>,
    pub leaks: Arc<Mutex<Vec<String>>>,
    environs: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl ProcSampler {
    pub(crate) fn start(root: u32, needle: String) -> ProcSampler {
        ProcSampler::start_with(move || descendants(root), vec![needle])
    }

    /// Samples every process on the machine but `except` (a server that must know the
    /// credential: the other end of the connection) for any of `needles`.
    pub(crate) fn everywhere(needles: Vec<String>, except: Vec<u32>) -> ProcSampler {
        let me = std::process::id();
        ProcSampler::start_with(
            move || all_pids().into_iter().filter(|p| *p != me && !except.contains(p)).collect(),
            needles,
        )
    }

    fn start_with(
        pids: impl Fn() -> Vec<u32> + Send + 'static,
        needles: Vec<String>,
    ) -> ProcSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
        let leaks: Arc<Mutex<Vec<String>>> = Arc::default();
        let environs: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let (s, v, l, e) = (stop.clone(), seen.clone(), leaks.clone(), environs.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for pid in pids() {
                    let comm = crate::harness::program_name(pid);
                    for file in ["environ", "cmdline"] {
                        let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{file}")) else {
                            continue;
                        };
                        for needle in &needles {
                            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                                l.lock().unwrap().push(format!("{comm} ({pid}) {file}"));
                            }
                        }
                        if file == "environ" && comm == "restic" {
                            let mut environs = e.lock().unwrap();
                            if environs.len() < 64 {
                                environs.push(bytes);
                            }
                        }
                    }
                    // By pid and name: a task's process is often first seen between fork
                    // and exec, under the daemon's name, and must be seen again as restic.
                    let mut seen = v.lock().unwrap();
                    if !seen.iter().any(|(p, c)| *p == pid && *c == comm) {
                        seen.push((pid, comm));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        ProcSampler { stop, thread: Some(thread), seen, leaks, environs }
    }

    /// Environment blocks of restic processes the sampler read (at most 64).
    pub(crate) fn restic_environs(&self) -> Vec<Vec<u8>> {
        self.environs.lock().unwrap().clone()
    }

    pub(crate) fn finish(mut self) -> (Vec<(u32, String)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (self.seen.lock().unwrap().clone(), self.leaks.lock().unwrap().clone())
    }
}

/// Every live process that descends from `root` (not `root` itself).
fn descendants(root: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| *pid != root && backupnizza::broker::peer::descends_from(*pid, root))
        .collect()
}

/// Every live process.
fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .collect()
}

#[test]
fn restic_backs_up_through_secretbox_to_an_append_only_server() {
    let scratch = Scratch::new();
    let server = RestServer::start(&scratch.path().join("rest"));
    let repo = format!("rest:{}/laptop/", server.url);
    let password = canary();
    let service = format!("bnz-test-{}", canary());
    let data = scratch.path().join("Documents");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("notes.txt"), "important\n").unwrap();

    let env = format!(
        "    env:\n      RESTIC_REPOSITORY: {repo}\n      RESTIC_PASSWORD_COMMAND: secretbox get repo\n      RESTIC_CACHE_DIR: {}\n    secrets: [repo]\n",
        scratch.path().join("cache").display()
    );
    let config = scratch.config(&format!(
        "secrets:
  repo: {{keyring: {{service: {service}, account: repo, store: keyutils}}}}
tasks:
  init:
    schedule: '0 0 1 1 *'
    command: [restic, init]
{env}  backup:
    schedule: '@every 2s'
    command: [restic, backup, --host, testhost, ~/Documents]
{env}  prune:
    schedule: '0 0 1 1 *'
    command: [restic, forget, --keep-last, '1', --prune]
{env}  snapshots:
    schedule: '0 0 1 1 *'
    command: [restic, snapshots, --json]
{env}"
    ));
    // Seed the keychain through the CLI, as a user would.
    let mut set = scratch.backupnizza(["secret", "set", "repo", "-c"]).cmd;
    set.arg(&config).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = set.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let daemon = scratch.start_daemon(&config);
    let sampler = ProcSampler::start(daemon.pid(), password.clone());
    let run = |task: &str| scratch.backupnizza(["trigger", "--wait", task, "-c"]).run_with(&config);
    let init = run("init");
    init.expect_code(0);

    // By schedule: wait for a scheduled backup that succeeded.
    daemon.wait_for("a scheduled backup", |_| {
        history(&scratch)
            .iter()
            .any(|r| r["type"] == "end" && r["task"] == "backup" && r["status"] == "success")
    });
    // By trigger (the scheduled one may be running: queue behind it by retrying).
    let manual = loop {
        let r = run("backup");
        if r.code() == Some(0) || !r.stderr().contains("is running") {
            break r;
        }
    };
    manual.expect_code(0);

    let snapshots = run("snapshots");
    snapshots.expect_code(0);
    // The list itself is read, not logged (it is one long line): the log says how many.
    let log = daemon.wait_for("restic's snapshot list", |l| l.contains("restic listed"));
    assert!(!log.contains("restic listed 0 snapshots"), "{log}");

    // The append-only server refuses deletion: the prune fails, in history and the log.
    let prune = run("prune");
    prune.expect_code(1);
    let h = history(&scratch);
    let prune_end = h.iter().find(|r| r["type"] == "end" && r["task"] == "prune").unwrap();
    assert_eq!(prune_end["status"], "failed", "{prune_end}");
    let log = daemon.log_text();
    assert!(
        log.lines().any(|l| l.contains("task=prune") && l.contains("run ended: failed")),
        "{log}"
    );

    drop(daemon);
    let (seen, leaks) = sampler.finish();
    assert!(seen.iter().any(|(_, c)| c == "restic"), "the sampler never saw restic: {seen:?}");
    assert!(leaks.is_empty(), "password found in: {leaks:?}");
    let log = std::fs::read_to_string(scratch.path().join("state/history.jsonl")).unwrap();
    assert!(!log.contains(&password));
    for entry in std::fs::read_dir(scratch.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("daemon-") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            assert!(!text.contains(&password), "password in {name}");
        }
    }
    let _ =
        Command::new("keyctl").args(["purge", "user", &format!("keyring:repo@{service}")]).status();
}
