//! `backupnizza service systemd|launchd [--system [--user NAME]] [--install]`: the service
//! definition for this user (or, with `--system`, for a dedicated account), this binary and
//! this task file.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{config_path, print};
use crate::cli::{ServiceArgs, ServiceCommand};
use crate::config::{self, Environment};
use crate::exit::Exit;
use crate::service;

pub fn run(command: &ServiceCommand, env: &Environment) -> anyhow::Result<()> {
    let (args, systemd) = match command {
        ServiceCommand::Systemd(args) => (args, true),
        ServiceCommand::Launchd(args) => (args, false),
    };
    if args.system {
        return system(args, systemd);
    }
    let path = config_path(&args.config, env)?;
    // The unit must name the file by an absolute path: services do not start in your cwd.
    let path = std::fs::canonicalize(&path)
        .map_err(|e| Exit::usage(format!("cannot find task file {}: {e}", path.display())))?;
    let config = config::load(&path, env).map_err(|e| Exit::usage(e.to_string()))?;
    let exe = std::env::current_exe().context("cannot find the backupnizza binary")?;
    let home = env.var("HOME").map(PathBuf::from).ok_or_else(|| Exit::usage("HOME is not set"))?;
    let (text, target, enable) = if systemd {
        let dir = match env.var("XDG_CONFIG_HOME") {
            Some(d) => PathBuf::from(d),
            None => home.join(".config"),
        };
        (
            service::systemd_unit(&exe, &config),
            dir.join("systemd/user").join(service::SYSTEMD_UNIT),
            format!(
                "systemctl --user daemon-reload && systemctl --user enable --now {}",
                service::SYSTEMD_UNIT
            ),
        )
    } else {
        let log = home.join("Library/Logs/backupnizza.log");
        let target =
            home.join("Library/LaunchAgents").join(format!("{}.plist", service::LAUNCHD_LABEL));
        let enable = format!("launchctl bootstrap gui/$(id -u) {}", target.display());
        (service::launchd_plist(&exe, &config, &log), target, enable)
    };
    if !args.install {
        return print(|out| out.write_all(text.as_bytes()));
    }
    write(&target, &text)?;
    eprintln!("wrote {}", target.display());
    eprintln!("enable and start it with:\n  {enable}");
    if systemd {
        eprintln!(
            "on a server without a login session, keep it running after logout with:\n  loginctl enable-linger $USER"
        );
    }
    Ok(())
}

/// `--system`: the task file is checked under the environment the daemon of the system unit
/// will have (its home, socket and state directories), not the administrator's.
fn system(args: &ServiceArgs, systemd: bool) -> anyhow::Result<()> {
    let default_user = if systemd { service::SYSTEM_USER } else { service::MACOS_SYSTEM_USER };
    let user = args.user.as_deref().unwrap_or(default_user);
    if user.is_empty() || user.starts_with('-') || user.contains(['/', ':', ' ', '\n']) {
        return Err(Exit::usage(format!("{user:?} is not a valid account name for --user")).into());
    }
    let path = args.config.config.clone().unwrap_or_else(|| PathBuf::from(service::SYSTEM_CONFIG));
    let path = std::fs::canonicalize(&path).map_err(|e| {
        Exit::usage(format!(
            "cannot find task file {}: {e}; write it there (root-owned, mode 0640, group {user}) or name it with -c",
            path.display()
        ))
    })?;
    let env = service::system_environment(user);
    let config = config::load(&path, &env).map_err(|e| Exit::usage(e.to_string()))?;
    let exe = std::env::current_exe().context("cannot find the backupnizza binary")?;
    if let Some(problem) = replaceable_by_others(&exe) {
        eprintln!(
            "warning: {problem}, so a non-root user could replace the daemon the unit runs (and the secretbox beside it); install both root-owned, e.g. `sudo install -m 0755 backupnizza secretbox /usr/local/bin/`, and run that copy"
        );
    }
    let (text, target, enable) = if systemd {
        (
            service::system_unit(&exe, &config, user),
            Path::new(service::SYSTEM_UNIT_DIR).join(service::SYSTEMD_UNIT),
            format!("systemctl daemon-reload && systemctl enable --now {}", service::SYSTEMD_UNIT),
        )
    } else {
        let log = Path::new("/Library/Logs/backupnizza/backupnizza.log");
        let target = Path::new(service::LAUNCH_DAEMONS_DIR)
            .join(format!("{}.plist", service::LAUNCHD_LABEL));
        let enable = format!("launchctl bootstrap system {}", target.display());
        (service::launchd_daemon_plist(&exe, &config, user, log), target, enable)
    };
    if !args.install {
        return print(|out| out.write_all(text.as_bytes()));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(Exit::usage(format!(
            "--system --install writes {}, which only root may do: run it with sudo, or without --install to print the definition",
            target.display()
        ))
        .into());
    }
    write(&target, &text)?;
    eprintln!("wrote {}", target.display());
    if nix::unistd::User::from_name(user).ok().flatten().is_none() {
        eprintln!(
            "the account {user} does not exist yet; create it with:\n  {}",
            if systemd {
                format!(
                    "useradd --system --home-dir /var/lib/backupnizza --shell /usr/sbin/nologin {user}"
                )
            } else {
                format!("sysadminctl -addUser {user} -roleAccount (or System Settings)")
            }
        );
    }
    eprintln!("enable and start it with:\n  {enable}");
    Ok(())
}

/// Why someone other than root could swap `exe`: it, or a directory above it, is owned by
/// another uid or writable by group or others. System mode is only as strong as this.
fn replaceable_by_others(exe: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    for path in exe.ancestors() {
        let Ok(meta) = std::fs::metadata(path) else { continue };
        // A sticky, world-writable directory (/tmp) still lets others add files, not
        // replace ours; but nobody installs a system daemon there, so it counts too.
        if meta.uid() != 0 {
            return Some(format!("{} is owned by uid {}", path.display(), meta.uid()));
        }
        if meta.mode() & 0o022 != 0 {
            return Some(format!(
                "{} has mode {:03o} (writable by group or others)",
                path.display(),
                meta.mode() & 0o777
            ));
        }
    }
    None
}

fn write(target: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(target, text).with_context(|| format!("cannot write {}", target.display()))
}
