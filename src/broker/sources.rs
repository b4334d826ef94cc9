//! Secret sources (keychain, command, file, environment): each secret is read once, at
//! start, into the store ([`super::secrets`]).
//!
//! Each secret is read once, at start. Bytes go from the source straight onto locked pages
//! ([`LockedBytes`]: a `file:` or `command:` is read into them, an `env:` variable copied
//! from the environment block before it is wiped), then into the store, wrapped in
//! `secrecy::SecretBox` (no `Debug`, `Clone` or `Serialize`). Only a keychain hands its value
//! over in an ordinary buffer of its own; that buffer is wiped (`Zeroizing`) as soon as it is
//! copied. So after start every copy of a value is on locked pages (proven by
//! `tests/integration/memory.rs`). Errors name the secret and the source, say what went wrong
//! and how to fix it, and never contain a value.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

use super::keyring;
use super::secrets::Secrets;
use crate::config::{Config, Environment, SecretSpec, Source};
use crate::sys::hardening::Weakness;
use crate::sys::locked::LockedBytes;

/// Largest secret we accept from any source; a password or key is far smaller, and a bound
/// keeps a misbehaving command from filling memory.
pub(crate) const MAX_SECRET_LEN: usize = 64 * 1024;
/// The shortest value a secret may have without `allow_short: true`. A task's output is
/// masked with its own secrets, and anyone who can shape that output (a file name a backup
/// lists) learns from a `***` that they guessed a value: 12 bytes put a guess out of reach
/// of that test (a 4-digit PIN is 10,000 file names).
pub(crate) const MIN_SECRET_LEN: usize = 12;

/// A secret that could not be loaded: which, from where, what went wrong, how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("cannot load secret {name:?} from {source_desc}: {problem}{}", fix.as_ref().map(|f| format!("; {f}")).unwrap_or_default())]
pub(crate) struct SecretError {
    pub name: String,
    pub source_desc: String,
    pub problem: String,
    pub fix: Option<String>,
}

impl SecretError {
    fn new(spec: &SecretSpec, problem: impl Into<String>, fix: Option<String>) -> SecretError {
        SecretError {
            name: spec.name.clone(),
            source_desc: describe(&spec.source),
            problem: problem.into(),
            fix,
        }
    }
}

/// A human description of a source, without anything secret (sources name where a secret
/// lives, never the secret).
pub(crate) fn describe(source: &Source) -> String {
    match source {
        Source::Keyring { service, account, store } => {
            format!(
                "keyring (service {service:?}, account {account:?}, store {})",
                keyring::store_name(keyring::resolve(*store))
            )
        }
        Source::Command { argv, .. } => format!("command {:?}", argv[0]),
        Source::File { path } => format!("file {path:?}"),
        Source::Env { var } => format!("environment variable {var}"),
    }
}

/// The `env` sources' values, taken from the environment onto locked pages.
pub(crate) type EnvValues = HashMap<String, LockedBytes>;

/// Reads the `env` sources onto locked pages and wipes them from the daemon's environment
/// (only while the process is single-threaded: see [`crate::sys::env::take_vars`]). Returns
/// the values and the protections that could not be applied.
pub(crate) fn take_env_sources(
    config: &Config,
) -> Result<(EnvValues, Vec<Weakness>), crate::sys::env::TakeError> {
    let vars = config.secrets.iter().filter_map(|spec| match &spec.source {
        Source::Env { var } => Some((spec.name.as_str(), var.as_str())),
        _ => None,
    });
    let mut out = HashMap::new();
    let mut weak = Vec::new();
    for (name, (value, more)) in crate::sys::env::take_vars(vars)? {
        weak.extend(more);
        out.insert(name.to_string(), value);
    }
    Ok((out, weak))
}

/// A loaded value and what to log about it.
pub(crate) struct Loaded {
    /// On locked pages, read there straight from the source.
    pub value: LockedBytes,
    /// Lines the source printed on stderr (command sources), to be logged once the value is
    /// known to the redactor. Wiped when dropped: a helper may echo its value there.
    pub stderr: Vec<Zeroizing<String>>,
    /// Protections the locked pages read into lacked.
    pub weak: Vec<Weakness>,
}

/// Loads one secret. `env_values` holds what [`take_env_sources`] took.
pub(crate) async fn load_one(
    spec: &SecretSpec,
    env: &Environment,
    env_values: &mut EnvValues,
) -> Result<Loaded, SecretError> {
    let loaded = match &spec.source {
        Source::Keyring { service, account, store } => {
            let (service, account, store) =
                (service.clone(), account.clone(), keyring::resolve(*store));
            let got = tokio::task::spawn_blocking(move || keyring::get(store, &service, &account))
                .await
                .map_err(|e| {
                    SecretError::new(spec, format!("the keychain lookup panicked: {e}"), None)
                })?;
            // The keychain's own buffer, wiped once copied onto locked pages.
            let got = got.map_err(|(problem, fix)| SecretError::new(spec, problem, fix))?;
            let (value, weak) = LockedBytes::new(&got).map_err(|e| no_memory(spec, &e))?;
            drop(got);
            Loaded { value, stderr: Vec::new(), weak }
        }
        Source::Command { argv, timeout } => run_command(spec, argv, *timeout).await?,
        Source::File { path } => {
            let expanded = env.expand_path(path).map_err(|e| {
                SecretError::new(
                    spec,
                    e,
                    Some(
                        "run the daemon where the variable is set (e.g. under systemd for $CREDENTIALS_DIRECTORY)"
                            .into(),
                    ),
                )
            })?;
            let got =
                tokio::task::spawn_blocking(move || read_private_file(expanded)).await.map_err(
                    |e| SecretError::new(spec, format!("reading the file panicked: {e}"), None),
                )?;
            let (value, weak) =
                got.map_err(|(problem, fix)| SecretError::new(spec, problem, fix))?;
            Loaded { value, stderr: Vec::new(), weak }
        }
        Source::Env { var } => match env_values.remove(&spec.name) {
            Some(value) => Loaded { value, stderr: Vec::new(), weak: Vec::new() },
            None => {
                return Err(SecretError::new(
                    spec,
                    format!("{var} is not set in the daemon's environment"),
                    Some(format!(
                        "set {var} where the daemon is started (e.g. Environment= in the service unit)"
                    )),
                ));
            }
        },
    };
    if loaded.value.as_bytes().is_empty() {
        return Err(SecretError::new(
            spec,
            "the secret is empty",
            Some("store a non-empty value".into()),
        ));
    }
    let len = loaded.value.as_bytes().len();
    if let Some((problem, fix)) = too_short(spec, len) {
        return Err(SecretError::new(spec, problem, Some(fix)));
    }
    if len > MAX_SECRET_LEN {
        return Err(SecretError::new(
            spec,
            format!("the secret is longer than {MAX_SECRET_LEN} bytes"),
            None,
        ));
    }
    Ok(loaded)
}

/// What is wrong with a value of `len` bytes for `spec`, and the fix, when it is shorter
/// than [`MIN_SECRET_LEN`] and the secret does not say `allow_short: true`. Start-up,
/// `secret check` and `secret set` all ask this.
pub(crate) fn too_short(spec: &SecretSpec, len: usize) -> Option<(String, String)> {
    (len < MIN_SECRET_LEN && !spec.allow_short).then(|| {
        (
            format!("the secret is {len} bytes long, shorter than {MIN_SECRET_LEN}"),
            format!(
                "store a longer value, or add `allow_short: true` to secrets.{} if it must be short (a short value can be guessed through the masking of a task's output: see docs/security.md)",
                spec.name
            ),
        )
    })
}

/// Strips one trailing newline (`\n` or `\r\n`), as restic does for its password file.
pub(crate) fn trim_newline(value: &mut Zeroizing<Vec<u8>>) {
    let keep = value.len() - newline_len(value);
    value.truncate(keep);
}

/// [`trim_newline`] for a value on locked pages.
fn trim_newline_locked(value: &mut LockedBytes) {
    let keep = value.as_bytes().len() - newline_len(value.as_bytes());
    value.truncate(keep);
}

/// The length of the one trailing newline (`\n` or `\r\n`) a value ends with, if any.
fn newline_len(value: &[u8]) -> usize {
    match value {
        [.., b'\r', b'\n'] => 2,
        [.., b'\n'] => 1,
        _ => 0,
    }
}

fn no_memory(spec: &SecretSpec, e: &std::io::Error) -> SecretError {
    SecretError::new(spec, format!("cannot map memory for it: {e}"), None)
}

/// Reads `reader` to its end onto locked pages, growing them (locked page to locked page)
/// as needed, but never past `MAX_SECRET_LEN + 1` bytes: one more than the limit tells the
/// caller it was exceeded.
fn read_locked(reader: &mut impl std::io::Read) -> std::io::Result<(LockedBytes, Vec<Weakness>)> {
    let (mut buf, mut weak) = LockedBytes::with_capacity(1)?;
    loop {
        if !room(&mut buf, &mut weak)? {
            return Ok((buf, weak));
        }
        match reader.read(buf.spare_mut()) {
            Ok(0) => return Ok((buf, weak)),
            Ok(n) => buf.fill(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// [`read_locked`] for a child's pipe, into `buf`: what was read stays there if the read
/// is given up part-way.
async fn fill_locked(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut LockedBytes,
    weak: &mut Vec<Weakness>,
) -> std::io::Result<()> {
    loop {
        if !room(buf, weak)? {
            return Ok(());
        }
        match reader.read(buf.spare_mut()).await? {
            0 => return Ok(()),
            n => buf.fill(n),
        }
    }
}

/// Makes spare room in `buf` unless it already holds more than a secret may be.
fn room(buf: &mut LockedBytes, weak: &mut Vec<Weakness>) -> std::io::Result<bool> {
    if buf.as_bytes().len() > MAX_SECRET_LEN {
        return Ok(false);
    }
    if buf.spare_mut().is_empty() {
        weak.extend(buf.grow()?);
    }
    Ok(true)
}

/// How long a helper's output is still read once it has exited: what it printed is in the
/// pipe already, and a background child it left holding the pipe open is not waited for.
const READ_AFTER_EXIT: Duration = Duration::from_millis(500);

async fn run_command(
    spec: &SecretSpec,
    argv: &[String],
    timeout: Duration,
) -> Result<Loaded, SecretError> {
    // StrictModes, as for task programs (the daemon checked at start already; `secret check`
    // did not), and the very file checked is what runs: no second PATH lookup.
    let uid = nix::unistd::getuid().as_raw();
    let path = std::env::var_os("PATH");
    let program = crate::trust::check_source_program(&argv[0], path.as_deref(), uid)
        .map_err(|e| SecretError::new(spec, e, None))?
        .unwrap_or_else(|| PathBuf::from(&argv[0]));
    let mut child = spawn_helper(spec, &program, argv)?;
    let pid = child.id();
    // Until it has exited, the helper and all it started go if the daemon gives up on it
    // (its timeout, or a stop during start-up that drops this future).
    let mut group = GroupOnDrop(pid);
    let mut output = HelperOutput::new().map_err(|e| no_memory(spec, &e))?;
    let status = match tokio::time::timeout(timeout, output.read(&mut child)).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            return Err(SecretError::new(spec, format!("reading its output failed: {e}"), None));
        }
        Err(_) => {
            drop(group);
            return Err(SecretError::new(
                spec,
                format!("it did not finish within {}", crate::time::Human(timeout)),
                Some(
                    "check that it does not wait for input (stdin is /dev/null), or raise the secret's `timeout`"
                        .into(),
                ),
            ));
        }
    };
    // It exited by itself: what it left running (an agent it started) is its business.
    group.0 = None;
    output.judge(spec, status)
}

/// Kills a helper's process group when dropped, unless disarmed (`None`).
struct GroupOnDrop(Option<u32>);

impl Drop for GroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Starts a `command:` source's helper: no stdin, its stdout and stderr piped, in a group of
/// its own (so a timeout kills what it started too), killed if the daemon gives up on it.
fn spawn_helper(
    spec: &SecretSpec,
    program: &std::path::Path,
    argv: &[String],
) -> Result<tokio::process::Child, SecretError> {
    tokio::process::Command::new(program)
        .arg0(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            let fix = (e.kind() == std::io::ErrorKind::NotFound).then(|| {
                format!(
                    "install {:?} or give its full path (the daemon's PATH is searched)",
                    argv[0]
                )
            });
            SecretError::new(spec, format!("cannot start it: {e}"), fix)
        })
}

/// What a helper printed: its stdout straight onto locked pages, its stderr (bounded)
/// in a buffer reserved whole, so that reading never reallocates and leaves a copy behind
/// (a helper may echo its value on stderr).
struct HelperOutput {
    value: LockedBytes,
    weak: Vec<Weakness>,
    err: Zeroizing<Vec<u8>>,
}

impl HelperOutput {
    fn new() -> std::io::Result<HelperOutput> {
        let (value, weak) = LockedBytes::with_capacity(1)?;
        Ok(HelperOutput { value, weak, err: Zeroizing::new(Vec::with_capacity(STDERR_LIMIT + 64)) })
    }

    /// Reads the helper's output until both pipes end, or until [`READ_AFTER_EXIT`] after
    /// the helper itself exited; returns how it exited.
    async fn read(
        &mut self,
        child: &mut tokio::process::Child,
    ) -> std::io::Result<std::process::ExitStatus> {
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let HelperOutput { value, weak, err } = self;
        let reads = async {
            let out = fill_locked(&mut stdout, value, weak);
            let read_err = async {
                let mut limited = (&mut stderr).take(STDERR_LIMIT as u64);
                limited.read_to_end(err).await.map(drop)
            };
            let (out, err) = tokio::join!(out, read_err);
            out.and(err)
        };
        tokio::pin!(reads);
        let exited = tokio::select! {
            read = &mut reads => {
                read?;
                None
            }
            status = child.wait() => Some(status?),
        };
        match exited {
            None => child.wait().await,
            Some(status) => {
                if let Ok(read) = tokio::time::timeout(READ_AFTER_EXIT, &mut reads).await {
                    read?;
                }
                Ok(status)
            }
        }
    }

    /// The secret, or why the helper failed (its last stderr line, masked with what it
    /// printed on stdout, a value the redactor will never know).
    fn judge(
        self,
        spec: &SecretSpec,
        status: std::process::ExitStatus,
    ) -> Result<Loaded, SecretError> {
        let HelperOutput { mut value, weak, err } = self;
        let stderr_lines: Vec<Zeroizing<String>> = String::from_utf8_lossy(&err)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Zeroizing::new(l.to_string()))
            .collect();
        if !status.success() {
            // The command's stderr usually says why ("gpg: decryption failed", "not signed
            // in"). It may also echo the value: masked, raw and escaped, or left out.
            trim_newline_locked(&mut value);
            let hint = stderr_lines
                .last()
                .and_then(|l| {
                    let mut own = Secrets::empty();
                    own.insert(&spec.name, value.as_bytes()).ok()?;
                    Some(format!(
                        " (its last stderr line: {})",
                        crate::redact::redact_with(l, Some(&own))
                    ))
                })
                .unwrap_or_default();
            return Err(SecretError::new(
                spec,
                format!("it exited with {status}{hint}"),
                Some("run the command by hand as the daemon's user to see what it needs".into()),
            ));
        }
        if value.as_bytes().len() > MAX_SECRET_LEN {
            return Err(SecretError::new(
                spec,
                format!("it printed more than {MAX_SECRET_LEN} bytes"),
                None,
            ));
        }
        trim_newline_locked(&mut value);
        Ok(Loaded { value, stderr: stderr_lines, weak })
    }
}

/// Most of a `command:` source's stderr that is read (and logged).
const STDERR_LIMIT: usize = 64 * 1024;

fn read_private_file(
    path: PathBuf,
) -> Result<(LockedBytes, Vec<Weakness>), (String, Option<String>)> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display().to_string();
    let mut file =
        std::fs::File::open(&path).map_err(|e| (format!("cannot open {shown}: {e}"), None))?;
    let meta = file.metadata().map_err(|e| (format!("cannot stat {shown}: {e}"), None))?;
    if !meta.is_file() {
        return Err((format!("{shown} is not a regular file"), None));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err((
            format!("{shown} has mode {mode:03o}, so other users can read it"),
            Some(format!("run `chmod 600 {shown}`")),
        ));
    }
    let uid = nix::unistd::getuid().as_raw();
    if meta.uid() != uid && meta.uid() != 0 {
        return Err((
            format!("{shown} is owned by uid {}, not by the daemon's user (uid {uid})", meta.uid()),
            Some(format!("run `chown {uid} {shown}`")),
        ));
    }
    let (mut value, weak) =
        read_locked(&mut file).map_err(|e| (format!("cannot read {shown}: {e}"), None))?;
    trim_newline_locked(&mut value);
    Ok((value, weak))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_exactly_one_newline() {
        for (input, want) in
            [(&b"pw\n"[..], &b"pw"[..]), (b"pw\r\n", b"pw"), (b"pw\n\n", b"pw\n"), (b"pw", b"pw")]
        {
            let mut v = Zeroizing::new(input.to_vec());
            trim_newline(&mut v);
            assert_eq!(&v[..], want);
        }
    }

    #[test]
    fn reading_onto_locked_pages_grows_them_and_stops_past_the_limit() {
        for len in [0, 1, 4095, 4096, 4097, 10_000, MAX_SECRET_LEN] {
            let data = vec![b'a'; len];
            let (got, _) = read_locked(&mut &data[..]).unwrap();
            assert_eq!(got.as_bytes(), &data[..], "{len}");
        }
        let data = vec![b'a'; MAX_SECRET_LEN * 2];
        let (got, _) = read_locked(&mut &data[..]).unwrap();
        assert!(got.as_bytes().len() > MAX_SECRET_LEN, "the excess is noticed");
        assert!(got.as_bytes().len() <= 2 * MAX_SECRET_LEN);
        for (input, want) in [(&b"pw\r\n"[..], &b"pw"[..]), (b"pw\n\n", b"pw\n"), (b"pw", b"pw")] {
            let (mut v, _) = LockedBytes::new(input).unwrap();
            trim_newline_locked(&mut v);
            assert_eq!(v.as_bytes(), want);
        }
    }
}
