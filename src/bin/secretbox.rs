//! `secretbox get NAME`: trades the one-time token in `SECRETBOX_TOKEN` for a secret over the
//! daemon's socket and prints it. On any failure it prints nothing on stdout and exits with
//! the code for the cause (see `secretbox --help` and docs/protocol.md).

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use zeroize::Zeroizing;

use backupnizza::cli::{GetArgs, Secretbox, SecretboxCommand};
use backupnizza::client::{Client, ClientError, ServerId};
use backupnizza::protocol::{self, exit};

fn main() {
    // The secret passes through this process too: no core dumps from the start, and no
    // same-user ptrace or /proc reads once the answer is in. Run from the daemon's sealed
    // image, the kernel made this process non-dumpable at exec already, and it proves what
    // it is with the image's key; run from disk, the daemon must read our /proc/PID/exe
    // until the answer is in, which a non-dumpable process denies to all but root.
    let _ = backupnizza::sys::hardening::disable_core_dumps();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = GetArgs::plain(&argv).unwrap_or_else(|| {
        let SecretboxCommand::Get(args) = Secretbox::parse_from(&argv).command;
        args
    });
    let code = match get(&args.name, args.socket, args.timeout, !args.no_newline) {
        Ok(()) => exit::OK,
        Err((code, message)) => {
            // Not `eprintln!`: a closed stderr must not turn the documented code into a panic.
            let _ = writeln!(std::io::stderr(), "secretbox: error: {message}");
            code
        }
    };
    std::process::exit(code);
}

fn get(
    name: &str,
    socket: Option<std::path::PathBuf>,
    timeout: Duration,
    newline: bool,
) -> Result<(), (i32, String)> {
    if !backupnizza::config::valid_name(name) {
        return Err((exit::USAGE, format!("{name:?} is not a valid secret name")));
    }
    let not_from_daemon = "secretbox works only in processes started by backupnizza (e.g. as RESTIC_PASSWORD_COMMAND in a task's env)";
    let token = match std::env::var("SECRETBOX_TOKEN") {
        Ok(t) if !t.is_empty() => Zeroizing::new(t),
        _ => {
            // A plain hook is run by the daemon but on purpose gets no token; say how to ask.
            let why = match std::env::var("BACKUPNIZZA_HOOK") {
                Ok(hook) if !hook.is_empty() => format!(
                    "the {hook} hook lists no secrets, so it got no token: write it as {{command: [...], secrets: [{name}]}}"
                ),
                _ => not_from_daemon.to_string(),
            };
            return Err((exit::NO_TOKEN, format!("SECRETBOX_TOKEN is not set: {why}")));
        }
    };
    let Some(socket) = socket
        .or_else(|| std::env::var_os("SECRETBOX_SOCKET").filter(|s| !s.is_empty()).map(Into::into))
    else {
        return Err((
            exit::NO_TOKEN,
            format!("SECRETBOX_SOCKET is not set and --socket was not given: {not_from_daemon}"),
        ));
    };
    // Set by the daemon for its task processes; absent when run by hand with --socket.
    let server =
        match std::env::var("SECRETBOX_DAEMON") {
            Ok(text) if !text.is_empty() => Some(ServerId::parse(&text).ok_or_else(|| {
                (exit::USAGE, format!("SECRETBOX_DAEMON={text:?} is not PID:START"))
            })?),
            _ => None,
        };
    let client = Client::new(&socket, timeout).expect_server(server).with_image_proof();
    let path = format!("{}{name}", protocol::ROUTE_SECRETS);
    let response = client.request(&hyper::Method::POST, &path, Some(&token), &[]);
    // The answer is in: from here on nobody of our user may read this process.
    let _ = backupnizza::sys::hardening::forbid_inspection();
    let response = response.map_err(|e| match e {
        ClientError::Unreachable { .. } | ClientError::Timeout { .. } => {
            (exit::UNREACHABLE, format!("{e} (is `backupnizza run` running?)"))
        }
        ClientError::NotTheDaemon { .. } => (exit::NOT_THE_DAEMON, e.to_string()),
        ClientError::Protocol(_) => (exit::INTERNAL, e.to_string()),
    })?;
    if !response.status.is_success() {
        let body = response.error();
        let code = body.as_ref().map_or("", |b| b.error.as_str());
        let exit_code = match protocol::rejection_from_code(code) {
            Some(r) => protocol::exit_code(r),
            None if code == protocol::errors::SLOW_DOWN => exit::SLOW_DOWN,
            None => exit::INTERNAL,
        };
        let message =
            body.map_or_else(|| format!("the daemon answered {}", response.status), |b| b.message);
        return Err((exit_code, format!("cannot get secret {name:?}: {message}")));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(response.body.len() + 1));
    out.extend_from_slice(&response.body);
    if newline {
        out.push(b'\n');
    }
    // One write, so a reader never sees part of the secret followed by an error.
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .map_err(|e| (exit::INTERNAL, format!("cannot write to stdout: {e}")))
}
