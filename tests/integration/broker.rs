//! The secret broker through its real parts: the library's socket server on a tempdir
//! socket, tokens minted for real child processes, and the real `secretbox` binary run by
//! those children.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use backupnizza::broker::{self, Broker, Handle, Limits, Secrets, Token};
use backupnizza::protocol::exit;
use tokio_util::sync::CancellationToken;

use crate::harness::{SECRETBOX, Scratch, canary};

/// A broker served on a runtime of its own, as the daemon serves it.
pub(crate) struct InProcess {
    pub broker: Arc<Broker>,
    pub scratch: Scratch,
    runtime: tokio::runtime::Runtime,
    stop: CancellationToken,
}

impl InProcess {
    pub(crate) fn start(secrets: &[(&str, &[u8])], ttl: Duration) -> InProcess {
        InProcess::start_with(secrets, ttl, Limits::default())
    }

    pub(crate) fn start_with(
        secrets: &[(&str, &[u8])],
        ttl: Duration,
        limits: Limits,
    ) -> InProcess {
        let scratch = Scratch::new();
        let mut store = Secrets::empty();
        for (name, value) in secrets {
            store.insert(name, value).unwrap();
        }
        let broker = Arc::new(Broker::new(Arc::new(store), ttl, limits));
        // Bound before the server runs, so clients never race its start. Not with
        // `server::bind`: it sets the process umask around bind(2), which would race with
        // the other tests of this process creating files (the daemon tests cover it).
        let dir = scratch.socket().parent().unwrap().to_path_buf();
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let std_listener = std::os::unix::net::UnixListener::bind(scratch.socket()).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::from_std(std_listener).unwrap()
        };
        let stop = CancellationToken::new();
        runtime.spawn(broker::serve(listener, broker.clone(), stop.clone()));
        InProcess { broker, scratch, runtime, stop }
    }

    pub(crate) fn mint(&self, scope: &[&str], limit: u32) -> (Token, Handle) {
        let scope: Vec<Arc<str>> = scope.iter().map(|s| Arc::from(*s)).collect();
        self.broker.mint(&Arc::from("test-task"), &scope, limit).unwrap()
    }

    /// Starts `sh -c script` holding `token`, records it as the token's process, and lets it
    /// go (the script's first `read` waits for that, so it never races the binding).
    pub(crate) fn spawn(&self, token: &Token, handle: Handle, script: &str) -> Child {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _go; {script}"))
            .current_dir(self.scratch.path())
            .env("SECRETBOX_TOKEN", token.expose())
            .env("SECRETBOX_SOCKET", self.scratch.socket())
            .env("PATH", path_with_secretbox())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.broker.started(handle, child.id());
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        child
    }

    /// The real process exit, as the runner reports it: the token dies.
    pub(crate) fn reaped(&self, handle: Handle) {
        self.broker.reaped(handle, None);
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = &self.runtime;
    }
}

pub(crate) fn path_with_secretbox() -> String {
    let dir = Path::new(SECRETBOX).parent().unwrap().display().to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

/// `secretbox get NAME` run directly by the test (not a descendant of any task process).
fn secretbox(token: Option<&str>, socket: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(SECRETBOX);
    cmd.arg("get").args(args).env_remove("SECRETBOX_TOKEN").env("SECRETBOX_SOCKET", socket);
    if let Some(t) = token {
        cmd.env("SECRETBOX_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn output_of(child: Child) -> (Option<i32>, Vec<u8>, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.code(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_child_gets_its_secret_through_the_real_secretbox() {
    let secret = canary();
    let b = InProcess::start(&[("repo", secret.as_bytes())], Duration::from_secs(30));
    let (token, handle) = b.mint(&["repo"], 1);
    let child = b.spawn(&token, handle, "secretbox get repo");
    let (code, stdout, stderr) = output_of(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, format!("{secret}\n").into_bytes());

    let (token, handle) = b.mint(&["repo"], 1);
    let (code, stdout, stderr) =
        output_of(b.spawn(&token, handle, "secretbox get --no-newline repo"));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, secret.as_bytes());
}

#[test]
fn single_use_under_a_race_of_64_redemptions() {
    let b = InProcess::start(&[("repo", canary().as_bytes())], Duration::from_secs(60));
    let (token, handle) = b.mint(&["repo"], 1);
    let script = "for i in $(seq 1 64); do (secretbox get repo >/dev/null 2>&1; echo $? > rc.$i) & done; wait";
    let (code, _, stderr) = output_of(b.spawn(&token, handle, script));
    assert_eq!(code, Some(0), "{stderr}");
    let codes: Vec<String> = (1..=64)
        .map(|i| {
            std::fs::read_to_string(b.scratch.path().join(format!("rc.{i}")))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(codes.iter().filter(|c| *c == "0").count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == exit::USED.to_string()).count(), 63, "{codes:?}");
    assert_eq!(b.broker.stats().redeemed, 1);
}

#[test]
fn rejections_have_their_documented_exit_codes_and_print_nothing() {
    let b = InProcess::start(
        &[("repo", canary().as_bytes()), ("other", canary().as_bytes())],
        Duration::from_secs(60),
    );
    // Used: the second redemption of the same secret.
    let (token, handle) = b.mint(&["repo"], 1);
    let script = "secretbox get repo >/dev/null; secretbox get repo > second; echo $? > rc";
    let (code, _, stderr) = output_of(b.spawn(&token, handle, script));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(b.scratch.path().join("rc")).unwrap().trim(),
        exit::USED.to_string()
    );
    assert!(std::fs::read(b.scratch.path().join("second")).unwrap().is_empty());
    assert!(stderr.contains("already used"), "{stderr}");

    // Not in scope: `other` is loaded, but not in this token's task's `secrets:`.
    let (token, handle) = b.mint(&["repo"], 1);
    let (code, stdout, stderr) = output_of(b.spawn(&token, handle, "secretbox get other"));
    assert_eq!(code, Some(exit::NOT_IN_SCOPE), "{stderr}");
    assert!(stdout.is_empty());

    // Revoked: the token's process has exited (and been reaped) before anyone redeems it.
    // Its pid may be reused, so nobody can show the token was theirs: forbidden.
    let (token, handle) = b.mint(&["repo"], 1);
    let (code, _, _) = output_of(b.spawn(&token, handle, "exit 0"));
    assert_eq!(code, Some(0));
    b.reaped(handle);
    let out = secretbox(Some(token.expose()), &b.scratch.socket(), &["repo"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::FORBIDDEN), "{stderr}");
    assert!(out.stdout.is_empty());

    // Not a token at all; a well-formed one nobody issued (nobody's: forbidden); no token;
    // no daemon. (This test process plays the daemon: its children count as task processes.)
    let out = secretbox(Some("garbage"), &b.scratch.socket(), &["repo"]);
    assert_eq!(out.status.code(), Some(exit::UNKNOWN));
    assert!(out.stdout.is_empty());
    let nobodys = "bnz1_0000000000000000000000000000000000000000000000000000000000000000";
    let out = secretbox(Some(nobodys), &b.scratch.socket(), &["repo"]);
    assert_eq!(out.status.code(), Some(exit::FORBIDDEN));
    assert!(out.stdout.is_empty());
    let out = secretbox(None, &b.scratch.socket(), &["repo"]);
    assert_eq!(out.status.code(), Some(exit::NO_TOKEN));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SECRETBOX_TOKEN is not set"));
    let out = secretbox(Some("x"), &b.scratch.path().join("nowhere.sock"), &["repo"]);
    assert_eq!(out.status.code(), Some(exit::UNREACHABLE));
    assert!(out.stdout.is_empty());
    let out = secretbox(Some("x"), &b.scratch.socket(), &["not a name"]);
    assert_eq!(out.status.code(), Some(exit::USAGE));
}

#[test]
fn expired_tokens_are_refused() {
    let b = InProcess::start(&[("repo", canary().as_bytes())], Duration::from_millis(300));
    let (token, handle) = b.mint(&["repo"], 1);
    // Waiting longer than the TTL: a slower machine only makes the token older.
    let (code, stdout, stderr) = output_of(b.spawn(&token, handle, "sleep 1; secretbox get repo"));
    assert_eq!(code, Some(exit::EXPIRED), "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("expired"), "{stderr}");
}

#[test]
fn a_same_uid_process_outside_the_task_is_refused() {
    let b = InProcess::start(&[("repo", canary().as_bytes())], Duration::from_secs(60));
    let (token, handle) = b.mint(&["repo"], 1);
    // The token's process is alive; the test process (its parent, not a descendant) tries.
    let mut child = b.spawn(&token, handle, "sleep 60");
    let out = secretbox(Some(token.expose()), &b.scratch.socket(), &["repo"]);
    assert_eq!(
        out.status.code(),
        Some(exit::FORBIDDEN),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    // The failed attempt did not consume the token for its rightful owner.
    let (token2, handle2) = b.mint(&["repo"], 1);
    let (code, _, stderr) = output_of(b.spawn(&token2, handle2, "secretbox get repo >/dev/null"));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn another_uid_is_refused_even_when_the_socket_is_world_writable() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIPPED: needs root to run a client as another user (CI runs as root)");
        return;
    }
    let b = InProcess::start(&[("repo", canary().as_bytes())], Duration::from_secs(60));
    let (token, handle) = b.mint(&["repo"], 1);
    let mut child = b.spawn(&token, handle, "sleep 60");
    // Loosen everything on the way to the socket, so only the peer check stands.
    for (path, mode) in [
        (b.scratch.path().to_path_buf(), 0o755),
        (b.scratch.path().join("run"), 0o777),
        (b.scratch.socket(), 0o777),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // A copy the other user can execute wherever the repository lives (e.g. under /root).
    let client = b.scratch.path().join("secretbox");
    crate::harness::copy_program(SECRETBOX, &client);
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&client)
        .args(["get", "repo"])
        .env("SECRETBOX_TOKEN", token.expose())
        .env("SECRETBOX_SOCKET", b.scratch.socket())
        .output()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        out.status.code(),
        Some(exit::FORBIDDEN),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only its own user"));
    let stats = b.broker.stats();
    assert_eq!(stats.redeemed, 0);
    assert!(stats.rejected_total() >= 1);
}

#[allow(dead_code)]
pub(crate) fn scratch_file(b: &InProcess, name: &str) -> PathBuf {
    b.scratch.path().join(name)
}

/// A socket served by a thread that answers every connection with `answer` (after reading
/// the request head), or never answers when it is `None`.
fn misbehaving_server(scratch: &Scratch, answer: Option<Vec<u8>>) -> PathBuf {
    use std::io::Read;
    let socket = scratch.path().join("odd.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            match &answer {
                Some(bytes) => {
                    let _ = stream.write_all(bytes);
                }
                // Keep it open, unanswered.
                None => held.push(stream),
            }
        }
    });
    socket
}

/// The hand-written client (src/client.rs) against servers that do not behave: it never
/// prints part of an answer, says what went wrong, and gives up at its timeout.
#[test]
fn secretbox_prints_nothing_from_a_server_that_misbehaves() {
    let scratch = Scratch::new();
    let cut_short = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\npart-of-a-secret".to_vec();
    let mut too_large = b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n".to_vec();
    too_large.extend(std::iter::repeat_n(b'x', 2_000_000));
    let cases: [(&str, Option<Vec<u8>>, i32, &str); 5] = [
        ("cut", Some(cut_short), exit::INTERNAL, "before the whole answer"),
        ("large", Some(too_large), exit::INTERNAL, "larger than"),
        ("garbage", Some(b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()), exit::INTERNAL, "malformed"),
        ("silent-close", Some(Vec::new()), exit::INTERNAL, "without answering"),
        ("never", None, exit::UNREACHABLE, "did not answer within 300ms"),
    ];
    for (name, answer, code, says) in cases {
        let dir = Scratch::new();
        let socket = misbehaving_server(&dir, answer);
        let out = secretbox(Some("tok"), &socket, &["s", "--timeout", "300ms"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: printed {:?}", out.stdout);
        assert!(stderr.contains(says), "{name}: {stderr}");
    }
    // A chunked answer is read whole (the daemon sends Content-Length, but HTTP allows it).
    let chunked =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsecr\r\n2\r\net\r\n0\r\n\r\n";
    let socket = misbehaving_server(&scratch, Some(chunked.to_vec()));
    let out = secretbox(Some("tok"), &socket, &["s"]);
    assert_eq!(out.status.code(), Some(exit::OK), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"secret\n");
}
