//! The catalogue of bad requests: each is answered with a 4xx or a closed connection, never a
//! crash or a stuck worker, and the server still serves a legitimate redemption afterwards.
//! And outsiders that stole a live token (same uid, or another one): refused alike whatever
//! the token's state, without changing it, and without the log telling them anything.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use backupnizza::broker::Limits;

use crate::broker::InProcess;
use crate::harness::canary;

/// Sends raw bytes and returns the status code of the first response, or `None` if the
/// server closed the connection without one.
fn raw(socket: &std::path::Path, bytes: &[u8]) -> Option<u16> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may close before reading everything; a failed write is an answer too.
    let _ = stream.write_all(bytes);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[test]
fn bad_requests_get_a_4xx_or_a_closed_connection() {
    let limits = Limits {
        header_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let b =
        InProcess::start_with(&[("repo", canary().as_bytes())], Duration::from_secs(60), limits);
    let socket = b.scratch.socket();
    let big_header = format!(
        "GET /v1/version HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let big_body = format!(
        "POST /v1/secrets/repo HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{}",
        "b".repeat(100_000)
    );
    let chunked = format!(
        "POST /v1/secrets/repo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{}",
        "1000\r\n".to_string()
            + &"c".repeat(4096)
            + "\r\n1000\r\n"
            + &"c".repeat(4096)
            + "\r\n0\r\n\r\n"
    );
    let long_name = format!(
        "POST /v1/secrets/{} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        "n".repeat(5000)
    );
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("malformed request line", b"GARBAGE\r\n\r\n".to_vec(), &[400]),
        ("binary noise", vec![0u8, 159, 146, 150, 13, 10, 13, 10], &[400]),
        ("oversized headers", big_header.into_bytes(), &[431, 400]),
        ("oversized body (content-length)", big_body.into_bytes(), &[413]),
        ("oversized body (chunked)", chunked.into_bytes(), &[413]),
        ("unknown route", b"GET /v2/secrets HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), &[404]),
        ("unknown method", b"DELETE /v1/version HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), &[405]),
        ("wrong method on secrets", b"GET /v1/secrets/repo HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), &[405]),
        // The test process is not inside any task: whatever its token, it is refused.
        ("no token", b"POST /v1/secrets/repo HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_vec(), &[403]),
        (
            "garbage token",
            b"POST /v1/secrets/repo HTTP/1.1\r\nhost: x\r\nauthorization: Bearer \xff\xfe\r\ncontent-length: 0\r\n\r\n"
                .to_vec(),
            &[403, 400],
        ),
        (
            "non-UTF-8 name (escaped)",
            b"POST /v1/secrets/%FF%FE HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "non-UTF-8 name (raw)",
            b"POST /v1/secrets/\xff\xfe HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_vec(),
            &[400],
        ),
        ("overlong name", long_name.into_bytes(), &[400]),
        (
            "path traversal",
            b"POST /v1/secrets/../status HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_vec(),
            &[400],
        ),
        ("control route without a daemon", b"GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), &[503]),
        ("truncated request head", b"POST /v1/secrets/repo HTTP/1.1\r\nhost: x\r\ncontent-le".to_vec(), &[]),
        (
            "truncated body",
            b"POST /v1/secrets/repo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc".to_vec(),
            &[408, 400],
        ),
        ("pipelined garbage", b"GET /v1/version HTTP/1.1\r\nhost: x\r\n\r\nGARBAGE\r\n\r\n".to_vec(), &[200]),
        ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), &[400, 505]),
    ];
    for (name, bytes, allowed) in &cases {
        let status = raw(&socket, bytes);
        match status {
            // A closed connection is an acceptable answer to anything malformed.
            None => {
                assert!(
                    allowed.is_empty() || allowed.iter().all(|s| *s >= 400),
                    "{name}: closed without an answer"
                );
            }
            Some(code) => {
                assert!(allowed.contains(&code), "{name}: got {code}, expected one of {allowed:?}");
            }
        }
    }
    // Pipelined garbage: the valid request is answered, then the connection closes.
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET /v1/version HTTP/1.1\r\nhost: x\r\n\r\nGARBAGE\r\n\r\n").unwrap();
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // A client that sends nothing is disconnected after the header timeout; none of the
    // above left a worker stuck: a real redemption still works.
    let mut idle = UnixStream::connect(&socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(idle.read(&mut buf).unwrap_or(0), 0, "an idle connection was not closed");
    let (token, handle) = b.mint(&["repo"], 1);
    let out = b.spawn(&token, handle, "secretbox get repo >/dev/null").wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A raw redemption from this process (outside every task): status and body.
fn redeem_raw(socket: &std::path::Path, token: &str, name: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request = format!(
        "POST /v1/secrets/{name} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of `name` in a NUL-separated environment (`/proc/PID/environ`) or an `env` dump.
fn env_value(env: &str, name: &str) -> String {
    let prefix = format!("{name}=");
    env.split(['\0', '\n']).find_map(|kv| kv.strip_prefix(&prefix)).unwrap_or_default().to_string()
}

/// A same-uid process outside the task reads a live token from the task's
/// `/proc/PID/environ` (it may) and redeems it: a live secret, a used one, a name out of
/// scope (a canary equal to a secret's value) and a garbage token all get the same
/// `forbidden`, exit 10; so does another uid; the log tells nobody whether the chosen name
/// or executable path equals a secret; and the task then redeems that same token as if
/// nothing had happened.
#[test]
fn outsiders_with_a_stolen_token_hear_forbidden_whatever_its_state() {
    use backupnizza::protocol::exit;
    use std::os::unix::fs::PermissionsExt;

    use crate::harness::{SECRETBOX, Scratch, TRIGGERED, sha256_hex, trigger, write_private};

    let scratch = Scratch::new();
    let (repo, cloud, spare) = (canary(), canary(), canary());
    for (file, value) in [("repo.pw", &repo), ("cloud.pw", &cloud), ("spare.pw", &spare)] {
        write_private(&scratch.path().join(file), value.as_bytes());
    }
    let step = "secretbox get cloud >/dev/null; echo $$ > task.pid; while [ ! -e go ]; do sleep 0.05; done; secretbox get --no-newline repo | sha256sum > legit.sum; secretbox get cloud >/dev/null 2>&1; echo $? > again.rc";
    let config = scratch.config(&format!(
        "token_ttl: 10m\nsecrets:\n  repo: {{file: {0}/repo.pw}}\n  cloud: {{file: {0}/cloud.pw}}\n  spare: {{file: {0}/spare.pw}}\ntasks:\n  t:\n    {TRIGGERED}\n    secrets: [repo, cloud]\n    hooks:\n      before: {{command: [sh, -c, 'env > before.env; secretbox get cloud >/dev/null'], secrets: [cloud]}}\n    command: [sh, -c, '{step}']\n",
        scratch.path().display()
    ));
    let daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "t", false).expect_code(0);
    let read = |name: &str| std::fs::read_to_string(scratch.path().join(name)).unwrap_or_default();
    daemon.wait_for("the task's pid", |_| read("task.pid").ends_with('\n'));
    let pid = read("task.pid").trim().to_string();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let live = env_value(&String::from_utf8_lossy(&environ), "SECRETBOX_TOKEN");
    assert!(live.starts_with("bnz1_"), "no token in the task's environment");
    // The before hook's token: its one secret used, its process gone.
    let dead = env_value(&read("before.env"), "SECRETBOX_TOKEN");
    assert!(dead.starts_with("bnz1_"), "{}", read("before.env"));
    let garbage = format!("bnz1_{}", "0".repeat(64));
    // Live and unused, live but used, out of scope (a secret's value as the name), dead, none.
    let cases = [
        (live.as_str(), "repo"),
        (live.as_str(), "cloud"),
        (live.as_str(), spare.as_str()),
        (dead.as_str(), "cloud"),
        (garbage.as_str(), "repo"),
    ];

    let mut bodies = Vec::new();
    for (token, name) in cases {
        let (status, body) = redeem_raw(&scratch.socket(), token, name);
        assert_eq!(status, 403, "{name}: {body}");
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "the answers differ: {bodies:#?}");

    // The real client, from a directory named after a secret's value, in a fresh shell each
    // time (so the failure count of this test process does not turn into `slow_down`).
    let dir = scratch.path().join(&spare);
    std::fs::create_dir(&dir).unwrap();
    let client = dir.join("secretbox");
    crate::harness::copy_program(SECRETBOX, &client);
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run_as = |uid: Option<u32>, token: &str, name: &str| {
        let mut cmd = std::process::Command::new("sh");
        let setpriv = uid.map_or(String::new(), |u| {
            format!("setpriv --reuid={u} --regid={u} --clear-groups -- ")
        });
        cmd.arg("-c")
            .arg(format!("{setpriv}\"$0\" get \"$1\""))
            .arg(&client)
            .arg(name)
            .env("SECRETBOX_TOKEN", token)
            .env("SECRETBOX_SOCKET", scratch.socket());
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).replace(name, "NAME");
        assert!(out.stdout.is_empty(), "{name}: printed something");
        (out.status.code(), stderr)
    };
    let mut uids = vec![None];
    if nix::unistd::getuid().is_root() {
        // Only the peer check stands between another user and the socket.
        for (path, mode) in [
            (scratch.path().to_path_buf(), 0o755),
            (scratch.path().join("run"), 0o777),
            (scratch.socket(), 0o777),
            (dir.clone(), 0o755),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        uids.push(Some(65534));
    } else {
        eprintln!("SKIPPED (part): needs root to run a client as another user (CI runs as root)");
    }
    for uid in uids {
        let answers: Vec<_> = cases.iter().map(|(t, n)| run_as(uid, t, n)).collect();
        for (code, stderr) in &answers {
            assert_eq!(*code, Some(exit::FORBIDDEN), "uid {uid:?}: {stderr}");
        }
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "uid {uid:?}: {answers:#?}");
    }

    // The task redeems the very token the outsiders held: repo still unused, cloud still used.
    std::fs::write(scratch.path().join("go"), "").unwrap();
    daemon.wait_for("the task's own redemptions", |_| read("again.rc").ends_with('\n'));
    assert_eq!(
        read("legit.sum").split_whitespace().next(),
        Some(sha256_hex(repo.as_bytes()).as_str())
    );
    assert_eq!(read("again.rc").trim(), exit::USED.to_string());

    // The log shows refusals by digest: no `***` for the name or the path equal to `spare`,
    // and neither written out.
    let log = daemon.log_text();
    let refusals: Vec<&str> =
        log.lines().filter(|l| l.contains("refused a secret redemption")).collect();
    assert!(refusals.len() >= cases.len() * 2, "{log}");
    for line in &refusals {
        assert!(!line.contains("***"), "the redactor answered: {line}");
    }
    assert!(!log.contains(&spare), "a chosen string was logged as is\n{log}");
    let digest = format!("sha256:{}", &sha256_hex(spare.as_bytes())[..16]);
    assert!(log.contains(&digest), "{log}");
    assert!(!log.contains("reason=used") && !log.contains("reason=not_in_scope"), "{log}");
}
