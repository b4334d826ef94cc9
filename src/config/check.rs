//! Turns the positioned YAML tree into a [`Config`], collecting every problem on the way.
//!
//! The walk never stops at the first problem: each key is checked on its own, a bad value
//! is reported and skipped, and cross-references (secrets named by tasks) are checked at the
//! end. Messages start with the key path and quote the offending value; unknown keys get a
//! did-you-mean.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use jiff::tz::TimeZone;

use super::tree::{self, Node, Pos, Value};
use super::*;
use crate::schedule::Schedule;

const TOP_KEYS: &[&str] = &[
    "socket",
    "state_dir",
    "token_ttl",
    "timezone",
    "log",
    "strict_memory",
    "shutdown_grace",
    "pin_binaries",
    "notify",
    "metrics_textfile",
    "secrets",
    "tasks",
];
const LOG_KEYS: &[&str] = &["level", "format"];
const SECRET_SOURCES: &[&str] = &["keyring", "command", "file", "env"];
const SECRET_KEYS: &[&str] = &["keyring", "command", "file", "env", "timeout"];
const KEYRING_KEYS: &[&str] = &["service", "account", "store"];
const TASK_KEYS: &[&str] = &[
    "schedule",
    "timezone",
    "command",
    "steps",
    "env",
    "secrets",
    "timeout",
    "on_overlap",
    "working_dir",
    "redeem_limit",
    "max_lateness",
    "random_delay",
    "warning_exit_codes",
    "sha256",
    "hooks",
    "notify",
];
const HOOK_KEYS: &[&str] = &["before", "on_success", "on_failure", "after", "timeout"];
const NOTIFY_KEYS: &[&str] = &["ping", "webhook", "send_logs", "timeout"];
const STEP_KEYS: &[&str] = &["command", "env", "continue_on_error", "sha256"];
/// Variables the daemon sets itself in every child.
const RESERVED_ENV: &[&str] = &["SECRETBOX_TOKEN", "SECRETBOX_SOCKET"];
/// Variables that hold a secret in plain text; writing one literally in the file defeats the
/// purpose of the daemon, so we warn and point at the alternative.
const PLAINTEXT_SECRET_ENV: &[(&str, &str)] = &[
    ("RESTIC_PASSWORD", "RESTIC_PASSWORD_COMMAND: secretbox get NAME"),
    ("RCLONE_CONFIG_PASS", "RCLONE_PASSWORD_COMMAND: secretbox get NAME"),
    ("AWS_SECRET_ACCESS_KEY", "{secret: NAME}"),
    ("B2_ACCOUNT_KEY", "{secret: NAME}"),
    ("AZURE_ACCOUNT_KEY", "{secret: NAME}"),
];

pub(super) fn check(text: &str, path: &Path, env: &Environment) -> Checked {
    let mut c = Checker { problems: Vec::new() };
    let config = match tree::parse(text) {
        Ok(root) => c.config(&root, path, env),
        Err(e) => {
            c.problems.push(Problem {
                severity: Severity::Error,
                pos: e.pos,
                path: String::new(),
                message: format!("YAML syntax: {}", e.message),
            });
            None
        }
    };
    // File order reads best; problems without a position go last, in the order found.
    c.problems.sort_by_key(|p| p.pos.map_or((usize::MAX, usize::MAX), |pos| (pos.line, pos.column)));
    let has_errors = c.problems.iter().any(|p| p.severity == Severity::Error);
    Checked { config: if has_errors { None } else { config }, problems: c.problems }
}

struct Checker {
    problems: Vec<Problem>,
}

/// A mapping's entries with string keys, in file order, duplicates already reported.
struct Fields<'n> {
    entries: Vec<(String, &'n Node, &'n Node)>,
    /// Position of the mapping (or of the key that introduced it), for "missing key" problems.
    pos: Option<Pos>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(k, _, _)| k == key).map(|(_, _, v)| *v)
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The closest candidate to `word`, if it is close enough to be what was meant.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(word, candidates).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default()
}

/// Names of tasks and secrets: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Checker {
    fn error(&mut self, path: &str, pos: Option<Pos>, message: impl Into<String>) {
        self.problems.push(Problem { severity: Severity::Error, pos, path: path.to_string(), message: message.into() });
    }

    fn warn(&mut self, path: &str, pos: Option<Pos>, message: impl Into<String>) {
        self.problems.push(Problem {
            severity: Severity::Warning,
            pos,
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn type_error(&mut self, path: &str, node: &Node, expected: &str) {
        let found = match node.scalar_text() {
            Some(text) if !matches!(node.value, Value::Null) => format!("{} ({text:?})", node.type_name()),
            _ => node.type_name().to_string(),
        };
        self.error(path, node.pos, format!("expected {expected}, found {found}"));
    }

    /// A mapping with string keys; reports non-string and duplicate keys, and keys not in
    /// `known` (when given) with a did-you-mean.
    fn fields<'n>(&mut self, node: &'n Node, path: &str, what: &str, known: Option<&[&str]>) -> Option<Fields<'n>> {
        let entries = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => {
                return Some(Fields { entries: Vec::new(), pos: node.pos });
            }
            _ => {
                self.type_error(path, node, what);
                return None;
            }
        };
        let mut out: Vec<(String, &Node, &Node)> = Vec::new();
        let mut first_seen: BTreeMap<String, Option<Pos>> = BTreeMap::new();
        for (key, value) in entries {
            let name = match &key.value {
                Value::Str(s) => s.clone(),
                Value::Int(_) | Value::Bool(_) | Value::Float(_) => key.scalar_text().unwrap_or_default(),
                _ => {
                    self.error(path, key.pos, format!("keys must be strings, found {}", key.type_name()));
                    continue;
                }
            };
            if let Some(first) = first_seen.get(&name) {
                let at = first.map(|p| format!(" (first defined at line {})", p.line)).unwrap_or_default();
                self.error(
                    &join(path, &name),
                    key.pos,
                    format!("duplicate key {name:?}{at}: each key may appear once"),
                );
                continue;
            }
            first_seen.insert(name.clone(), key.pos);
            if let Some(known) = known {
                if !known.contains(&name.as_str()) {
                    self.error(
                        &join(path, &name),
                        key.pos,
                        format!("unknown key {name:?}{}", suggestion(&name, known.iter().copied())),
                    );
                    continue;
                }
            }
            out.push((name, key, value));
        }
        Some(Fields { entries: out, pos: node.pos })
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            // `account: 1000` is a string to anyone who writes it.
            Value::Int(i) => Some(i.to_string()),
            _ => {
                self.type_error(path, node, "a string");
                None
            }
        }
    }

    fn non_empty_string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error(path, node.pos, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.type_error(path, node, "true or false");
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        match &node.value {
            Value::Str(s) => match crate::duration::parse(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.error(path, node.pos, e.to_string());
                    None
                }
            },
            Value::Int(i) => {
                self.error(
                    path,
                    node.pos,
                    format!("invalid duration {i}: a number needs a unit (write {i}s, {i}m or {i}h)"),
                );
                None
            }
            _ => {
                self.type_error(path, node, "a duration such as 30s, 2m or 1h30m");
                None
            }
        }
    }

    fn positive_duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let d = self.duration(node, path)?;
        if d.is_zero() {
            self.error(path, node.pos, "must be longer than 0s");
            return None;
        }
        Some(d)
    }

    fn choice<T: Copy>(&mut self, node: &Node, path: &str, choices: &[(&str, T)]) -> Option<T> {
        let text = self.string(node, path)?;
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        self.error(
            path,
            node.pos,
            format!(
                "invalid value {text:?}: expected one of {}{}",
                names.join(", "),
                suggestion(&text, names.iter().copied())
            ),
        );
        None
    }

    fn zone(&mut self, node: &Node, path: &str) -> Option<Zone> {
        let name = self.non_empty_string(node, path)?;
        match TimeZone::get(&name) {
            Ok(tz) => Some(Zone { name, tz }),
            Err(_) => {
                let names: Vec<String> = jiff::tz::db().available().map(|n| n.as_str().to_string()).collect();
                let hint = suggestion(&name, names.iter().map(String::as_str));
                self.error(
                    path,
                    node.pos,
                    format!("unknown time zone {name:?}{hint}: use an IANA name such as Europe/Berlin or UTC"),
                );
                None
            }
        }
    }

    /// An argv list: a non-empty list of strings whose first item is not empty.
    fn argv(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let items = match &node.value {
            Value::Seq(items) => items,
            Value::Str(s) => {
                let parts: Vec<String> = s.split_whitespace().map(|p| format!("{p:?}")).collect();
                self.error(
                    path,
                    node.pos,
                    format!(
                        "a command is a list of arguments, run without a shell: write [{}] instead of {s:?}",
                        parts.join(", ")
                    ),
                );
                return None;
            }
            _ => {
                self.type_error(path, node, "a list of arguments such as [restic, backup, ~/Documents]");
                return None;
            }
        };
        if items.is_empty() {
            self.error(path, node.pos, "empty command: give at least the program to run");
            return None;
        }
        let mut argv = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match &item.value {
                Value::Str(s) => argv.push(s.clone()),
                Value::Int(_) | Value::Float(_) | Value::Bool(_) => argv.push(item.scalar_text().unwrap_or_default()),
                _ => {
                    self.type_error(&index(path, i), item, "a string");
                    ok = false;
                }
            }
        }
        if ok && argv[0].trim().is_empty() {
            self.error(&index(path, 0), items[0].pos, "empty program name");
            ok = false;
        }
        if ok && argv.iter().any(|a| a.contains('\0')) {
            self.error(path, node.pos, "arguments must not contain NUL bytes");
            ok = false;
        }
        ok.then_some(argv)
    }

    fn name_key(&mut self, name: &str, key: &Node, path: &str, what: &str) -> bool {
        if valid_name(name) {
            return true;
        }
        self.error(
            path,
            key.pos,
            format!(
                "invalid {what} name {name:?}: names start with a letter or digit and use only letters, digits, `.`, `_` and `-` (at most 64 characters)"
            ),
        );
        false
    }

    fn config(&mut self, root: &Node, path: &Path, env: &Environment) -> Option<Config> {
        if matches!(root.value, Value::Null) {
            self.error(
                "",
                None,
                "the task file is empty: it needs at least a `tasks:` mapping (see backup.yaml.example)",
            );
            return None;
        }
        let top = self.fields(root, "", "a mapping of settings (socket, secrets, tasks, ...)", Some(TOP_KEYS))?;

        let socket = match top.get("socket") {
            Some(node) => self.path_value(node, "socket", env),
            None => Some(env.default_socket()),
        };
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
        let state_dir = match top.get("state_dir") {
            Some(node) => self.path_value(node, "state_dir", env),
            None => {
                let dir = env.default_state_dir();
                if dir.is_none() {
                    self.error(
                        "state_dir",
                        None,
                        "no default: neither XDG_STATE_HOME nor HOME is set; set `state_dir:`",
                    );
                }
                dir
            }
        };
        let token_ttl = match top.get("token_ttl") {
            Some(node) => self.token_ttl(node),
            None => Some(DEFAULT_TOKEN_TTL),
        };
        let timezone = match top.get("timezone") {
            Some(node) => self.zone(node, "timezone"),
            None => Some(Zone::system()),
        };
        let log = match top.get("log") {
            Some(node) => self.log(node),
            None => Some(LogSettings { level: LogLevel::Info, format: LogFormat::Text }),
        };
        let strict_memory = match top.get("strict_memory") {
            Some(node) => self.boolean(node, "strict_memory"),
            None => Some(false),
        };
        let pin_binaries = match top.get("pin_binaries") {
            Some(node) => self.boolean(node, "pin_binaries"),
            None => Some(false),
        };
        let notify = match top.get("notify") {
            Some(node) => self.notify(node, "notify").map(Some),
            None => Some(None),
        };
        let metrics_textfile = match top.get("metrics_textfile") {
            Some(node) => self.path_value(node, "metrics_textfile", env).map(Some),
            None => Some(None),
        };
        let shutdown_grace = match top.get("shutdown_grace") {
            Some(node) => self.duration(node, "shutdown_grace"),
            None => Some(DEFAULT_SHUTDOWN_GRACE),
        };

        let secrets = match top.get("secrets") {
            Some(node) => self.secrets(node),
            None => Some(Vec::new()),
        };
        let default_zone = timezone.clone().unwrap_or_else(Zone::system);
        let tasks = match top.get("tasks") {
            Some(node) => self.tasks(node, &default_zone, env),
            None => {
                self.error("tasks", top.pos, "no `tasks:` mapping: define at least one task (see backup.yaml.example)");
                None
            }
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
            pin_binaries: pin_binaries?,
            notify: notify?,
            metrics_textfile: metrics_textfile?,
            secrets: secrets?,
            tasks: tasks?,
        })
    }

    fn path_value(&mut self, node: &Node, path: &str, env: &Environment) -> Option<PathBuf> {
        let raw = self.non_empty_string(node, path)?;
        match env.expand_path(&raw) {
            Ok(p) if p.is_absolute() => Some(p),
            Ok(p) => {
                self.error(
                    path,
                    node.pos,
                    format!("{} is a relative path: write an absolute path (a leading ~/ is expanded)", p.display()),
                );
                None
            }
            Err(e) => {
                self.error(path, node.pos, e);
                None
            }
        }
    }

    fn token_ttl(&mut self, node: &Node) -> Option<Duration> {
        let ttl = self.positive_duration(node, "token_ttl")?;
        if ttl > Duration::from_secs(3600) {
            self.error("token_ttl", node.pos, "must be at most 1h: a token is only needed while the task starts up");
            return None;
        }
        Some(ttl)
    }

    fn log(&mut self, node: &Node) -> Option<LogSettings> {
        let fields = self.fields(node, "log", "a mapping such as {level: info, format: text}", Some(LOG_KEYS))?;
        let level = match fields.get("level") {
            Some(n) => self.choice(
                n,
                "log.level",
                &[
                    ("error", LogLevel::Error),
                    ("warn", LogLevel::Warn),
                    ("info", LogLevel::Info),
                    ("debug", LogLevel::Debug),
                    ("trace", LogLevel::Trace),
                ],
            ),
            None => Some(LogLevel::Info),
        };
        let format = match fields.get("format") {
            Some(n) => self.choice(n, "log.format", &[("text", LogFormat::Text), ("json", LogFormat::Json)]),
            None => Some(LogFormat::Text),
        };
        Some(LogSettings { level: level?, format: format? })
    }

    fn secrets(&mut self, node: &Node) -> Option<Vec<SecretSpec>> {
        let fields = self.fields(node, "secrets", "a mapping of secret names to sources", None)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (name, key, value) in &fields.entries {
            let path = join("secrets", name);
            if !self.name_key(name, key, &path, "secret") {
                ok = false;
                continue;
            }
            match self.secret(value, &path, key.pos) {
                Some(source) => out.push(SecretSpec { name: name.clone(), source }),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn secret(&mut self, node: &Node, path: &str, key_pos: Option<Pos>) -> Option<Source> {
        let fields =
            self.fields(node, path, "a mapping with one source: keyring, command, file or env", Some(SECRET_KEYS))?;
        let sources: Vec<&str> = SECRET_SOURCES.iter().copied().filter(|s| fields.has(s)).collect();
        let pos = fields.pos.or(key_pos);
        match sources.as_slice() {
            [] => {
                self.error(path, pos, "no source: give exactly one of keyring, command, file or env");
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
        let timeout = match fields.get("timeout") {
            Some(n) if sources[0] != "command" => {
                self.error(&join(path, "timeout"), n.pos, "`timeout` applies only to a `command` source");
                return None;
            }
            Some(n) => self.positive_duration(n, &join(path, "timeout"))?,
            None => DEFAULT_SECRET_COMMAND_TIMEOUT,
        };
        let value = fields.get(sources[0])?;
        let vpath = join(path, sources[0]);
        match sources[0] {
            "keyring" => {
                let kf = self.fields(value, &vpath, "a mapping {service: ..., account: ...}", Some(KEYRING_KEYS))?;
                let service = self
                    .required(&kf, &vpath, "service", value.pos)
                    .and_then(|n| self.non_empty_string(n, &join(&vpath, "service")));
                let account = self
                    .required(&kf, &vpath, "account", value.pos)
                    .and_then(|n| self.non_empty_string(n, &join(&vpath, "account")));
                let store = match kf.get("store") {
                    Some(n) => self.choice(
                        n,
                        &join(&vpath, "store"),
                        &[
                            ("auto", Store::Auto),
                            ("secret-service", Store::SecretService),
                            ("keyutils", Store::Keyutils),
                            ("keychain", Store::Keychain),
                        ],
                    ),
                    None => Some(Store::Auto),
                };
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
                    self.error(&vpath, value.pos, format!("invalid environment variable name {var:?}"));
                    return None;
                }
                Some(Source::Env { var })
            }
            _ => unreachable!("sources are drawn from SECRET_SOURCES"),
        }
    }

    fn required<'n>(&mut self, fields: &Fields<'n>, path: &str, key: &str, pos: Option<Pos>) -> Option<&'n Node> {
        let node = fields.get(key);
        if node.is_none() {
            self.error(path, fields.pos.or(pos), format!("missing required key `{key}`"));
        }
        node
    }

    fn tasks(&mut self, node: &Node, default_zone: &Zone, env: &Environment) -> Option<Vec<Task>> {
        let fields = self.fields(node, "tasks", "a mapping of task names to tasks", None)?;
        if fields.entries.is_empty() {
            self.error("tasks", node.pos, "no tasks defined: add at least one task");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (name, key, value) in &fields.entries {
            let path = join("tasks", name);
            if !self.name_key(name, key, &path, "task") {
                ok = false;
                continue;
            }
            match self.task(name, value, &path, key.pos, default_zone, env) {
                Some(task) => out.push(task),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn task(
        &mut self,
        name: &str,
        node: &Node,
        path: &str,
        key_pos: Option<Pos>,
        default_zone: &Zone,
        env: &Environment,
    ) -> Option<Task> {
        let f = self.fields(node, path, "a mapping with at least `schedule` and `command`", Some(TASK_KEYS))?;
        let pos = f.pos.or(key_pos);
        let schedule = self.required(&f, path, "schedule", pos).and_then(|n| {
            let p = join(path, "schedule");
            let text = self.string(n, &p)?;
            match Schedule::parse(&text) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.error(&p, n.pos, format!("invalid schedule {text:?}: {e}"));
                    None
                }
            }
        });
        let zone = match f.get("timezone") {
            Some(n) => self.zone(n, &join(path, "timezone")),
            None => Some(default_zone.clone()),
        };
        let steps = match (f.get("command"), f.get("steps")) {
            (Some(_), Some(s)) => {
                self.error(
                    path,
                    s.pos.or(pos),
                    "both `command` and `steps`: give one (a single command, or a list of steps)",
                );
                None
            }
            (None, None) => {
                self.error(path, pos, "missing `command` (or `steps`): what should this task run?");
                None
            }
            (Some(c), None) => {
                let sha256 = match f.get("sha256") {
                    Some(n) => self.sha256(n, &join(path, "sha256")).map(Some),
                    None => Some(None),
                };
                self.argv(c, &join(path, "command"))
                    .zip(sha256)
                    .map(|(command, sha256)| vec![Step { command, env: Vec::new(), continue_on_error: false, sha256 }])
            }
            (None, Some(s)) => {
                if let Some(n) = f.get("sha256") {
                    self.error(
                        &join(path, "sha256"),
                        n.pos,
                        "with `steps:`, pin each step's program with its own `sha256`",
                    );
                }
                self.steps(s, &join(path, "steps"))
            }
        };
        let env_vars = match f.get("env") {
            Some(n) => self.env(n, &join(path, "env")),
            None => Some(Vec::new()),
        };
        let secrets = match f.get("secrets") {
            Some(n) => self.secret_list(n, &join(path, "secrets")),
            None => Some(Vec::new()),
        };
        let timeout = match f.get("timeout") {
            Some(n) => self.positive_duration(n, &join(path, "timeout")).map(Some),
            None => Some(None),
        };
        let on_overlap = match f.get("on_overlap") {
            Some(n) => self.choice(n, &join(path, "on_overlap"), &[("skip", Overlap::Skip), ("queue", Overlap::Queue)]),
            None => Some(Overlap::Skip),
        };
        let working_dir = match f.get("working_dir") {
            Some(n) => self.path_value(n, &join(path, "working_dir"), env).map(Some),
            None => Some(None),
        };
        let redeem_limit = match f.get("redeem_limit") {
            Some(n) => match n.value {
                Value::Int(i) if (1..=1000).contains(&i) => Some(i as u32),
                Value::Int(i) => {
                    self.error(&join(path, "redeem_limit"), n.pos, format!("{i} is out of range 1-1000"));
                    None
                }
                _ => {
                    self.type_error(&join(path, "redeem_limit"), n, "a whole number from 1 to 1000");
                    None
                }
            },
            None => Some(DEFAULT_REDEEM_LIMIT),
        };
        let max_lateness = match f.get("max_lateness") {
            Some(n) => self.duration(n, &join(path, "max_lateness")),
            None => Some(DEFAULT_MAX_LATENESS),
        };
        let random_delay = match f.get("random_delay") {
            Some(n) => self.duration(n, &join(path, "random_delay")).map(Some),
            None => Some(None),
        };
        let hooks = match f.get("hooks") {
            Some(n) => self.hooks(n, &join(path, "hooks")),
            None => Some(Hooks::default()),
        };
        let task_notify = match f.get("notify") {
            Some(n) => self.notify(n, &join(path, "notify")).map(Some),
            None => Some(None),
        };
        let warning_exit_codes = match f.get("warning_exit_codes") {
            Some(n) => self.exit_codes(n, &join(path, "warning_exit_codes")),
            // restic exits 3 when some files could not be read: the snapshot exists.
            None => Some(match &steps {
                Some(steps) if steps.iter().any(|s| program_name(&s.command[0]) == "restic") => vec![3],
                _ => Vec::new(),
            }),
        };
        Some(Task {
            name: name.to_string(),
            schedule: schedule?,
            zone: zone?,
            steps: steps?,
            env: env_vars?,
            secrets: secrets?,
            timeout: timeout?,
            on_overlap: on_overlap?,
            working_dir: working_dir?,
            redeem_limit: redeem_limit?,
            max_lateness: max_lateness?,
            random_delay: random_delay?,
            warning_exit_codes: warning_exit_codes?,
            hooks: hooks?,
            notify: task_notify?,
        })
    }

    fn steps(&mut self, node: &Node, path: &str) -> Option<Vec<Step>> {
        let Value::Seq(items) = &node.value else {
            self.type_error(path, node, "a list of steps, each {command: [...]}");
            return None;
        };
        if items.is_empty() {
            self.error(path, node.pos, "empty list of steps: give at least one step");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            let Some(f) = self.fields(item, &p, "a step mapping {command: [...]}", Some(STEP_KEYS)) else {
                ok = false;
                continue;
            };
            let command = self.required(&f, &p, "command", item.pos).and_then(|n| self.argv(n, &join(&p, "command")));
            let env = match f.get("env") {
                Some(n) => self.env(n, &join(&p, "env")),
                None => Some(Vec::new()),
            };
            let continue_on_error = match f.get("continue_on_error") {
                Some(n) => self.boolean(n, &join(&p, "continue_on_error")),
                None => Some(false),
            };
            let sha256 = match f.get("sha256") {
                Some(n) => self.sha256(n, &join(&p, "sha256")).map(Some),
                None => Some(None),
            };
            match (command, env, continue_on_error, sha256) {
                (Some(command), Some(env), Some(continue_on_error), Some(sha256)) => {
                    out.push(Step { command, env, continue_on_error, sha256 })
                }
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn env(&mut self, node: &Node, path: &str) -> Option<Vec<EnvVar>> {
        let fields = self.fields(node, path, "a mapping of variable names to values", None)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (name, key, value) in &fields.entries {
            let p = join(path, name);
            if !valid_env_name(name) {
                self.error(&p, key.pos, format!("invalid environment variable name {name:?}: use letters, digits and `_`, not starting with a digit"));
                ok = false;
                continue;
            }
            if RESERVED_ENV.contains(&name.as_str()) {
                self.error(&p, key.pos, format!("{name} is set by backupnizza for every process it starts; remove it"));
                ok = false;
                continue;
            }
            let v = match &value.value {
                Value::Str(s) => Some(EnvValue::Text(s.clone())),
                Value::Int(_) | Value::Float(_) | Value::Bool(_) => value.scalar_text().map(EnvValue::Text),
                Value::Map(_) => {
                    let f = self.fields(value, &p, "{secret: NAME}", Some(&["secret"]));
                    match f.as_ref().and_then(|f| f.get("secret")) {
                        Some(n) => self.non_empty_string(n, &join(&p, "secret")).map(EnvValue::Secret),
                        None => {
                            if f.is_some() {
                                self.error(&p, value.pos, "expected {secret: NAME}");
                            }
                            None
                        }
                    }
                }
                Value::Null => {
                    self.error(&p, value.pos.or(key.pos), "no value: write '' for an empty string");
                    None
                }
                Value::Seq(_) => {
                    self.type_error(&p, value, "a string or {secret: NAME}");
                    None
                }
            };
            if let Some(EnvValue::Text(text)) = &v {
                if let Some((_, instead)) = PLAINTEXT_SECRET_ENV.iter().find(|(n, _)| n == name) {
                    if !text.is_empty() {
                        self.warn(&p, value.pos, format!("{name} is written in plain text in the task file; use {instead} so the secret stays in the keychain"));
                    }
                }
            }
            match v {
                Some(value) => out.push(EnvVar { name: name.clone(), value }),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn secret_list(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let Value::Seq(items) = &node.value else {
            self.type_error(path, node, "a list of secret names such as [repo]");
            return None;
        };
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            match self.non_empty_string(item, &p) {
                Some(name) if out.contains(&name) => {
                    self.warn(&p, item.pos, format!("secret {name:?} is listed twice"))
                }
                Some(name) => out.push(name),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn hooks(&mut self, node: &Node, path: &str) -> Option<Hooks> {
        let f = self.fields(
            node,
            path,
            "a mapping {before: [...], on_success: [...], on_failure: [...], after: [...]}",
            Some(HOOK_KEYS),
        )?;
        let mut argv = |key: &str| match f.get(key) {
            Some(n) => self.argv(n, &join(path, key)).map(Some),
            None => Some(None),
        };
        let (before, on_success, on_failure, after) =
            (argv("before"), argv("on_success"), argv("on_failure"), argv("after"));
        let timeout = match f.get("timeout") {
            Some(n) => self.positive_duration(n, &join(path, "timeout")),
            None => Some(DEFAULT_HOOK_TIMEOUT),
        };
        Some(Hooks {
            before: before?,
            on_success: on_success?,
            on_failure: on_failure?,
            after: after?,
            timeout: timeout?,
        })
    }

    fn notify(&mut self, node: &Node, path: &str) -> Option<Notify> {
        let f = self.fields(node, path, "a mapping {ping: URL, webhook: URL}", Some(NOTIFY_KEYS))?;
        let mut url = |key: &str| -> Option<Option<UrlValue>> {
            let Some(n) = f.get(key) else { return Some(None) };
            let p = join(path, key);
            match &n.value {
                Value::Map(_) => {
                    let inner = self.fields(n, &p, "{secret: NAME}", Some(&["secret"]))?;
                    match inner.get("secret") {
                        Some(name) => {
                            self.non_empty_string(name, &join(&p, "secret")).map(|s| Some(UrlValue::Secret(s)))
                        }
                        None => {
                            self.error(&p, n.pos, "expected a URL or {secret: NAME}");
                            None
                        }
                    }
                }
                _ => {
                    let text = self.non_empty_string(n, &p)?;
                    if !(text.starts_with("https://") || text.starts_with("http://")) {
                        self.error(&p, n.pos, "expected an http:// or https:// URL (or {secret: NAME})");
                        return None;
                    }
                    Some(Some(UrlValue::Text(text)))
                }
            }
        };
        let (ping, webhook) = (url("ping"), url("webhook"));
        let send_logs = match f.get("send_logs") {
            Some(n) => self.boolean(n, &join(path, "send_logs")),
            None => Some(false),
        };
        let timeout = match f.get("timeout") {
            Some(n) => self.positive_duration(n, &join(path, "timeout")),
            None => Some(DEFAULT_NOTIFY_TIMEOUT),
        };
        Some(Notify { ping: ping?, webhook: webhook?, send_logs: send_logs?, timeout: timeout? })
    }

    /// A SHA-256 digest as 64 hex digits (as `sha256sum` prints it).
    fn sha256(&mut self, node: &Node, path: &str) -> Option<[u8; 32]> {
        let text = self.string(node, path)?;
        let hex = text.trim().as_bytes();
        // Only ASCII hex digits: slicing multi-byte text, or `+` (which from_str_radix takes), must not pass.
        let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let digest = (hex.len() == 64 && hex.iter().all(u8::is_ascii_hexdigit))
            .then(|| {
                hex.chunks(2).map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?)).collect::<Option<Vec<u8>>>()
            })
            .flatten();
        match digest {
            Some(bytes) => bytes.try_into().ok(),
            None => {
                self.error(
                    path,
                    node.pos,
                    format!("invalid sha256 {text:?}: write the 64 hex digits that `sha256sum PROGRAM` prints"),
                );
                None
            }
        }
    }

    fn exit_codes(&mut self, node: &Node, path: &str) -> Option<Vec<i32>> {
        let Value::Seq(items) = &node.value else {
            self.type_error(path, node, "a list of exit codes such as [3]");
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.value {
                Value::Int(code) if (1..=255).contains(&code) => out.push(code as i32),
                _ => {
                    self.type_error(&index(path, i), item, "an exit code from 1 to 255");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// References between sections: every secret a task names must be declared. This walks
    /// the tree rather than the checked values, so it still runs when a task has other
    /// problems (and reports everything in one go).
    fn cross_check(&mut self, root: &Node) {
        let declared: Vec<String> = match lookup(root, "secrets") {
            Some((_, node)) => string_keys(node).into_iter().map(|(k, _, _)| k).collect(),
            None => Vec::new(),
        };
        let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
        let mut used: BTreeSet<String> = BTreeSet::new();
        let tasks = lookup(root, "tasks").map(|(_, n)| string_keys(n)).unwrap_or_default();
        for (task, _, node) in tasks {
            let tpath = join("tasks", &task);
            let scope: Vec<&str> = match lookup(node, "secrets") {
                Some((_, Node { value: Value::Seq(items), .. })) => {
                    let mut scope = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let Value::Str(name) = &item.value else { continue };
                        scope.push(name.as_str());
                        used.insert(name.clone());
                        if !declared.contains(name.as_str()) {
                            self.error(
                                &index(&join(&tpath, "secrets"), i),
                                item.pos,
                                format!(
                                    "task {task:?} names secret {name:?}, which is not declared under `secrets:`{}",
                                    suggestion(name, declared.iter().copied())
                                ),
                            );
                        }
                    }
                    scope
                }
                _ => Vec::new(),
            };
            // The task's own env and command, then each step's.
            let mut places: Vec<(String, &Node)> = vec![(tpath.clone(), node)];
            if let Some((_, Node { value: Value::Seq(steps), .. })) = lookup(node, "steps") {
                places.extend(steps.iter().enumerate().map(|(i, s)| (index(&join(&tpath, "steps"), i), s)));
            }
            for (path, place) in places {
                if let Some((_, env)) = lookup(place, "env") {
                    for (var, _, value) in string_keys(env) {
                        let vpath = join(&join(&path, "env"), &var);
                        match &value.value {
                            Value::Str(text) => {
                                self.check_secretbox_use(text, &task, &scope, &vpath, value.pos, &declared)
                            }
                            Value::Map(_) => {
                                let Some((_, Node { value: Value::Str(name), pos })) = lookup(value, "secret") else {
                                    continue;
                                };
                                used.insert(name.clone());
                                if !declared.contains(name.as_str()) {
                                    self.error(
                                        &join(&vpath, "secret"),
                                        *pos,
                                        format!(
                                            "{{secret: {name}}} in task {task:?} names a secret that is not declared under `secrets:`{}",
                                            suggestion(name, declared.iter().copied())
                                        ),
                                    );
                                }
                            }
                            _ => {}
                        }
                    }
                }
                if let Some((_, Node { value: Value::Seq(args), .. })) = lookup(place, "command") {
                    for (i, arg) in args.iter().enumerate() {
                        if let Value::Str(text) = &arg.value {
                            let apath = index(&join(&path, "command"), i);
                            self.check_secretbox_use(text, &task, &scope, &apath, arg.pos, &declared);
                        }
                    }
                }
            }
        }
        // `{secret: NAME}` URLs of notifications, top level and per task.
        let mut notify_nodes: Vec<(String, &Node)> = Vec::new();
        if let Some((_, n)) = lookup(root, "notify") {
            notify_nodes.push(("notify".into(), n));
        }
        for (task, _, node) in lookup(root, "tasks").map(|(_, n)| string_keys(n)).unwrap_or_default() {
            if let Some((_, n)) = lookup(node, "notify") {
                notify_nodes.push((join(&join("tasks", &task), "notify"), n));
            }
        }
        for (path, node) in notify_nodes {
            for key in ["ping", "webhook"] {
                let Some((_, value)) = lookup(node, key) else { continue };
                let Some((_, Node { value: Value::Str(name), pos })) = lookup(value, "secret") else { continue };
                used.insert(name.clone());
                if !declared.contains(name.as_str()) {
                    self.error(
                        &join(&join(&path, key), "secret"),
                        *pos,
                        format!(
                            "{{secret: {name}}} names a secret that is not declared under `secrets:`{}",
                            suggestion(name, declared.iter().copied())
                        ),
                    );
                }
            }
        }
        if let Some((_, secrets)) = lookup(root, "secrets") {
            for (name, key, _) in string_keys(secrets) {
                if !used.contains(&name) {
                    self.warn(
                        &join("secrets", &name),
                        key.pos,
                        format!("secret {name:?} is not used by any task (add it to a task's `secrets:`)"),
                    );
                }
            }
        }
    }

    /// `RESTIC_PASSWORD_COMMAND: secretbox get repo` only works if `repo` is in the task's
    /// `secrets:`; catching it here saves a failed 3 a.m. backup.
    fn check_secretbox_use(
        &mut self,
        text: &str,
        task: &str,
        scope: &[&str],
        path: &str,
        pos: Option<Pos>,
        declared: &BTreeSet<&str>,
    ) {
        let words: Vec<&str> = text.split_whitespace().collect();
        for (i, pair) in words.windows(2).enumerate() {
            if program_name(pair[0]) != "secretbox" || pair[1] != "get" {
                continue;
            }
            let Some(name) = words[i + 2..].iter().find(|w| !w.starts_with('-')) else { continue };
            // In a shell snippet the name may be followed by `;`, `)` or a quote.
            let name = name.trim_start_matches(['"', '\'']);
            let end =
                name.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))).unwrap_or(name.len());
            let name = &name[..end];
            if name.is_empty() {
                continue;
            }
            if !declared.contains(name) {
                self.error(
                    path,
                    pos,
                    format!(
                        "`secretbox get {name}`: secret {name:?} is not declared under `secrets:`{}",
                        suggestion(name, declared.iter().copied())
                    ),
                );
            } else if !scope.contains(&name) {
                self.error(
                    path,
                    pos,
                    format!("`secretbox get {name}` will be refused: add {name:?} to tasks.{task}.secrets"),
                );
            }
        }
    }
}

/// The file name of a program path (`/usr/bin/restic` → `restic`).
pub(crate) fn program_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

fn lookup<'n>(node: &'n Node, key: &str) -> Option<(&'n Node, &'n Node)> {
    match &node.value {
        Value::Map(entries) => {
            entries.iter().find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key)).map(|(k, v)| (k, v))
        }
        _ => None,
    }
}

/// A mapping's entries with string keys, first occurrence of each.
fn string_keys(node: &Node) -> Vec<(String, &Node, &Node)> {
    let mut out: Vec<(String, &Node, &Node)> = Vec::new();
    if let Value::Map(entries) = &node.value {
        for (k, v) in entries {
            if let Value::Str(name) = &k.value {
                if !out.iter().any(|(n, _, _)| n == name) {
                    out.push((name.clone(), k, v));
                }
            }
        }
    }
    out
}
