//! A task's (or step's) `env:`: names and values, the reserved names it may not set, the
//! secret forms (`{secret: NAME}`, `{secret_file: NAME}`), loader variables (`LD_PRELOAD`
//! and kin, only as `{loader: VALUE}`), and a warning for a secret written into the file in
//! plain text (a credential's name with a literal value, or a URL with a password).

use super::walk::{Checker, index, join, valid_env_name};
use crate::config::tree::{Node, Value};
use crate::config::{EnvValue, EnvVar};

const RESERVED_ENV: &[&str] = &["SECRETBOX_TOKEN", "SECRETBOX_SOCKET", "SECRETBOX_DAEMON"];
/// The map forms an env value may take.
const ENV_FORMS: &str = "{secret: NAME} or {secret_file: NAME}";
/// Variables that hold a secret in plain text and have a better route of their own; writing
/// one literally in the file defeats the purpose of the daemon, so we warn and point at it.
const PLAINTEXT_SECRET_ENV: &[(&str, &str)] = &[
    ("RESTIC_PASSWORD", "RESTIC_PASSWORD_COMMAND: secretbox get NAME"),
    ("RCLONE_CONFIG_PASS", "RCLONE_PASSWORD_COMMAND: secretbox get NAME"),
    (
        "RESTIC_REST_PASSWORD",
        "RESTIC_REPOSITORY_FILE: {secret_file: NAME}, the URL with its password kept as a secret",
    ),
    (
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SHARED_CREDENTIALS_FILE: {secret_file: NAME}, an INI [default] section kept as a secret",
    ),
];
/// Whether the dynamic loader or a shell reads `name` before the program's own code runs:
/// `LD_*` (glibc: `LD_PRELOAD`, `LD_LIBRARY_PATH`, `LD_AUDIT`, ...), `DYLD_*` (macOS),
/// `BASH_ENV` and `ENV` (a file a shell sources). Set for a step, they run code of the
/// file's choosing inside every program the step starts: restic, and the `secretbox` it
/// runs as its password command. They are refused unless written `{loader: VALUE}`.
fn is_loader_variable(name: &str) -> bool {
    name.starts_with("LD_") || name.starts_with("DYLD_") || name == "BASH_ENV" || name == "ENV"
}

/// What the generic plain-text warning suggests.
const SECRET_FORMS_ADVICE: &str =
    "{secret_file: NAME} (with the tool's `*_FILE` variable, if it has one) or {secret: NAME}";

/// Whether a variable's name says it holds a credential (`*_PASSWORD`, `*_SECRET*`, `*_KEY`,
/// `*_PASS`), rather than where one is (`*_FILE`, `*_COMMAND`, `*_PATH`): a literal value
/// for it is most likely a secret written into the task file.
fn names_a_credential(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    if ["_FILE", "_COMMAND", "_PATH"].iter().any(|s| name.ends_with(s)) {
        return false;
    }
    name.ends_with("_PASSWORD")
        || name.ends_with("_PASS")
        || name.ends_with("_KEY")
        || name.contains("_SECRET")
        || name == "PASSWORD"
}

/// Whether a URL (restic's `rest:https://user:pass@host/`) carries a password in its
/// userinfo. Only what follows `://` counts: `sftp:user@host:/srv` names a user, no password.
fn has_url_password(text: &str) -> bool {
    let Some(at) = text.find("://") else { return false };
    let rest = &text[at + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(userinfo) = authority.rfind('@').map(|i| &authority[..i]) else { return false };
    userinfo.split_once(':').is_some_and(|(_, pass)| !pass.is_empty())
}

impl Checker {
    pub(super) fn env(&mut self, node: &Node, path: &str) -> Option<Vec<EnvVar>> {
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
                self.error(
                    &p,
                    key.pos,
                    format!("{name} is set by backupnizza for every process it starts; remove it"),
                );
                ok = false;
                continue;
            }
            if is_loader_variable(name) {
                match self.loader_value(name, key, value, &p) {
                    Some(value) => out.push(EnvVar { name: name.clone(), value }),
                    None => ok = false,
                }
                continue;
            }
            let v = match &value.value {
                Value::Str(s) => Some(EnvValue::Text(s.clone())),
                Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                    value.scalar_text().map(EnvValue::Text)
                }
                Value::Map(_) => {
                    let f = self.fields(value, &p, ENV_FORMS, Some(&["secret", "secret_file"]));
                    match f.as_ref().map(|f| (f.get("secret"), f.get("secret_file"))) {
                        Some((Some(n), None)) => {
                            self.non_empty_string(n, &join(&p, "secret")).map(EnvValue::Secret)
                        }
                        Some((None, Some(n))) => self
                            .non_empty_string(n, &join(&p, "secret_file"))
                            .map(EnvValue::SecretFile),
                        Some(_) => {
                            self.error(&p, value.pos, format!("expected {ENV_FORMS}, one key"));
                            None
                        }
                        None => None,
                    }
                }
                Value::Null => {
                    self.error(&p, value.pos.or(key.pos), "no value: write '' for an empty string");
                    None
                }
                Value::Seq(_) => {
                    self.type_error(&p, value, "a string, {secret: NAME} or {secret_file: NAME}");
                    None
                }
            };
            // Never the value itself: it is probably a secret, and this goes to a terminal.
            if let Some(EnvValue::Text(text)) = &v
                && !text.is_empty()
            {
                if let Some((_, instead)) = PLAINTEXT_SECRET_ENV.iter().find(|(n, _)| n == name) {
                    self.warn(&p, value.pos, format!("{name} is written in plain text in the task file; use {instead} so the secret stays in the keychain"));
                } else if names_a_credential(name) {
                    self.warn(&p, value.pos, format!("{name} looks like a credential written in plain text in the task file; keep it as a secret and use {SECRET_FORMS_ADVICE}"));
                } else if has_url_password(text) {
                    let instead = if name == "RESTIC_REPOSITORY" {
                        "RESTIC_REPOSITORY_FILE: {secret_file: NAME}, the whole URL kept as a secret".to_string()
                    } else {
                        SECRET_FORMS_ADVICE.to_string()
                    };
                    self.warn(&p, value.pos, format!("{name} holds a URL with a password (user:***@) in plain text in the task file; use {instead}"));
                }
            }
            match v {
                Some(value) => out.push(EnvVar { name: name.clone(), value }),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A loader variable's value: only `{loader: VALUE}`, which says it is meant.
    fn loader_value(&mut self, name: &str, key: &Node, value: &Node, p: &str) -> Option<EnvValue> {
        if !matches!(value.value, Value::Map(_)) {
            self.error(
                p,
                key.pos,
                format!(
                    "{name} makes the dynamic loader or the shell run code before every program the step starts, restic and the `secretbox` it runs included; if you mean it, write `{name}: {{loader: VALUE}}` (see docs/configuration.md)"
                ),
            );
            return None;
        }
        let f = self.fields(value, p, "{loader: VALUE}", Some(&["loader"]))?;
        let Some(n) = f.get("loader") else {
            self.error(p, value.pos, "expected {loader: VALUE}");
            return None;
        };
        n.scalar_text().map(EnvValue::Text).or_else(|| {
            self.type_error(&join(p, "loader"), n, "a string");
            None
        })
    }

    pub(super) fn secret_list(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
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
                    self.warn(&p, item.pos, format!("secret {name:?} is listed twice"));
                }
                Some(name) => out.push(name),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

#[cfg(test)]
mod credential_name_tests {
    use super::{has_url_password, names_a_credential};

    #[test]
    fn names_that_hold_a_credential_not_where_one_is() {
        for name in [
            "B2_ACCOUNT_KEY",
            "MY_API_KEY",
            "GITHUB_SECRET_TOKEN",
            "RESTIC_REST_PASSWORD",
            "SMB_PASS",
        ] {
            assert!(names_a_credential(name), "{name}");
        }
        for name in [
            "RESTIC_PASSWORD_FILE",
            "RESTIC_PASSWORD_COMMAND",
            "SOME_SECRET_FILE",
            "KEY_PATH",
            "AWS_ACCESS_KEY_ID",
            "BYPASS",
            "RESTIC_REPOSITORY",
        ] {
            assert!(!names_a_credential(name), "{name}");
        }
    }

    #[test]
    fn only_a_password_in_the_userinfo_counts() {
        assert!(has_url_password("rest:https://laptop:pw@host:8000/laptop/"));
        assert!(has_url_password("https://u:p@h"));
        for url in [
            "rest:https://host:8000/",
            "sftp:backup@host:/srv",
            "https://user@host/",
            "https://u:@h/",
            "s3:https://h/b?x=a:b@c",
            "/srv/restic",
        ] {
            assert!(!has_url_password(url), "{url}");
        }
    }
}
