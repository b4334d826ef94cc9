//! A step's environment: an allowlist of the daemon's own (`PATH HOME USER LOGNAME LANG LC_*
//! TZ TMPDIR XDG_*`), then the task's `env`, then the step's, with `{secret:}` values read
//! from the locked store and `{secret_file:}` values as paths of private files written for
//! the step ([`super::secret_files`]).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use secrecy::ExposeSecret;
use tracing::error;

use super::{Runner, StepEnv, StepError, secret_files};
use crate::config::{EnvValue, EnvVar, Step, Task};
use crate::trust::dir_first;

/// The daemon's variables a task inherits; everything else is dropped.
pub(crate) fn allowed_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    secretbox_dir: Option<&Path>,
) -> Vec<(OsString, OsString)> {
    const EXACT: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR"];
    let mut out: Vec<(OsString, OsString)> = vars
        .into_iter()
        .filter(|(k, _)| {
            let k = k.as_bytes();
            EXACT.iter().any(|e| e.as_bytes() == k)
                || k.starts_with(b"LC_")
                || k.starts_with(b"XDG_")
        })
        .collect();
    // Let tasks find the `secretbox` installed beside `backupnizza`, ahead of any other.
    if let Some(dir) = secretbox_dir {
        let path = out.iter_mut().find(|(k, _)| k == "PATH");
        let current = path.as_ref().map(|(_, v)| v.clone()).unwrap_or_default();
        let joined = dir_first(&current, dir);
        match path {
            Some((_, v)) => *v = joined,
            None => out.push(("PATH".into(), joined)),
        }
    }
    out
}

/// A `{secret:}` or `{secret_file:}` value whose secret is not in the store.
fn not_loaded(name: &str, var: &EnvVar) -> StepError {
    StepError::SecretNotLoaded { secret: name.to_string(), var: var.name.clone() }
}

impl Runner {
    /// The step's environment, and the secrets it needs as files (in step directory
    /// `label`: see [`secret_files`]). A `{secret_file:}` value becomes the file's path
    /// when the process may fetch that secret (`scope`: a step's task always may, validation
    /// saw to that); for a hook that does not list it, the variable is left unset, as its
    /// token is. A `{secret:}` value is the secret itself: a step gets every one its task's
    /// and its own `env:` name, a hook (`hook`) only those its `secrets:` list.
    pub(super) fn env_for(
        &self,
        task: &Task,
        step: &Step,
        (scope, hook): (Option<&[String]>, bool),
        label: &str,
    ) -> Result<(StepEnv, Vec<String>), StepError> {
        let mut env = self.base_env.clone();
        let mut files: Vec<String> = Vec::new();
        for var in task.env.iter().chain(&step.env) {
            env.retain(|(k, _)| k != var.name.as_str());
            let value: OsString = match &var.value {
                EnvValue::Text(text) => text.into(),
                // A hook gets a secret's value only when its own `secrets:` list it: a plain
                // hook, none (it runs code the task did not need to trust with them).
                EnvValue::Secret(name) if hook && !scope.is_some_and(|s| s.contains(name)) => {
                    continue;
                }
                EnvValue::Secret(name) => match self.broker.secrets().get(name) {
                    Some(secret) => {
                        OsStr::from_bytes(secret.expose_secret().as_bytes()).to_os_string()
                    }
                    None => return Err(not_loaded(name, var)),
                },
                EnvValue::SecretFile(name) => {
                    if !scope.is_some_and(|s| s.contains(name)) {
                        continue;
                    }
                    if self.broker.secrets().get(name).is_none() {
                        return Err(not_loaded(name, var));
                    }
                    if !files.contains(name) {
                        files.push(name.clone());
                    }
                    secret_files::path_of(&self.secret_files, label, name).into_os_string()
                }
            };
            env.push((var.name.clone().into(), value));
        }
        // A task that sets PATH (to reach a newer restic) still finds the `secretbox` beside
        // the daemon first, as it would without it.
        if let Some(dir) = &self.secretbox_dir
            && let Some((_, path)) = env.iter_mut().find(|(k, _)| k == "PATH")
        {
            *path = dir_first(path, dir);
        }
        // A variable set to a file and then overridden (a step's text over the task's
        // `{secret_file:}`) needs no file.
        files.retain(|name| {
            let path = secret_files::path_of(&self.secret_files, label, name);
            env.iter().any(|(_, v)| Path::new(v) == path)
        });
        Ok((env, files))
    }

    /// The `PATH` the task's processes get (the task's `env:` over the daemon's): where a
    /// verifier's `restic` is found.
    pub(crate) fn path_for(&self, task: &Task) -> OsString {
        let set = task.env.iter().rev().find_map(|v| match (&v.value, v.name.as_str()) {
            (EnvValue::Text(text), "PATH") => Some(OsString::from(text)),
            _ => None,
        });
        set.or_else(|| self.base_env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()))
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into())
    }

    /// Writes the step's secret files (on a blocking thread: file writes), straight from
    /// the locked store.
    pub(super) async fn write_secret_files(
        &self,
        label: &str,
        names: Vec<String>,
    ) -> Result<Option<secret_files::StepFiles>, StepError> {
        if names.is_empty() {
            return Ok(None);
        }
        let broker = self.broker.clone();
        let root = self.secret_files.clone();
        let dir = label.to_string();
        let written = tokio::task::spawn_blocking(move || {
            let secrets = broker.secrets();
            let items: Vec<(&str, &[u8])> = names
                .iter()
                .filter_map(|n| Some((n.as_str(), secrets.get(n)?.expose_secret().as_bytes())))
                .collect();
            secret_files::StepFiles::create(&root, &dir, &items)
        })
        .await;
        match written {
            Ok(Ok(files)) => Ok(Some(files)),
            Ok(Err(source)) => {
                let why = StepError::SecretFiles { dir: self.secret_files.join(label), source };
                error!("{why}");
                Err(why)
            }
            Err(e) => Err(StepError::SecretFilesThread(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_keeps_only_the_documented_variables() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("HOME", "/h"),
            ("LC_ALL", "C"),
            ("XDG_RUNTIME_DIR", "/run/u"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("LD_PRELOAD", "evil.so"),
            ("SSH_AUTH_SOCK", "/s"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = allowed_env(vars, Some(Path::new("/opt/bnz/bin")));
        let names: Vec<_> = env.iter().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["PATH", "HOME", "LC_ALL", "XDG_RUNTIME_DIR"]);
        assert_eq!(env[0].1, OsString::from("/opt/bnz/bin:/usr/bin"));
        let again = allowed_env(env.clone(), Some(Path::new("/opt/bnz/bin")));
        assert_eq!(again[0].1, OsString::from("/opt/bnz/bin:/usr/bin"));
    }
}
