//! Secret sources (keychain, command, file, environment) and the locked, in-memory store the
//! daemon serves from.
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
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretBox};
use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

use crate::config::{Config, Environment, SecretSpec, Source, Store};
use crate::sys::hardening::Weakness;
use crate::sys::locked::LockedBytes;

/// Largest secret we accept from any source; a password or key is far smaller, and a bound
/// keeps a misbehaving command from filling memory.
pub const MAX_SECRET_LEN: usize = 64 * 1024;

/// The loaded secrets, immutable once loaded.
pub struct Secrets {
    by_name: HashMap<String, SecretBox<LockedBytes>>,
    /// The escaped forms of each value and of each of its lines (see
    /// [`crate::redact::escaped_forms`]), concatenated on locked pages of their own: they are
    /// copies of the secret. A value with no special characters has none.
    forms: HashMap<String, SecretBox<LockedBytes>>,
    /// What the redactor looks for, longest first (so a secret containing another is masked
    /// whole): each value, each line of a multi-line value (PEM keys, JSON credentials), and
    /// the escaped forms of both, as (name, where, start, end) ranges into the locked bytes.
    needles: Vec<(String, In, usize, usize)>,
}

/// Which locked bytes a needle's range points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum In {
    Value,
    Forms,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("Secrets").field("names", &names).finish_non_exhaustive()
    }
}

impl crate::redact::Needles for Secrets {
    fn needles(&self) -> Box<dyn Iterator<Item = &[u8]> + '_> {
        Box::new(Secrets::needles(self))
    }
}

impl Secrets {
    pub fn empty() -> Secrets {
        Secrets { by_name: HashMap::new(), forms: HashMap::new(), needles: Vec::new() }
    }

    pub fn get(&self, name: &str) -> Option<&SecretBox<LockedBytes>> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// What the redactor masks, longest first: every value, and every line (8 bytes or more)
    /// of multi-line values, raw and in the escaped forms a log format or a task's JSON
    /// would give them. Callers must not log or copy what they get.
    pub fn needles(&self) -> impl Iterator<Item = &[u8]> {
        self.needles.iter().filter_map(|(name, source, start, end)| {
            let bytes = match source {
                In::Value => self.by_name.get(name)?,
                In::Forms => self.forms.get(name)?,
            };
            bytes.expose_secret().as_bytes().get(*start..*end)
        })
    }

    /// Adds a value, copying it (and its escaped forms) onto locked pages.
    pub fn insert(&mut self, name: &str, value: &[u8]) -> std::io::Result<Vec<Weakness>> {
        let (locked, mut weak) = LockedBytes::new(value)?;
        self.by_name.insert(name.to_string(), SecretBox::new(Box::new(locked)));
        self.forms.remove(name);
        self.needles.retain(|(n, ..)| n != name);
        // The whole value, then each line long enough not to mask ordinary words.
        let mut pieces = vec![(0, value.len())];
        if value.contains(&b'\n') {
            let mut start = 0;
            for line in value.split(|b| *b == b'\n') {
                let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
                if trimmed.len() >= 8 && trimmed.len() < value.len() {
                    pieces.push((start, start + trimmed.len()));
                }
                start += line.len() + 1;
            }
        }
        let mut forms: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
        let mut form_ranges = Vec::new();
        for &(start, end) in &pieces {
            self.needles.push((name.to_string(), In::Value, start, end));
            // A value that is not UTF-8 is never escaped by a formatter as text.
            let Ok(text) = std::str::from_utf8(&value[start..end]) else { continue };
            for form in crate::redact::escaped_forms(text) {
                if form.as_bytes() == text.as_bytes() {
                    continue;
                }
                // Grown by hand, never by a reallocation that would leave an unzeroed copy.
                if forms.capacity() - forms.len() < form.len() {
                    let mut bigger = Zeroizing::new(Vec::with_capacity(
                        (forms.len() + form.len()).max(2 * forms.capacity()),
                    ));
                    bigger.extend_from_slice(&forms);
                    forms = bigger;
                }
                form_ranges.push((forms.len(), forms.len() + form.len()));
                forms.extend_from_slice(form.as_bytes());
            }
        }
        if !forms.is_empty() {
            let (locked, more) = LockedBytes::new(&forms)?;
            weak.extend(more);
            self.forms.insert(name.to_string(), SecretBox::new(Box::new(locked)));
            for (start, end) in form_ranges {
                self.needles.push((name.to_string(), In::Forms, start, end));
            }
        }
        self.needles.sort_by_key(|(_, _, start, end)| std::cmp::Reverse(end - start));
        Ok(weak)
    }
}

/// A secret that could not be loaded: which, from where, what went wrong, how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("cannot load secret {name:?} from {source_desc}: {problem}{}", fix.as_ref().map(|f| format!("; {f}")).unwrap_or_default())]
pub struct SecretError {
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
pub fn describe(source: &Source) -> String {
    match source {
        Source::Keyring { service, account, store } => {
            format!(
                "keyring (service {service:?}, account {account:?}, store {})",
                store_name(resolve_store(*store))
            )
        }
        Source::Command { argv, .. } => format!("command {:?}", argv[0]),
        Source::File { path } => format!("file {path:?}"),
        Source::Env { var } => format!("environment variable {var}"),
    }
}

/// `auto` resolved for this platform.
pub fn resolve_store(store: Store) -> Store {
    match store {
        Store::Auto if cfg!(target_os = "macos") => Store::Keychain,
        Store::Auto => Store::SecretService,
        other => other,
    }
}

fn store_name(store: Store) -> &'static str {
    match store {
        Store::SecretService => "Secret Service",
        Store::Keyutils => "kernel keyutils",
        Store::Keychain => "macOS Keychain",
        Store::Auto => "auto",
    }
}

/// The `env` sources' values, taken from the environment onto locked pages.
pub type EnvValues = HashMap<String, LockedBytes>;

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
pub struct Loaded {
    /// On locked pages, read there straight from the source.
    pub value: LockedBytes,
    /// Lines the source printed on stderr (command sources), to be logged once the value is
    /// known to the redactor. Wiped when dropped: a helper may echo its value there.
    pub stderr: Vec<Zeroizing<String>>,
    /// Protections the locked pages read into lacked.
    pub weak: Vec<Weakness>,
}

/// Loads one secret. `env_values` holds what [`take_env_sources`] took.
pub async fn load_one(
    spec: &SecretSpec,
    env: &Environment,
    env_values: &mut EnvValues,
) -> Result<Loaded, SecretError> {
    let loaded = match &spec.source {
        Source::Keyring { service, account, store } => {
            let (service, account, store) =
                (service.clone(), account.clone(), resolve_store(*store));
            let got = tokio::task::spawn_blocking(move || keyring_get(store, &service, &account))
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
    if loaded.value.as_bytes().len() > MAX_SECRET_LEN {
        return Err(SecretError::new(
            spec,
            format!("the secret is longer than {MAX_SECRET_LEN} bytes"),
            None,
        ));
    }
    Ok(loaded)
}

/// Strips one trailing newline (`\n` or `\r\n`), as restic does for its password file.
pub fn trim_newline(value: &mut Zeroizing<Vec<u8>>) {
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

/// [`read_locked`] for a child's pipe.
async fn read_locked_async(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<(LockedBytes, Vec<Weakness>)> {
    let (mut buf, mut weak) = LockedBytes::with_capacity(1)?;
    loop {
        if !room(&mut buf, &mut weak)? {
            return Ok((buf, weak));
        }
        match reader.read(buf.spare_mut()).await? {
            0 => return Ok((buf, weak)),
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
    let mut child = tokio::process::Command::new(&program)
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
        })?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let work = async {
        // Reserved whole, so that reading never reallocates (and leaves a copy behind): a
        // helper may echo its value on stderr.
        let mut err = Zeroizing::new(Vec::with_capacity(STDERR_LIMIT + 64));
        let read_err = async {
            let mut limited = (&mut stderr).take(STDERR_LIMIT as u64);
            limited.read_to_end(&mut err).await
        };
        let (out, r2) = tokio::join!(read_locked_async(&mut stdout), read_err);
        let out = out?;
        r2?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((out, err, status))
    };
    let ((mut value, weak), err, status) = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            return Err(SecretError::new(spec, format!("reading its output failed: {e}"), None));
        }
        Err(_) => {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
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
    let stderr_lines: Vec<Zeroizing<String>> = String::from_utf8_lossy(&err)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Zeroizing::new(l.to_string()))
        .collect();
    if !status.success() {
        // The command's stderr usually says why ("gpg: decryption failed", "not signed in").
        // It may also echo what it printed on stdout, a value the redactor will never know:
        // masked here with that value, raw and escaped, or left out if that cannot be done.
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

/// Most of a `command:` source's stderr that is read (and logged).
const STDERR_LIMIT: usize = 64 * 1024;

type SourceResult = Result<Zeroizing<Vec<u8>>, (String, Option<String>)>;

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

#[cfg(target_os = "linux")]
fn keyring_store(
    store: Store,
) -> Result<std::sync::Arc<keyring_core::CredentialStore>, (String, Option<String>)> {
    match store {
        Store::SecretService | Store::Auto => zbus_secret_service_keyring_store::Store::new()
            .map(|s| s as std::sync::Arc<keyring_core::CredentialStore>)
            .map_err(|e| keyring_problem(store, e)),
        Store::Keyutils => linux_keyutils_keyring_store::Store::new()
            .map(|s| s as std::sync::Arc<keyring_core::CredentialStore>)
            .map_err(|e| keyring_problem(store, e)),
        Store::Keychain => Err((
            "the macOS Keychain is not available on Linux".into(),
            Some("use store: secret-service or keyutils, or a command/file source".into()),
        )),
    }
}

#[cfg(target_os = "macos")]
fn keyring_store(
    store: Store,
) -> Result<std::sync::Arc<keyring_core::CredentialStore>, (String, Option<String>)> {
    match store {
        Store::Keychain | Store::Auto => apple_native_keyring_store::keychain::Store::new()
            .map(|s| s as std::sync::Arc<keyring_core::CredentialStore>)
            .map_err(|e| keyring_problem(store, e)),
        Store::SecretService | Store::Keyutils => Err((
            format!("the {} store is only available on Linux", store_name(store)),
            Some("use store: keychain (or auto), or a command/file source".into()),
        )),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn keyring_store(
    store: Store,
) -> Result<std::sync::Arc<keyring_core::CredentialStore>, (String, Option<String>)> {
    Err((format!("the {} store is not available on this platform", store_name(store)), None))
}

/// Reads a keychain entry (blocking: call from `spawn_blocking`).
pub fn keyring_get(store: Store, service: &str, account: &str) -> SourceResult {
    let entry = keyring_store(store)?
        .build(service, account, None)
        .map_err(|e| keyring_problem(store, e))?;
    match entry.get_secret() {
        Ok(bytes) => Ok(Zeroizing::new(bytes)),
        Err(keyring_core::Error::NoEntry) => Err((
            format!(
                "no entry for service {service:?} and account {account:?} in the {}",
                store_name(store)
            ),
            Some("store it with `backupnizza secret set NAME`".into()),
        )),
        Err(e) => Err(keyring_problem(store, e)),
    }
}

/// Writes a keychain entry (blocking: call from `spawn_blocking`).
pub fn keyring_set(
    store: Store,
    service: &str,
    account: &str,
    value: &[u8],
) -> Result<(), (String, Option<String>)> {
    let entry = keyring_store(store)?
        .build(service, account, None)
        .map_err(|e| keyring_problem(store, e))?;
    entry.set_secret(value).map_err(|e| keyring_problem(store, e))
}

/// Turns a keyring error into what went wrong and how to fix it.
fn keyring_problem(store: Store, e: keyring_core::Error) -> (String, Option<String>) {
    use keyring_core::Error as E;
    let headless =
        "or use a `command` or `file` source on headless servers (see docs/operations.md)";
    match (&e, store) {
        (E::NoStorageAccess(detail), Store::SecretService | Store::Auto) => (
            format!("the Secret Service collection is locked or refused access ({detail})"),
            Some(format!("unlock your keyring (log in to the desktop session), {headless}")),
        ),
        (E::PlatformFailure(detail), Store::SecretService | Store::Auto) => (
            format!("cannot reach the Secret Service over D-Bus ({detail})"),
            Some(format!(
                "start the daemon inside your login session so DBUS_SESSION_BUS_ADDRESS is set and a keyring (gnome-keyring, KeePassXC) runs, {headless}"
            )),
        ),
        (E::NoStorageAccess(detail), Store::Keyutils) => (
            format!("the kernel keyring refused access ({detail})"),
            Some("run the daemon in a login session, or start it under `keyctl session -`".into()),
        ),
        (E::NoStorageAccess(detail), Store::Keychain) => (
            format!("the Keychain refused access ({detail})"),
            Some("unlock the login keychain and allow backupnizza when macOS asks".into()),
        ),
        (E::Ambiguous(entries), _) => (
            format!("{} entries match", entries.len()),
            Some("remove the duplicates (e.g. with seahorse, or `secret-tool clear`) and store it once".into()),
        ),
        // Never echo the bytes some variants carry.
        (E::BadEncoding(_) | E::BadDataFormat(..), _) => {
            ("the stored entry is not in the expected format".into(), None)
        }
        _ => (e.to_string(), None),
    }
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

    #[test]
    fn secrets_debug_shows_names_only() {
        let mut s = Secrets::empty();
        s.insert("repo", b"value-that-must-not-print").unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("repo") && !shown.contains("value-that"), "{shown}");
        assert_eq!(s.get("repo").unwrap().expose_secret().as_bytes(), b"value-that-must-not-print");
    }

    #[test]
    fn secrets_tokens_and_url_passwords_are_masked() {
        use crate::protocol::TOKEN_PREFIX;
        let mut s = Secrets::empty();
        s.insert("a", b"hunter2").unwrap();
        s.insert("b", "pässwörd".as_bytes()).unwrap();
        let line = format!(
            "pw=hunter2 again hunter2hunter2 ü pässwörd token {TOKEN_PREFIX}{} repo rest:https://u:p%40ss@host:8000/x s3://k@h/ sftp://me@h",
            "ab".repeat(32)
        );
        let got = crate::redact::redact_with(&line, Some(&s));
        assert!(
            !got.contains("hunter2") && !got.contains("pässwörd") && !got.contains("p%40ss"),
            "{got}"
        );
        assert!(got.contains("pw=*** again ****** ü ***"), "{got}");
        assert!(got.contains(&format!("{TOKEN_PREFIX}***")), "{got}");
        assert!(got.contains("rest:https://u:***@host:8000/x"), "{got}");
        assert!(got.contains("s3://k@h/") && got.contains("sftp://me@h"), "{got}");
    }

    #[test]
    fn longer_secrets_win_and_multi_line_secrets_are_masked_line_by_line() {
        let mut s = Secrets::empty();
        s.insert("short", b"abc").unwrap();
        s.insert("long", b"xabcyz").unwrap();
        s.insert("pem", b"-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n-----END KEY-----\n").unwrap();
        let got = crate::redact::redact_with("a xabcyz b abc c MIIEvQIBADANBgkq d", Some(&s));
        assert_eq!(got, "a *** b *** c *** d");
    }

    #[test]
    fn every_escaped_form_of_a_value_and_of_its_lines_is_masked() {
        let mut s = Secrets::empty();
        s.insert("awkward", crate::redact::tests::AWKWARD.as_bytes()).unwrap();
        let first = crate::redact::tests::AWKWARD.lines().next().unwrap();
        let mut shown = vec![crate::redact::tests::AWKWARD.to_string(), first.to_string()];
        for text in [crate::redact::tests::AWKWARD, first] {
            shown.extend(crate::redact::escaped_forms(text).iter().map(|f| f.to_string()));
        }
        for text in shown {
            let got = crate::redact::redact_with(&text, Some(&s));
            assert_eq!(
                got.replace('\n', ""),
                crate::redact::MASK.repeat(got.matches(crate::redact::MASK).count()),
                "{text:?}"
            );
            assert!(!got.contains("second-line") && !got.contains("quo'te"), "{got:?}");
        }
    }
}
