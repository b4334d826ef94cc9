//! The parts of the process environment that decide the task file's defaults (`HOME`,
//! `XDG_*`, the uid) and its `$VAR` expansion, captured once so tests can supply their own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The parts of the process environment that decide defaults and `$VAR` expansion, captured
/// once so tests can supply their own.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub vars: BTreeMap<String, String>,
    pub uid: u32,
}

impl Environment {
    /// A snapshot of the process environment. Variables that are not UTF-8 are left out
    /// and wiped on the way (one may be an `env:` secret source).
    pub fn from_process() -> Environment {
        use zeroize::Zeroize;
        let mut vars = BTreeMap::new();
        for (k, v) in std::env::vars_os() {
            match (k.into_string(), v.into_string()) {
                (Ok(k), Ok(v)) => {
                    vars.insert(k, v);
                }
                (_, Ok(mut v)) => v.zeroize(),
                (_, Err(v)) => v.into_encoded_bytes().zeroize(),
            }
        }
        Environment { vars, uid: nix::unistd::getuid().as_raw() }
    }

    /// Removes `name` from the snapshot and wipes its value: the daemon forgets the
    /// variables of `env:` secret sources, which must not outlive their move onto locked
    /// pages in an ordinary string.
    pub fn forget(&mut self, name: &str) {
        use zeroize::Zeroize;
        if let Some(mut value) = self.vars.remove(name) {
            value.zeroize();
        }
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }

    /// `$BACKUPNIZZA_CONFIG`, else `$XDG_CONFIG_HOME/backupnizza/backup.yaml`, else
    /// `~/.config/backupnizza/backup.yaml`.
    pub fn default_config_path(&self) -> Option<PathBuf> {
        if let Some(p) = self.var("BACKUPNIZZA_CONFIG") {
            return Some(PathBuf::from(p));
        }
        let base = match self.var("XDG_CONFIG_HOME") {
            Some(dir) => PathBuf::from(dir),
            None => self.home()?.join(".config"),
        };
        Some(base.join("backupnizza").join("backup.yaml"))
    }

    /// `$XDG_RUNTIME_DIR/backupnizza/secretbox.sock`, else
    /// `$TMPDIR/backupnizza-$UID/secretbox.sock` (`/tmp` when `TMPDIR` is unset).
    pub fn default_socket(&self) -> PathBuf {
        if let Some(dir) = self.var("XDG_RUNTIME_DIR") {
            Path::new(dir).join("backupnizza").join("secretbox.sock")
        } else {
            let tmp = self.var("TMPDIR").unwrap_or("/tmp");
            Path::new(tmp).join(format!("backupnizza-{}", self.uid)).join("secretbox.sock")
        }
    }

    /// `$XDG_STATE_HOME/backupnizza`, else `~/.local/state/backupnizza`.
    pub fn default_state_dir(&self) -> Option<PathBuf> {
        let base = match self.var("XDG_STATE_HOME") {
            Some(dir) => PathBuf::from(dir),
            None => self.home()?.join(".local").join("state"),
        };
        Some(base.join("backupnizza"))
    }

    /// Expands a leading `~/` and `$VAR` / `${VAR}` references.
    pub fn expand_path(&self, raw: &str) -> Result<PathBuf, String> {
        let mut out = String::new();
        let mut rest = raw;
        if raw == "~" || raw.starts_with("~/") {
            let home = self.var("HOME").ok_or("cannot expand `~`: HOME is not set")?;
            out.push_str(home);
            rest = &raw[1..];
        }
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
                let end = braced.find('}').ok_or_else(|| format!("unclosed `${{` in {raw:?}"))?;
                (&braced[..end], &braced[end + 1..])
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            if name.is_empty() {
                return Err(format!("a `$` in {raw:?} is not followed by a variable name"));
            }
            let value =
                self.var(name).ok_or_else(|| format!("{raw:?} uses ${name}, which is not set"))?;
            out.push_str(value);
            rest = tail;
        }
        out.push_str(rest);
        Ok(PathBuf::from(out))
    }
}
