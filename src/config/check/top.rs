//! The top level of the task file: the daemon's settings (socket, state directory, token
//! lifetime, time zone, logging, ...) with their defaults, and the `secrets:` section, where
//! each secret names exactly one source. Tasks are checked in [`super::tasks`]; once both
//! are done, [`super::cross`] checks the names they share.

use std::path::Path;
use std::time::Duration;

use super::walk::{Checker, join, valid_env_name};
use crate::config::tree::{Node, Pos, Value};
use crate::config::{
    Config, ControlGroup, DEFAULT_KILL_GRACE, DEFAULT_SECRET_COMMAND_TIMEOUT,
    DEFAULT_SHUTDOWN_GRACE, DEFAULT_TOKEN_TTL, Environment, LogFormat, LogLevel, LogSettings,
    MAX_SOCKET_PATH, SecretSpec, Source, Store, Zone,
};

const TOP_KEYS: &[&str] = &[
    "socket",
    "state_dir",
    "token_ttl",
    "timezone",
    "log",
    "strict_memory",
    "shutdown_grace",
    "kill_grace",
    "resume_settle",
    "pin_binaries",
    "notify",
    "metrics_textfile",
    "control_group",
    "secrets",
    "tasks",
];
const LOG_KEYS: &[&str] = &["level", "format"];
const SECRET_SOURCES: &[&str] = &["keyring", "command", "file", "env"];
const SECRET_KEYS: &[&str] = &["keyring", "command", "file", "env", "timeout", "allow_short"];
const KEYRING_KEYS: &[&str] = &["service", "account", "store"];

/// The key path of the file itself: top-level keys are their own paths.
const ROOT: &str = "";

impl Checker {
    #[expect(
        clippy::too_many_lines,
        reason = "the top-level keys, one after another, as the docs list them"
    )]
    pub(super) fn config(&mut self, root: &Node, path: &Path, env: &Environment) -> Option<Config> {
        if matches!(root.value, Value::Null) {
            self.error(
                ROOT,
                None,
                "the task file is empty: it needs at least a `tasks:` mapping (see backup.yaml.example)",
            );
            return None;
        }
        let top = self.fields(
            root,
            ROOT,
            "a mapping of settings (socket, secrets, tasks, ...)",
            Some(TOP_KEYS),
        )?;

        let socket = self.with_default(&top, ROOT, "socket", env.default_socket(), |c, n, p| {
            c.path_value(n, p, env)
        });
        if let Some(socket) = &socket {
            let len = socket.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                let pos = top.get("socket").and_then(|n| n.pos);
                self.error(
                    "socket",
                    pos,
                    format!(
                        "socket path {} is {len} bytes; Unix socket paths must be at most {MAX_SOCKET_PATH} bytes on this platform (104 on macOS, 108 on Linux, with the terminating NUL): choose a shorter `socket:`",
                        socket.display()
                    ),
                );
            }
        }
        // Not `with_default`: without XDG_STATE_HOME or HOME there is no default, and its
        // absence is the problem.
        let state_dir = if let Some(node) = top.get("state_dir") {
            self.path_value(node, "state_dir", env)
        } else {
            let dir = env.default_state_dir();
            if dir.is_none() {
                self.error(
                    "state_dir",
                    None,
                    "no default: neither XDG_STATE_HOME nor HOME is set; set `state_dir:`",
                );
            }
            dir
        };
        let token_ttl =
            self.with_default(&top, ROOT, "token_ttl", DEFAULT_TOKEN_TTL, Checker::token_ttl);
        let timezone = self.with_default(&top, ROOT, "timezone", Zone::system(), Checker::zone);
        let log = self.with_default(
            &top,
            ROOT,
            "log",
            LogSettings { level: LogLevel::Info, format: LogFormat::Text },
            Checker::log,
        );
        let strict_memory = self.with_default(&top, ROOT, "strict_memory", false, Checker::boolean);
        let pin_binaries = self.with_default(&top, ROOT, "pin_binaries", false, Checker::boolean);
        let notify = self.optional(&top, ROOT, "notify", Checker::notify);
        let metrics_textfile =
            self.optional(&top, ROOT, "metrics_textfile", |c, n, p| c.path_value(n, p, env));
        let control_group = self.optional(&top, ROOT, "control_group", Checker::control_group);
        let shutdown_grace = self.with_default(
            &top,
            ROOT,
            "shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
            Checker::duration,
        );
        let kill_grace = self.with_default(
            &top,
            ROOT,
            "kill_grace",
            DEFAULT_KILL_GRACE,
            Checker::positive_duration,
        );
        let task_kill_grace = kill_grace.unwrap_or(DEFAULT_KILL_GRACE);
        let resume_settle = self.with_default(
            &top,
            ROOT,
            "resume_settle",
            crate::config::DEFAULT_RESUME_SETTLE,
            Checker::duration,
        );
        let task_resume_settle = resume_settle.unwrap_or(crate::config::DEFAULT_RESUME_SETTLE);

        let secrets = self.with_default(&top, ROOT, "secrets", Vec::new(), Checker::secrets);
        let default_zone = timezone.clone().unwrap_or_else(Zone::system);
        // Not `with_default` either: a file without tasks has nothing to run.
        let tasks = if let Some(node) = top.get("tasks") {
            self.tasks(
                node,
                &super::tasks::TaskDefaults {
                    zone: &default_zone,
                    env,
                    state_dir: state_dir.as_deref(),
                    kill_grace: task_kill_grace,
                    resume_settle: task_resume_settle,
                },
            )
        } else {
            self.error(
                "tasks",
                top.pos,
                "no `tasks:` mapping: define at least one task (see backup.yaml.example)",
            );
            None
        };
        self.cross_check(root);
        Some(Config {
            path: path.to_path_buf(),
            socket: socket?,
            state_dir: state_dir?,
            token_ttl: token_ttl?,
            timezone: timezone?,
            log: log?,
            strict_memory: strict_memory?,
            shutdown_grace: shutdown_grace?,
            kill_grace: kill_grace?,
            resume_settle: resume_settle?,
            pin_binaries: pin_binaries?,
            notify: notify?,
            metrics_textfile: metrics_textfile?,
            control_group: control_group?,
            secrets: secrets?,
            tasks: tasks?,
        })
    }

    fn token_ttl(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let ttl = self.positive_duration(node, path)?;
        if ttl > Duration::from_secs(3600) {
            self.error(
                path,
                node.pos,
                "must be at most 1h: a token is only needed while the task starts up",
            );
            return None;
        }
        Some(ttl)
    }

    /// A group that exists here, looked up now so a typo is a task-file error rather than
    /// a daemon that cannot give its socket to the group.
    fn control_group(&mut self, node: &Node, path: &str) -> Option<ControlGroup> {
        let name = self.non_empty_string(node, path)?;
        match nix::unistd::Group::from_name(&name) {
            Ok(Some(group)) => Some(ControlGroup { name, gid: group.gid.as_raw() }),
            Ok(None) => {
                self.error(
                    path,
                    node.pos,
                    format!(
                        "no group named {name:?} on this system: create it (`groupadd {name}`) or name an existing group"
                    ),
                );
                None
            }
            Err(e) => {
                self.error(path, node.pos, format!("cannot look up group {name:?}: {e}"));
                None
            }
        }
    }

    fn log(&mut self, node: &Node, path: &str) -> Option<LogSettings> {
        let fields = self.fields(
            node,
            path,
            "a mapping such as {level: info, format: text}",
            Some(LOG_KEYS),
        )?;
        let level = self.with_default(&fields, path, "level", LogLevel::Info, |c, n, p| {
            c.choice(
                n,
                p,
                &[
                    ("error", LogLevel::Error),
                    ("warn", LogLevel::Warn),
                    ("info", LogLevel::Info),
                    ("debug", LogLevel::Debug),
                    ("trace", LogLevel::Trace),
                ],
            )
        });
        let format = self.with_default(&fields, path, "format", LogFormat::Text, |c, n, p| {
            c.choice(n, p, &[("text", LogFormat::Text), ("json", LogFormat::Json)])
        });
        Some(LogSettings { level: level?, format: format? })
    }

    fn secrets(&mut self, node: &Node, path: &str) -> Option<Vec<SecretSpec>> {
        let fields = self.fields(node, path, "a mapping of secret names to sources", None)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (name, key, value) in &fields.entries {
            let path = join(path, name);
            if !self.name_key(name, key, &path, "secret") {
                ok = false;
                continue;
            }
            let allow_short = match value.value {
                Value::Map(_) => self.fields(value, &path, "", None).and_then(|f| {
                    self.with_default(&f, &path, "allow_short", false, Checker::boolean)
                }),
                _ => Some(false),
            };
            match (self.secret(value, &path, key.pos), allow_short) {
                (Some(source), Some(allow_short)) => {
                    out.push(SecretSpec { name: name.clone(), source, pos: key.pos, allow_short });
                }
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    #[expect(clippy::too_many_lines, reason = "each source kind's keys, one after another")]
    fn secret(&mut self, node: &Node, path: &str, key_pos: Option<Pos>) -> Option<Source> {
        let fields = self.fields(
            node,
            path,
            "a mapping with one source: keyring, command, file or env",
            Some(SECRET_KEYS),
        )?;
        let sources: Vec<&str> = SECRET_SOURCES.iter().copied().filter(|s| fields.has(s)).collect();
        let pos = fields.pos.or(key_pos);
        match sources.as_slice() {
            [] => {
                self.error(
                    path,
                    pos,
                    "no source: give exactly one of keyring, command, file or env",
                );
                return None;
            }
            [_] => {}
            many => {
                self.error(
                    path,
                    pos,
                    format!(
                        "{} sources ({}): give exactly one of keyring, command, file or env",
                        many.len(),
                        many.join(", ")
                    ),
                );
                return None;
            }
        }
        if let Some(n) = fields.get("timeout")
            && sources[0] != "command"
        {
            self.error(
                &join(path, "timeout"),
                n.pos,
                "`timeout` applies only to a `command` source",
            );
            return None;
        }
        let timeout = self.with_default(
            &fields,
            path,
            "timeout",
            DEFAULT_SECRET_COMMAND_TIMEOUT,
            Checker::positive_duration,
        )?;
        let value = fields.get(sources[0])?;
        let vpath = join(path, sources[0]);
        match sources[0] {
            "keyring" => {
                let kf = self.fields(
                    value,
                    &vpath,
                    "a mapping {service: ..., account: ...}",
                    Some(KEYRING_KEYS),
                )?;
                let service = self
                    .required(&kf, &vpath, "service", value.pos)
                    .and_then(|n| self.non_empty_string(n, &join(&vpath, "service")));
                let account = self
                    .required(&kf, &vpath, "account", value.pos)
                    .and_then(|n| self.non_empty_string(n, &join(&vpath, "account")));
                let store = self.with_default(&kf, &vpath, "store", Store::Auto, |c, n, p| {
                    c.choice(
                        n,
                        p,
                        &[
                            ("auto", Store::Auto),
                            ("secret-service", Store::SecretService),
                            ("keyutils", Store::Keyutils),
                            ("keychain", Store::Keychain),
                        ],
                    )
                });
                if let Some(store) = store {
                    let here = if cfg!(target_os = "macos") { "macOS" } else { "this platform" };
                    let unavailable = match store {
                        Store::Keychain => !cfg!(target_os = "macos"),
                        Store::SecretService | Store::Keyutils => !cfg!(target_os = "linux"),
                        Store::Auto => false,
                    };
                    if unavailable {
                        self.warn(
                            &join(&vpath, "store"),
                            kf.get("store").and_then(|n| n.pos),
                            format!(
                                "store {:?} is not available on {here}; loading this secret here will fail",
                                store.as_str()
                            ),
                        );
                    }
                }
                Some(Source::Keyring { service: service?, account: account?, store: store? })
            }
            "command" => Some(Source::Command { argv: self.argv(value, &vpath)?, timeout }),
            "file" => {
                let raw = self.non_empty_string(value, &vpath)?;
                // `$CREDENTIALS_DIRECTORY` is only set when systemd starts the daemon, so the
                // path is expanded when the secret is loaded, not here.
                Some(Source::File { path: raw })
            }
            "env" => {
                let var = self.non_empty_string(value, &vpath)?;
                if !valid_env_name(&var) {
                    self.error(
                        &vpath,
                        value.pos,
                        format!("invalid environment variable name {var:?}"),
                    );
                    return None;
                }
                Some(Source::Env { var })
            }
            _ => unreachable!("sources are drawn from SECRET_SOURCES"),
        }
    }
}
