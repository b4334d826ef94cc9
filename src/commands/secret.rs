//! `backupnizza secret set NAME` (seed a keychain entry) and `backupnizza secret check`
//! (load every secret as the daemon would; print names and ok or the error, never a value).

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};

use anyhow::Context;
use zeroize::Zeroizing;

use super::{config_path, print};
use crate::broker::secrets;
use crate::cli::{SecretCheckArgs, SecretSetArgs};
use crate::config::{self, Environment, Source};
use crate::exit::{Exit, FAILURE};

pub fn set(args: &SecretSetArgs, env: &Environment) -> anyhow::Result<()> {
    let _ = crate::hardening::protect_process();
    let path = config_path(&args.config, env)?;
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
    let store = secrets::resolve_store(*store);
    secrets::keyring_set(store, service, account, &value).map_err(|(problem, fix)| Exit {
        code: FAILURE,
        message: format!(
            "cannot store secret {:?} in {}: {problem}{}",
            spec.name,
            secrets::describe(&spec.source),
            fix.map(|f| format!("; {f}")).unwrap_or_default()
        ),
    })?;
    eprintln!("stored secret {:?} in {}", spec.name, secrets::describe(&spec.source));
    Ok(())
}

/// The value from stdin: prompted twice without echo on a terminal, else read whole (one
/// trailing newline removed).
fn read_value(name: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut value = Zeroizing::new(Vec::new());
        stdin
            .lock()
            .take(secrets::MAX_SECRET_LEN as u64 + 1)
            .read_to_end(&mut value)
            .context("cannot read stdin")?;
        if value.len() > secrets::MAX_SECRET_LEN {
            return Err(Exit::usage(format!(
                "the value is longer than {} bytes",
                secrets::MAX_SECRET_LEN
            ))
            .into());
        }
        secrets::trim_newline(&mut value);
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
    let _ = crate::hardening::protect_process();
    let path = config_path(&args.config, env)?;
    let config = config::load(&path, env).map_err(|e| Exit::usage(e.to_string()))?;
    // `env` sources are read without removing them: this is a one-shot check.
    let mut env_values: secrets::EnvValues = HashMap::new();
    for s in &config.secrets {
        if let Source::Env { var } = &s.source
            && let Some(v) = std::env::var_os(var)
        {
            let v = Zeroizing::new(v.into_encoded_bytes());
            let (locked, _) =
                crate::hardening::LockedBytes::new(&v).context("cannot allocate memory")?;
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
        let line = match runtime.block_on(secrets::load_one(spec, env, &mut env_values)) {
            Ok(_) => format!("{:width$}  ok     {}", spec.name, secrets::describe(&spec.source)),
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
