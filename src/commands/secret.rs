//! `backupnizza secret set NAME` (seed a keychain entry, or with `--credential` a systemd
//! credential for the system unit) and `backupnizza secret check` (load every secret as the
//! daemon would; print names and ok or the error, never a value).

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use zeroize::Zeroizing;

use super::{config_path, print};
use crate::broker::sources;
use crate::cli::{SecretCheckArgs, SecretSetArgs};
use crate::config::{self, Environment, Source};
use crate::exit::{Exit, FAILURE};

pub fn set(args: &SecretSetArgs, env: &Environment) -> anyhow::Result<()> {
    let _ = crate::sys::hardening::protect_process();
    // A credential is for the system unit, whose task file lives in /etc by default.
    let path = match (&args.config.config, args.credential) {
        (None, true) => PathBuf::from(crate::service::SYSTEM_CONFIG),
        _ => config_path(&args.config, env)?,
    };
    let config = config::load(&path, env).map_err(|e| Exit::usage(e.to_string()))?;
    let Some(spec) = config.secret(&args.name) else {
        let hint = config::did_you_mean(&args.name, config.secrets.iter().map(|s| s.name.as_str()))
            .map(|n| format!(" (did you mean {n:?}?)"))
            .unwrap_or_default();
        return Err(Exit::usage(format!(
            "no secret named {:?} in {}{hint}",
            args.name,
            path.display()
        ))
        .into());
    };
    if args.credential {
        return set_credential(args, spec);
    }
    let Source::Keyring { service, account, store } = &spec.source else {
        return Err(Exit::usage(format!(
            "secret {:?} has a `{}` source; `secret set` writes only `keyring` sources (store the value where that source reads it)",
            spec.name,
            spec.source.kind()
        ))
        .into());
    };
    let value = read_value(&spec.name)?;
    if value.is_empty() {
        return Err(Exit::usage("empty value: nothing stored").into());
    }
    refuse_short(spec, &value)?;
    let store = crate::broker::keyring::resolve(*store);
    crate::broker::keyring::set(store, service, account, &value).map_err(|(problem, fix)| {
        Exit {
            code: FAILURE,
            message: format!(
                "cannot store secret {:?} in {}: {problem}{}",
                spec.name,
                sources::describe(&spec.source),
                fix.map(|f| format!("; {f}")).unwrap_or_default()
            ),
        }
    })?;
    eprintln!("stored secret {:?} in {}", spec.name, sources::describe(&spec.source));
    Ok(())
}

/// `--credential`: the value goes through a pipe into `systemd-creds encrypt` (bound to the
/// host key, or the TPM where there is one) and only the ciphertext is written, mode 0600,
/// where the unit's `LoadCredentialEncrypted=NAME:DIR/NAME` reads it. Nothing else of the
/// value touches the disk or an argument list.
fn set_credential(args: &SecretSetArgs, spec: &config::SecretSpec) -> anyhow::Result<()> {
    let Some(name) = crate::service::credential_name(&spec.source) else {
        return Err(Exit::usage(format!(
            "secret {:?} has a `{}` source; --credential seeds only a `file: ${{CREDENTIALS_DIRECTORY}}/NAME` source, which systemd fills from LoadCredentialEncrypted= (write `{}: {{file: ${{CREDENTIALS_DIRECTORY}}/{}}}` under `secrets:`)",
            spec.name,
            spec.source.kind(),
            spec.name,
            spec.name
        ))
        .into());
    };
    // Found before the value is asked for: a missing tool should not cost a typed password.
    let Some(creds) = find_program("systemd-creds") else {
        return Err(Exit {
            code: FAILURE,
            message: "systemd-creds is not on PATH: --credential needs systemd 250 or later (Debian and Ubuntu: package systemd); without it, use another source such as `command:` or a keychain".into(),
        }
        .into());
    };
    let dir = args.credstore.clone().unwrap_or_else(|| PathBuf::from(crate::service::CREDSTORE));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| Exit {
        code: FAILURE,
        message: format!("cannot create credential store {}: {e}", dir.display()),
    })?;
    let value = read_value(&spec.name)?;
    if value.is_empty() {
        return Err(Exit::usage("empty value: nothing stored").into());
    }
    refuse_short(spec, &value)?;
    let mut child = std::process::Command::new(&creds)
        .arg("encrypt")
        .arg(format!("--name={name}"))
        .args(["-", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", creds.display()))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Written from another thread while this one collects the output: neither pipe can
    // fill up and stall the other.
    let output = std::thread::scope(|s| {
        s.spawn(|| {
            let _ = stdin.write_all(&value);
            drop(stdin);
        });
        child.wait_with_output()
    })
    .with_context(|| format!("cannot run {}", creds.display()))?;
    drop(value);
    if !output.status.success() || output.stdout.is_empty() {
        let why = String::from_utf8_lossy(&output.stderr);
        let fix = if nix::unistd::geteuid().is_root() {
            "see `systemd-creds setup`"
        } else {
            "run it as root: the host key /var/lib/systemd/credential.secret is root's"
        };
        return Err(Exit {
            code: FAILURE,
            message: format!(
                "systemd-creds encrypt failed for secret {:?} ({}): {}; {fix}",
                spec.name,
                output.status,
                why.trim()
            ),
        }
        .into());
    }
    let target = dir.join(name);
    write_new(&target, &output.stdout).map_err(|e| Exit {
        code: FAILURE,
        message: format!("cannot write credential {}: {e}", target.display()),
    })?;
    eprintln!(
        "stored secret {:?} encrypted in {} (the unit loads it with LoadCredentialEncrypted={name}:{})",
        spec.name,
        target.display(),
        target.display()
    );
    Ok(())
}

/// Replaces `target` with `bytes` atomically, mode 0600 from the start.
fn write_new(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        target.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The first executable `program` on PATH.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The value from stdin: prompted twice without echo on a terminal, else read whole (one
/// trailing newline removed).
/// A value shorter than the daemon accepts is not stored: it would only fail at start.
fn refuse_short(spec: &config::SecretSpec, value: &[u8]) -> anyhow::Result<()> {
    match sources::too_short(spec, value.len()) {
        Some((problem, fix)) => {
            Err(Exit::usage(format!("{problem}: nothing stored; {fix}")).into())
        }
        None => Ok(()),
    }
}

fn read_value(name: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut value = Zeroizing::new(Vec::new());
        stdin
            .lock()
            .take(sources::MAX_SECRET_LEN as u64 + 1)
            .read_to_end(&mut value)
            .context("cannot read stdin")?;
        if value.len() > sources::MAX_SECRET_LEN {
            return Err(Exit::usage(format!(
                "the value is longer than {} bytes",
                sources::MAX_SECRET_LEN
            ))
            .into());
        }
        sources::trim_newline(&mut value);
        return Ok(value);
    }
    let first = prompt(&format!("Value for secret {name:?}: "))?;
    let second = prompt("Again: ")?;
    if *first != *second {
        return Err(Exit::usage("the two values differ; nothing stored").into());
    }
    Ok(first)
}

fn prompt(text: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let saved = tcgetattr(&stdin).context("cannot read the terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("cannot turn off echo")?;
    let mut line = Zeroizing::new(String::new());
    let read = stdin.read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    read.context("cannot read the value")?;
    let trimmed = line.trim_end_matches(['\n', '\r']);
    Ok(Zeroizing::new(trimmed.as_bytes().to_vec()))
}

pub fn check(args: &SecretCheckArgs, env: &Environment) -> anyhow::Result<()> {
    let _ = crate::sys::hardening::protect_process();
    let path = config_path(&args.config, env)?;
    let config = config::load(&path, env).map_err(|e| Exit::usage(e.to_string()))?;
    // `env` sources are read without removing them: this is a one-shot check.
    let mut env_values: sources::EnvValues = HashMap::new();
    for s in &config.secrets {
        if let Source::Env { var } = &s.source
            && let Some(v) = std::env::var_os(var)
        {
            let v = Zeroizing::new(v.into_encoded_bytes());
            let (locked, _) =
                crate::sys::locked::LockedBytes::new(&v).context("cannot allocate memory")?;
            env_values.insert(s.name.clone(), locked);
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let width = config.secrets.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut failed = 0;
    for spec in &config.secrets {
        // One line per secret as it is loaded: a slow keychain shows where it is.
        let line = match runtime.block_on(sources::load_one(spec, env, &mut env_values)) {
            Ok(_) => format!("{:width$}  ok     {}", spec.name, sources::describe(&spec.source)),
            Err(e) => {
                failed += 1;
                format!("{:width$}  error  {e}", spec.name)
            }
        };
        print(|out| writeln!(out, "{line}"))?;
    }
    if failed > 0 {
        return Err(Exit {
            code: FAILURE,
            message: format!("{failed} of {} secrets cannot be loaded", config.secrets.len()),
        }
        .into());
    }
    Ok(())
}
