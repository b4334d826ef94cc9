//! The checker the whole walk shares: it collects problems, reads mappings as [`Fields`],
//! and parses the scalar kinds every section uses (strings, booleans, durations, choices,
//! time zones, argv lists, paths), reporting a bad value and returning `None` so the caller
//! can carry on. Also the key-path and name rules used across sections.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use jiff::tz::TimeZone;

use crate::config::tree::{Node, Pos, Value};
use crate::config::{Environment, Problem, Severity, Zone};

pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

/// A mapping's entries with string keys, in file order, duplicates already reported.
pub(super) struct Fields<'n> {
    pub(super) entries: Vec<(String, &'n Node, &'n Node)>,
    /// Position of the mapping (or of the key that introduced it), for "missing key" problems.
    pub(super) pos: Option<Pos>,
}

impl<'n> Fields<'n> {
    pub(super) fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(k, _, _)| k == key).map(|(_, _, v)| *v)
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

/// The key path of `key` under `path` (top-level keys have the empty path).
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

pub(super) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The closest candidate to `word`, if it is close enough to be what was meant.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub(super) fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(word, candidates).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default()
}

/// Names of tasks and secrets: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

pub(super) fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) use crate::config::program_name;

impl Checker {
    pub(super) fn error(&mut self, path: &str, pos: Option<Pos>, message: impl Into<String>) {
        self.problems.push(Problem {
            severity: Severity::Error,
            pos,
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn warn(&mut self, path: &str, pos: Option<Pos>, message: impl Into<String>) {
        self.problems.push(Problem {
            severity: Severity::Warning,
            pos,
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn type_error(&mut self, path: &str, node: &Node, expected: &str) {
        let found = match node.scalar_text() {
            Some(text) if !matches!(node.value, Value::Null) => {
                format!("{} ({text:?})", node.type_name())
            }
            _ => node.type_name().to_string(),
        };
        self.error(path, node.pos, format!("expected {expected}, found {found}"));
    }

    /// A mapping with string keys; reports non-string and duplicate keys, and keys not in
    /// `known` (when given) with a did-you-mean.
    pub(super) fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
        known: Option<&[&str]>,
    ) -> Option<Fields<'n>> {
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
                Value::Int(_) | Value::Bool(_) | Value::Float(_) => {
                    key.scalar_text().unwrap_or_default()
                }
                _ => {
                    self.error(
                        path,
                        key.pos,
                        format!("keys must be strings, found {}", key.type_name()),
                    );
                    continue;
                }
            };
            if let Some(first) = first_seen.get(&name) {
                let at = first
                    .map(|p| format!(" (first defined at line {})", p.line))
                    .unwrap_or_default();
                self.error(
                    &join(path, &name),
                    key.pos,
                    format!("duplicate key {name:?}{at}: each key may appear once"),
                );
                continue;
            }
            first_seen.insert(name.clone(), key.pos);
            // At the top, `x-NAME` keys hold YAML anchors for the rest of the file (as in
            // Compose files): read for their aliases, otherwise ignored.
            if path.is_empty() && name.starts_with("x-") {
                continue;
            }
            if let Some(known) = known
                && !known.contains(&name.as_str())
            {
                self.error(
                    &join(path, &name),
                    key.pos,
                    format!("unknown key {name:?}{}", suggestion(&name, known.iter().copied())),
                );
                continue;
            }
            out.push((name, key, value));
        }
        Some(Fields { entries: out, pos: node.pos })
    }

    pub(super) fn required<'n>(
        &mut self,
        fields: &Fields<'n>,
        path: &str,
        key: &str,
        pos: Option<Pos>,
    ) -> Option<&'n Node> {
        let node = fields.get(key);
        if node.is_none() {
            self.error(path, fields.pos.or(pos), format!("missing required key `{key}`"));
        }
        node
    }

    /// An optional key of the mapping at `path`: checked by `parse` (with its own key path)
    /// when present, `default` when absent. `None` means it was present and wrong, and has
    /// been reported; callers keep checking the other keys and fail at the end, so one call
    /// reports everything. `default` is built even when the key is present, so it should be
    /// cheap (every default in the file is).
    pub(super) fn with_default<T>(
        &mut self,
        fields: &Fields<'_>,
        path: &str,
        key: &str,
        default: T,
        parse: impl FnOnce(&mut Checker, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        match fields.get(key) {
            Some(node) => parse(self, node, &join(path, key)),
            None => Some(default),
        }
    }

    /// [`Checker::with_default`] for keys whose absence means "none": `Some(None)` when
    /// absent. The outer `None` means "given but invalid, and reported".
    #[allow(clippy::option_option)] // the two Nones mean different things, documented above
    pub(super) fn optional<T>(
        &mut self,
        fields: &Fields<'_>,
        path: &str,
        key: &str,
        parse: impl FnOnce(&mut Checker, &Node, &str) -> Option<T>,
    ) -> Option<Option<T>> {
        self.with_default(fields, path, key, None, |c, node, path| parse(c, node, path).map(Some))
    }

    pub(super) fn string(&mut self, node: &Node, path: &str) -> Option<String> {
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

    pub(super) fn non_empty_string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error(path, node.pos, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub(super) fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        if let Value::Bool(b) = node.value {
            Some(b)
        } else {
            self.type_error(path, node, "true or false");
            None
        }
    }

    pub(super) fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        match &node.value {
            Value::Str(s) => match crate::time::parse(s) {
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
                    format!(
                        "invalid duration {i}: a number needs a unit (write {i}s, {i}m or {i}h)"
                    ),
                );
                None
            }
            _ => {
                self.type_error(path, node, "a duration such as 30s, 2m or 1h30m");
                None
            }
        }
    }

    pub(super) fn positive_duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let d = self.duration(node, path)?;
        if d.is_zero() {
            self.error(path, node.pos, "must be longer than 0s");
            return None;
        }
        Some(d)
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        node: &Node,
        path: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
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

    pub(super) fn zone(&mut self, node: &Node, path: &str) -> Option<Zone> {
        let name = self.non_empty_string(node, path)?;
        if let Ok(tz) = TimeZone::get(&name) {
            Some(Zone { name, tz })
        } else {
            let names: Vec<String> =
                jiff::tz::db().available().map(|n| n.as_str().to_string()).collect();
            let hint = suggestion(&name, names.iter().map(String::as_str));
            self.error(
                path,
                node.pos,
                format!("unknown time zone {name:?}{hint}: use an IANA name such as Europe/Berlin or UTC"),
            );
            None
        }
    }

    /// An argv list: a non-empty list of strings whose first item is not empty.
    pub(super) fn argv(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
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
                self.type_error(
                    path,
                    node,
                    "a list of arguments such as [restic, backup, ~/Documents]",
                );
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
                Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                    argv.push(item.scalar_text().unwrap_or_default());
                }
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

    /// An absolute path, after expanding `~/` and `$VARS` from `env`.
    pub(super) fn path_value(
        &mut self,
        node: &Node,
        path: &str,
        env: &Environment,
    ) -> Option<PathBuf> {
        let raw = self.non_empty_string(node, path)?;
        match env.expand_path(&raw) {
            Ok(p) if p.is_absolute() => Some(p),
            Ok(p) => {
                self.error(
                    path,
                    node.pos,
                    format!(
                        "{} is a relative path: write an absolute path (a leading ~/ is expanded)",
                        p.display()
                    ),
                );
                None
            }
            Err(e) => {
                self.error(path, node.pos, e);
                None
            }
        }
    }

    /// A list of absolute paths (each as [`Checker::path_value`]); `expected` describes it.
    pub(super) fn path_list(
        &mut self,
        node: &Node,
        path: &str,
        env: &Environment,
        expected: &str,
    ) -> Option<Vec<PathBuf>> {
        let Value::Seq(items) = &node.value else {
            self.type_error(path, node, expected);
            return None;
        };
        let paths: Vec<_> = items
            .iter()
            .enumerate()
            .map(|(i, n)| self.path_value(n, &index(path, i), env))
            .collect();
        paths.into_iter().collect()
    }

    /// A task or secret name used as a mapping key; `what` says which.
    pub(super) fn name_key(&mut self, name: &str, key: &Node, path: &str, what: &str) -> bool {
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
}
