//! `backupnizza service systemd|launchd [--install]`: the service definition for this user,
//! this binary and this task file.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{config_path, print};
use crate::cli::ServiceCommand;
use crate::config::{self, Environment};
use crate::exit::Exit;
use crate::service;

pub fn run(command: &ServiceCommand, env: &Environment) -> anyhow::Result<()> {
    let (args, systemd) = match command {
        ServiceCommand::Systemd(args) => (args, true),
        ServiceCommand::Launchd(args) => (args, false),
    };
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

fn write(target: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(target, text).with_context(|| format!("cannot write {}", target.display()))
}
