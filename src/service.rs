//! Service definitions for the current user: a systemd user unit and a launchd LaunchAgent,
//! generated for the installed binary and the chosen task file (`backupnizza service`).
//!
//! The systemd unit is `Type=notify` (the daemon sends `READY=1`, `STOPPING=1` and, with
//! `WatchdogSec=`, `WATCHDOG=1`), restarts on failure, and is sandboxed as far as a backup
//! tool allows: the file system is read-only except the state, cache and socket directories
//! and the local repositories the task file names, so restic can read what it backs up and
//! write only where it must. The LaunchAgent runs in the Aqua session, where the login
//! Keychain is unlocked and reachable.
//!
//! System mode (`--system`) puts a second uid between the desktop user and the backups: a
//! system unit (or LaunchDaemon) that runs the daemon as a dedicated, static account with
//! only `CAP_DAC_READ_SEARCH` (read everything, write nothing outside its own directories),
//! and its secrets from `LoadCredentialEncrypted=` through `$CREDENTIALS_DIRECTORY`. A static
//! account rather than `DynamicUser=yes`: local repositories, rclone's config and the
//! history keep one owner across restarts, `control_group` and the socket's peer checks see
//! a stable uid, and the desktop user can be given read access to what it owns.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::{Config, EnvValue, Environment, Source};

/// The unit's file name.
pub(crate) const SYSTEMD_UNIT: &str = "backupnizza.service";
/// The LaunchAgent's label (and file name, with `.plist`).
pub(crate) const LAUNCHD_LABEL: &str = "org.backupnizza.daemon";

/// The system unit's file name and directory.
pub(crate) const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";
/// The LaunchDaemons directory.
pub(crate) const LAUNCH_DAEMONS_DIR: &str = "/Library/LaunchDaemons";
/// The dedicated account of a system unit unless `--user` names another.
pub(crate) const SYSTEM_USER: &str = "backupnizza";
/// The same on macOS, where role accounts start with `_` (as `_www`, `_postgres`).
pub(crate) const MACOS_SYSTEM_USER: &str = "_backupnizza";
/// The task file of a system service unless `-c` names another.
pub(crate) const SYSTEM_CONFIG: &str = "/etc/backupnizza/backup.yaml";
/// Where `LoadCredentialEncrypted=` finds the ciphertexts, and `secret set --credential`
/// puts them (systemd's own search path for encrypted credentials).
pub(crate) const CREDSTORE: &str = "/etc/credstore.encrypted";
/// The account's home, state, cache and runtime directories on Linux (systemd's
/// `StateDirectory=`, `CacheDirectory=` and `RuntimeDirectory=` create them).
const SYSTEM_HOME: &str = "/var/lib/backupnizza";
const SYSTEM_CACHE: &str = "/var/cache/backupnizza";

/// The environment the daemon of the system unit runs with, so that the task file is
/// checked (and `~` expanded) as the daemon will see it, not as the administrator's shell
/// does: the socket in `/run/backupnizza/`, the history in `/var/lib/backupnizza/`, restic's
/// and rclone's caches in `/var/cache/backupnizza/`.
pub(crate) fn system_environment(user: &str) -> Environment {
    let mut vars = BTreeMap::new();
    for (k, v) in system_vars() {
        vars.insert(k.to_string(), v.to_string());
    }
    vars.insert("HOME".into(), SYSTEM_HOME.into());
    vars.insert("USER".into(), user.into());
    vars.insert("LOGNAME".into(), user.into());
    // The account may not exist yet; its uid only matters for the socket's `/tmp` fallback,
    // which `XDG_RUNTIME_DIR` rules out.
    let uid = nix::unistd::User::from_name(user).ok().flatten().map_or(0, |u| u.uid.as_raw());
    Environment { vars, uid }
}

/// The unit's `Environment=`. Tasks inherit the `XDG_` variables (and nothing else of the
/// daemon's), so `XDG_CACHE_HOME` is how restic (`$XDG_CACHE_HOME/restic`) and rclone find
/// the cache directory; `RESTIC_CACHE_DIR` here would never reach them.
fn system_vars() -> [(&'static str, &'static str); 3] {
    [("XDG_RUNTIME_DIR", "/run"), ("XDG_STATE_HOME", "/var/lib"), ("XDG_CACHE_HOME", SYSTEM_CACHE)]
}

/// The credential name of a `file:` source that reads systemd's credentials directory
/// (`${CREDENTIALS_DIRECTORY}/NAME` or `$CREDENTIALS_DIRECTORY/NAME`), which is how
/// `LoadCredentialEncrypted=` secrets reach the existing `file:` source.
pub(crate) fn credential_name(source: &Source) -> Option<&str> {
    let Source::File { path } = source else { return None };
    let name = path
        .strip_prefix("${CREDENTIALS_DIRECTORY}/")
        .or_else(|| path.strip_prefix("$CREDENTIALS_DIRECTORY/"))?;
    // systemd credential names: no `/`, not empty, not `.` or `..`.
    let valid = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    valid.then_some(name)
}

/// Local directories the tasks write to: `RESTIC_REPOSITORY` values that are plain
/// absolute paths (not `rest:`, `s3:`, `sftp:`...), which `ProtectSystem=strict` would
/// otherwise make read-only.
pub(crate) fn local_repositories(config: &Config) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for task in &config.tasks {
        let vars = task.env.iter().chain(task.steps.iter().flat_map(|s| s.env.iter()));
        for var in vars {
            if let (true, EnvValue::Text(value)) = (var.name == "RESTIC_REPOSITORY", &var.value) {
                let path = value.strip_prefix("local:").unwrap_or(value);
                if path.starts_with('/') && !out.iter().any(|p| p == Path::new(path)) {
                    out.push(PathBuf::from(path));
                }
            }
        }
    }
    out
}

/// systemd quotes arguments with spaces in double quotes; specifiers need `%%`.
fn systemd_quote(text: &str) -> String {
    let escaped = text.replace('%', "%%").replace('\\', "\\\\").replace('"', "\\\"");
    if escaped.contains(char::is_whitespace) { format!("\"{escaped}\"") } else { escaped }
}

/// The systemd user unit.
pub(crate) fn systemd_unit(exe: &Path, config: &Config) -> String {
    let mut rw: Vec<String> = vec!["-%h/.cache".into(), "-%h/.local/state".into(), "-%t".into()];
    // rclone rewrites its config when it refreshes OAuth tokens.
    rw.push("-%h/.config/rclone".into());
    for dir in written_dirs(config) {
        rw.push(format!("-{}", systemd_quote(&dir.display().to_string())));
    }
    let mut unit = String::new();
    let _ = write!(
        unit,
        "# Generated by `backupnizza service systemd`. Install it with
#   backupnizza service systemd --install
# then: systemctl --user daemon-reload && systemctl --user enable --now {SYSTEMD_UNIT}
# On a server without a login session, also run: loginctl enable-linger $USER

[Unit]
Description=backupnizza: scheduled backups with one-time secrets
# Documentation: `backupnizza man`, docs/operations.md

[Service]
Type=notify
ExecStart={exe} run -c {config}
{lifecycle}# Secrets for headless servers: systemd credentials, read as `file: ${{CREDENTIALS_DIRECTORY}}/NAME`.
#LoadCredentialEncrypted=restic-repo:%h/.config/backupnizza/restic-repo.cred

# Sandboxing that still lets restic read everything it backs up and write only where it must.
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ReadWritePaths={rw}
LockPersonality=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
SystemCallArchitectures=native

[Install]
WantedBy=default.target
",
        exe = systemd_quote(&exe.display().to_string()),
        config = systemd_quote(&config.path.display().to_string()),
        lifecycle = lifecycle(config),
        rw = rw.join(" "),
    );
    unit
}

/// The directories the task file makes the daemon write to: state, the socket's, the metrics
/// file's, local repositories (for `ReadWritePaths=`).
fn written_dirs(config: &Config) -> Vec<PathBuf> {
    let mut dirs = vec![
        config.state_dir.clone(),
        config.socket.parent().unwrap_or(Path::new("/")).to_path_buf(),
    ];
    dirs.extend(config.metrics_textfile.as_ref().and_then(|p| p.parent()).map(Path::to_path_buf));
    dirs.extend(local_repositories(config));
    dirs
}

/// The `[Service]` lines both units share: restarts, stopping and the watchdog.
fn lifecycle(config: &Config) -> String {
    let stop_timeout = config.shutdown_grace.as_secs() + 30;
    format!(
        "Restart=on-failure
RestartSec=30s
# The daemon stops its tasks itself (SIGINT, SIGTERM, then SIGKILL within shutdown_grace).
KillMode=mixed
# Lets the daemon give each run a cgroup of its own, so every process of a run is found.
Delegate=yes
TimeoutStopSec={stop_timeout}s
WatchdogSec=5min
UMask=0077
"
    )
}

/// The systemd system unit: the daemon as the dedicated account `user`.
#[expect(
    clippy::too_many_lines,
    reason = "the unit file, one directive after another, each with its reason"
)]
pub(crate) fn system_unit(exe: &Path, config: &Config, user: &str) -> String {
    // StateDirectory=, CacheDirectory= and RuntimeDirectory= are writable already; what the
    // task file puts elsewhere must be listed.
    let own = [SYSTEM_HOME, SYSTEM_CACHE, "/run/backupnizza"];
    let mut rw: Vec<String> = Vec::new();
    let mut writable = |dir: &Path| {
        if !own.iter().any(|o| dir.starts_with(o)) {
            let entry = format!("-{}", systemd_quote(&dir.display().to_string()));
            if !rw.contains(&entry) {
                rw.push(entry);
            }
        }
    };
    for dir in written_dirs(config) {
        writable(&dir);
    }
    let rw = if rw.is_empty() {
        "# ReadWritePaths= (none needed: the task file writes only to the directories above)"
            .to_string()
    } else {
        format!("ReadWritePaths={}", rw.join(" "))
    };
    let mut credentials = String::new();
    for spec in &config.secrets {
        if let Some(name) = credential_name(&spec.source) {
            let _ = writeln!(
                credentials,
                "LoadCredentialEncrypted={name}:{}",
                systemd_quote(&format!("{CREDSTORE}/{name}"))
            );
        }
    }
    if credentials.is_empty() {
        credentials = format!(
            "# (none: no secret reads `file: ${{CREDENTIALS_DIRECTORY}}/NAME`)\n#LoadCredentialEncrypted=NAME:{CREDSTORE}/NAME\n"
        );
    }
    let env: Vec<String> = system_vars().iter().map(|(k, v)| format!("{k}={v}")).collect();
    let user_q = systemd_quote(user);
    format!(
        "# Generated by `backupnizza service systemd --system`. It runs the daemon as the
# dedicated account {user}, which can read everything (CAP_DAC_READ_SEARCH) and write only
# its own directories, so processes of your desktop user cannot reach the backup secrets.
# Create the account once:
#   useradd --system --home-dir {SYSTEM_HOME} --shell /usr/sbin/nologin {user}
# Seed each secret below (the value is read from stdin, never from an argument):
#   backupnizza secret set NAME --credential -c {config_shown}
# Install and start it:
#   backupnizza service systemd --system --install -c {config_shown}
#   systemctl daemon-reload && systemctl enable --now {SYSTEMD_UNIT}
# The task file: root-owned, mode 0640, group {user}. Guide: docs/operations.md,
# \"Dedicated backup user (system mode)\".

[Unit]
Description=backupnizza: scheduled backups with one-time secrets (as {user})
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
User={user_q}
Group={user_q}
ExecStart={exe} run -c {config}
{lifecycle}# The socket (/run/backupnizza/secretbox.sock), the history ({SYSTEM_HOME}) and restic's and
# rclone's caches ({SYSTEM_CACHE}): the daemon's defaults under these variables.
Environment={env}
StateDirectory=backupnizza
StateDirectoryMode=0750
CacheDirectory=backupnizza
CacheDirectoryMode=0700
RuntimeDirectory=backupnizza
# The socket's directory: the daemon refuses one that other users can reach (systemd's
# default is 0755); with `control_group:` the daemon itself opens it to that group.
RuntimeDirectoryMode=0700

# Secrets: encrypted with `systemd-creds` (host key or TPM), decrypted by systemd into
# $CREDENTIALS_DIRECTORY, read there by the task file's `file: ${{CREDENTIALS_DIRECTORY}}/NAME`.
{credentials}
# Read everything it backs up, and nothing more: no other capability, ever.
AmbientCapabilities=CAP_DAC_READ_SEARCH
CapabilityBoundingSet=CAP_DAC_READ_SEARCH
# The capability reaches every file, and every process the daemon starts holds it: hide
# what would decrypt this unit's credentials offline, the host key and the credential
# stores. systemd decrypts the credentials above before it sets up this namespace, so the
# service never needs them. (`-`: a path that does not exist is passed over.)
InaccessiblePaths=-/var/lib/systemd/credential.secret -/etc/credstore -/etc/credstore.encrypted -/run/credstore -/run/credstore.encrypted
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ProtectHome=read-only
{rw}
PrivateDevices=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
LockPersonality=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
SystemCallArchitectures=native
# Not ProtectControlGroups=: the per-run cgroups are made under the delegated subtree.

[Install]
WantedBy=multi-user.target
",
        exe = systemd_quote(&exe.display().to_string()),
        config = systemd_quote(&config.path.display().to_string()),
        config_shown = config.path.display(),
        lifecycle = lifecycle(config),
        env = env.join(" "),
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// What the LaunchAgent and the LaunchDaemon share, escaped for the plist: the program
/// arguments, the exit timeout, and a `PATH` that finds `secretbox` beside the binary.
struct Plist {
    args: String,
    exit_timeout: u64,
    path: String,
}

impl Plist {
    fn of(exe: &Path, config: &Config) -> Plist {
        let args = [
            exe.display().to_string(),
            "run".into(),
            "-c".into(),
            config.path.display().to_string(),
        ];
        Plist {
            args: args
                .iter()
                .map(|a| format!("\n\t\t<string>{}</string>", xml_escape(a)))
                .collect(),
            exit_timeout: config.shutdown_grace.as_secs() + 30,
            path: xml_escape(&format!(
                "{}:/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                exe.parent().unwrap_or(Path::new("/usr/local/bin")).display()
            )),
        }
    }
}

/// The launchd LaunchAgent (a property list).
pub(crate) fn launchd_plist(exe: &Path, config: &Config, log: &Path) -> String {
    let Plist { args, exit_timeout, path } = Plist::of(exe, config);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Generated by `backupnizza service launchd`. Install it with
       backupnizza service launchd -i
     (short flags: XML comments may not contain two hyphens in a row), then: launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/{LAUNCHD_LABEL}.plist -->
<plist version="1.0">
<dict>
	<key>Label</key>
	<string>{LAUNCHD_LABEL}</string>
	<key>ProgramArguments</key>
	<array>{args}
	</array>
	<key>RunAtLoad</key>
	<true/>
	<key>KeepAlive</key>
	<dict>
		<key>SuccessfulExit</key>
		<false/>
	</dict>
	<key>LimitLoadToSessionType</key>
	<string>Aqua</string>
	<key>ProcessType</key>
	<string>Background</string>
	<key>ExitTimeOut</key>
	<integer>{exit_timeout}</integer>
	<key>EnvironmentVariables</key>
	<dict>
		<key>PATH</key>
		<string>{path}</string>
	</dict>
	<key>StandardErrorPath</key>
	<string>{log}</string>
</dict>
</plist>
"#,
        log = xml_escape(&log.display().to_string()),
    )
}

/// The launchd LaunchDaemon (a property list): the daemon as the dedicated account `user`,
/// started at boot, outside any login session.
pub(crate) fn launchd_daemon_plist(exe: &Path, config: &Config, user: &str, log: &Path) -> String {
    let Plist { args, exit_timeout, path } = Plist::of(exe, config);
    let target = format!("{LAUNCH_DAEMONS_DIR}/{LAUNCHD_LABEL}.plist");
    // No `--` anywhere in the comment: XML forbids it there, so the hints use short flags.
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Generated by `backupnizza service launchd -s`: the daemon as the dedicated role
     account {user_x}, which must exist (System Settings, or dscl / sysadminctl).
     Full-disk reads: macOS has no CAP_DAC_READ_SEARCH, so give {user_x} read access
     (ACLs, chmod +a) to what it backs up, or run it as root. And no uid reads the
     protected folders (Desktop, Documents, Mail, ...) without Full Disk Access: grant it
     to {exe_x} and to restic in System Settings, Privacy and Security, Full Disk Access.
     The log directory must be writable by {user_x}:
       sudo mkdir -p {logdir_x} and sudo chown {user_x} {logdir_x}
     Install it (as root) with
       sudo backupnizza service launchd -s -i -c {config_x}
     then: sudo launchctl bootstrap system {target_x}
     Not tested on macOS by the project's CI (Linux only); see docs/operations.md. -->
<plist version="1.0">
<dict>
	<key>Label</key>
	<string>{LAUNCHD_LABEL}</string>
	<key>UserName</key>
	<string>{user_x}</string>
	<key>GroupName</key>
	<string>{user_x}</string>
	<key>ProgramArguments</key>
	<array>{args}
	</array>
	<key>RunAtLoad</key>
	<true/>
	<key>KeepAlive</key>
	<dict>
		<key>SuccessfulExit</key>
		<false/>
	</dict>
	<key>ProcessType</key>
	<string>Background</string>
	<key>ExitTimeOut</key>
	<integer>{exit_timeout}</integer>
	<key>Umask</key>
	<integer>63</integer>
	<key>EnvironmentVariables</key>
	<dict>
		<key>PATH</key>
		<string>{path}</string>
	</dict>
	<key>StandardErrorPath</key>
	<string>{log_x}</string>
</dict>
</plist>
"#,
        user_x = xml_escape(user),
        exe_x = xml_escape(&comment_safe(&exe.display().to_string())),
        config_x = xml_escape(&comment_safe(&config.path.display().to_string())),
        target_x = xml_escape(&comment_safe(&target)),
        logdir_x = xml_escape(&comment_safe(
            &log.parent().unwrap_or(Path::new("/")).display().to_string()
        )),
        log_x = xml_escape(&log.display().to_string()),
    )
}

/// A path shown inside an XML comment, where `--` is illegal (and a trailing `-` would
/// join the `-->`): each hyphen run is broken with a space.
fn comment_safe(text: &str) -> String {
    text.replace("--", "- -").replace("--", "- -")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Source {
        Source::File { path: path.into() }
    }

    #[test]
    fn credential_names_come_from_files_directly_under_the_credentials_directory() {
        assert_eq!(
            credential_name(&file("${CREDENTIALS_DIRECTORY}/restic-repo")),
            Some("restic-repo")
        );
        assert_eq!(credential_name(&file("$CREDENTIALS_DIRECTORY/aws")), Some("aws"));
        // Not a credential: elsewhere, nested, empty, or a path trick.
        for path in [
            "/etc/restic-repo",
            "${CREDENTIALS_DIRECTORY}/a/b",
            "${CREDENTIALS_DIRECTORY}/",
            "${CREDENTIALS_DIRECTORY}/..",
            "${CREDENTIALS_DIRECTORYX}/a",
        ] {
            assert_eq!(credential_name(&file(path)), None, "{path}");
        }
        let env = Source::Env { var: "CREDENTIALS_DIRECTORY".into() };
        assert_eq!(credential_name(&env), None);
    }

    #[test]
    fn the_system_environment_puts_socket_state_and_cache_in_the_units_directories() {
        let env = system_environment("someone");
        assert_eq!(env.default_socket(), PathBuf::from("/run/backupnizza/secretbox.sock"));
        assert_eq!(env.default_state_dir(), Some(PathBuf::from("/var/lib/backupnizza")));
        assert_eq!(env.var("XDG_CACHE_HOME"), Some("/var/cache/backupnizza"));
        assert_eq!(env.var("HOME"), Some(SYSTEM_HOME));
    }

    #[test]
    fn xml_comments_never_hold_two_hyphens() {
        assert_eq!(comment_safe("/opt/a--b---c"), "/opt/a- -b- - -c");
        assert!(!comment_safe("----").contains("--"));
    }
}
