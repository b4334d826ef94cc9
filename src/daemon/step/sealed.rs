//! What a step's processes run from: for a task that seals (`seal:`, on by default, Linux),
//! each stage's ELF program from an execute-only sealed image, so the process is
//! non-dumpable from its first instruction ([`crate::trust::seal`]); a pinned first stage
//! from the sealed copy that was hashed; and the `secretbox` its password commands name
//! from the daemon's sealed `secretbox` image, handed to every process with a token at a
//! fixed descriptor and named `/proc/self/fd/N` in those commands, which resolves in
//! whichever descendant executes it (restic runs its password command itself).
//!
//! restic's `rclone:` backend (the `rclone` restic itself starts) is sealed too, when restic
//! is not told another program: restic gets `-o rclone.program=/proc/self/fd/N`.
//!
//! Scripts, files the daemon cannot read, and programs of tasks with `seal: false` run from
//! disk, as before; `validate` says which.

use std::ffi::{OsStr, OsString};

use tracing::error;

use super::{Runner, StepCall, StepEnd, StepEnv, StepError};
use crate::trust::{Verified, expand_tilde};

/// What a stage runs from, when not from disk: its program's image, and the image of the
/// `rclone` its restic starts for an `rclone:` repository (named to restic with
/// `-o rclone.program=/proc/self/fd/N`, and inherited like the `secretbox` image).
#[derive(Default)]
pub(super) struct StageImages {
    pub(super) program: Option<Verified>,
    pub(super) backend: Option<Verified>,
}

/// Each stage's images, in stage order.
pub(super) type Images = Vec<StageImages>;

impl Runner {
    /// Each stage's image: the pinned first stage's checked copy (refusing the step if it
    /// changed), and for a sealing task every other ELF program's sealed copy.
    pub(super) async fn images(
        &self,
        call: &StepCall<'_>,
        env: &StepEnv,
    ) -> Result<Images, StepEnd> {
        let stages = call.step.stages();
        let mut images: Images = Vec::with_capacity(stages.len());
        for (i, argv) in stages.iter().enumerate() {
            let program = match call.pin.cloned().filter(|_| i == 0) {
                Some(pin) => {
                    match tokio::task::spawn_blocking(move || crate::trust::open_verified(&pin))
                        .await
                    {
                        Ok(Ok(image)) => Some(image),
                        Ok(Err(why)) => {
                            error!("{why}");
                            return Err(StepEnd::Refused(StepError::Pin(why)));
                        }
                        Err(e) => return Err(StepEnd::Refused(StepError::PinThread(e))),
                    }
                }
                None if call.task.seal => self.sealed(call, env, &argv[0]).await,
                None => None,
            };
            let repository = env.iter().find(|(k, _)| k == "RESTIC_REPOSITORY");
            let repository = repository.and_then(|(_, v)| v.to_str());
            let backend = if call.task.seal && crate::restic::argv::starts_rclone(argv, repository)
            {
                self.sealed(call, env, "rclone").await
            } else {
                None
            };
            images.push(StageImages { program, backend });
        }
        Ok(images)
    }

    /// `program`'s sealed image, found as the stage's `execvp` would find it; `None` (run
    /// it from disk) for a script, a file the daemon cannot read, or anything not found.
    #[cfg(target_os = "linux")]
    async fn sealed(&self, call: &StepCall<'_>, env: &StepEnv, program: &str) -> Option<Verified> {
        let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_os_str());
        let home = self.home.as_deref();
        let dir = call.task.working_dir.as_deref();
        let found = crate::trust::resolve(program, path, home, dir)?;
        let shown = found.display().to_string();
        match tokio::task::spawn_blocking(move || crate::trust::seal::program(&found)).await {
            Ok(Ok(image)) => image,
            Ok(Err(e)) => {
                tracing::debug!(program = %shown, "runs from disk: cannot make a sealed copy: {e}");
                None
            }
            Err(_) => None,
        }
    }

    #[cfg(not(target_os = "linux"))]
    #[allow(clippy::unused_async, reason = "the Linux version awaits; the callers are the same")]
    async fn sealed(&self, _: &StepCall<'_>, _: &StepEnv, _: &str) -> Option<Verified> {
        None
    }

    /// The sealed `secretbox` a stage's process gets, if it gets one: its task seals, its
    /// token may fetch some secret, and the daemon has the image. (A process that may fetch
    /// nothing keeps only its standard descriptors.)
    pub(super) fn secretbox_for(
        &self,
        call: &StepCall<'_>,
    ) -> Option<&crate::trust::SecretboxImage> {
        let fetches = call.scope.is_some_and(|s| !s.is_empty());
        let image = self.secretbox_image.as_deref().filter(|_| call.task.seal && fetches)?;
        if image.intact() {
            return Some(image);
        }
        // Someone of this user made it readable: its key may be known, and what runs from
        // it would be dumpable. From now on tasks run the `secretbox` on disk (checked by
        // its program file), until the daemon restarts and makes a new copy.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            error!(
                "the sealed copy of secretbox was made readable by another process of this user; its key no longer counts and tasks run secretbox from disk until the daemon restarts"
            );
        });
        self.broker.revoke_image_key();
        None
    }
}

/// `/proc/self/fd/N` of an image: what runs it in a process that inherited it.
#[cfg(target_os = "linux")]
pub(super) fn path(image: &Verified) -> String {
    image.path()
}

#[cfg(target_os = "linux")]
pub(super) fn raw_fd(image: &Verified) -> i32 {
    image.raw_fd()
}

/// Elsewhere nothing is sealed, so no stage has a backend image.
#[cfg(not(target_os = "linux"))]
pub(super) fn path(_: &Verified) -> String {
    String::new()
}

#[cfg(not(target_os = "linux"))]
pub(super) fn raw_fd(_: &Verified) -> i32 {
    -1
}

/// The command of a stage: its sealed image under its own name (`argv[0]`), or its program
/// from disk (a leading `~/` expanded).
pub(super) fn command(
    argv: &[String],
    image: Option<&Verified>,
    home: Option<&std::path::Path>,
) -> tokio::process::Command {
    #[cfg(target_os = "linux")]
    if let Some(image) = image {
        // The child inherits the descriptor across fork and execs it before close-on-exec
        // closes it: the kernel runs the sealed copy.
        let mut cmd = tokio::process::Command::new(image.path());
        cmd.arg0(&argv[0]);
        return cmd;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = image;
    tokio::process::Command::new(expand_tilde(&argv[0], home))
}

/// A stage's arguments (a leading `~/` expanded), with the value of each
/// `--password-command` and `--from-password-command` that runs `secretbox` made to run
/// `image` instead (when the stage gets one), and restic told to start its `rclone:`
/// backend from `backend` (when it gets one).
pub(super) fn args(
    argv: &[String],
    (image, backend): (Option<&str>, Option<&str>),
    home: Option<&std::path::Path>,
) -> Vec<OsString> {
    const FLAGS: [&str; 2] = ["--password-command", "--from-password-command"];
    let mut out = Vec::with_capacity(argv.len() + 2);
    if let Some(backend) = backend {
        out.extend(["-o".into(), format!("rclone.program={backend}").into()]);
    }
    let mut after_flag = false;
    for arg in &argv[1..] {
        let rewritten = image.and_then(|image| {
            if after_flag {
                return password_command(OsStr::new(arg), image);
            }
            let (flag, value) = arg.split_once('=')?;
            FLAGS.contains(&flag).then_some(())?;
            let value = password_command(OsStr::new(value), image)?;
            let mut whole = OsString::from(format!("{flag}="));
            whole.push(value);
            Some(whole)
        });
        after_flag = FLAGS.contains(&arg.as_str());
        out.push(rewritten.unwrap_or_else(|| expand_tilde(arg, home)));
    }
    out
}

/// A variable of the environment, with a password command (a `*_COMMAND` variable, such as
/// `RESTIC_PASSWORD_COMMAND` or `RCLONE_PASSWORD_COMMAND`) that runs `secretbox` made to
/// run `image` instead (when the process gets one).
pub(super) fn env_value<'a>(
    name: &OsStr,
    value: &'a OsStr,
    image: Option<&str>,
) -> std::borrow::Cow<'a, OsStr> {
    let is_command = name.to_str().is_some_and(|n| n.ends_with("_COMMAND"));
    match image.filter(|_| is_command).and_then(|image| password_command(value, image)) {
        Some(rewritten) => std::borrow::Cow::Owned(rewritten),
        None => std::borrow::Cow::Borrowed(value),
    }
}

/// `secretbox ARGS...` with `secretbox` replaced by `image`; `None` for any other command.
fn password_command(value: &OsStr, image: &str) -> Option<OsString> {
    let text = value.to_str()?.trim_start();
    let rest = text.strip_prefix("secretbox")?;
    (rest.is_empty() || rest.starts_with(char::is_whitespace))
        .then(|| format!("{image}{rest}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_password_commands_that_run_secretbox_are_rewritten() {
        let img = Some("/proc/self/fd/9");
        let argv: Vec<String> = [
            "restic",
            "--password-command",
            "secretbox get repo",
            "backup",
            "--from-password-command=secretbox get old",
            "--password-command=secretboxes",
            "secretbox get x",
            "~/data",
        ]
        .map(String::from)
        .to_vec();
        let home = Some(std::path::Path::new("/home/u"));
        let out = args(&argv, (img, None), home);
        let texts: Vec<&str> = out.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            texts,
            [
                "--password-command",
                "/proc/self/fd/9 get repo",
                "backup",
                "--from-password-command=/proc/self/fd/9 get old",
                "--password-command=secretboxes",
                "secretbox get x",
                "/home/u/data",
            ]
        );
        // Without an image nothing changes but `~/`.
        assert_eq!(args(&argv, (None, None), home)[1], "secretbox get repo");
        let with_backend = args(&argv[..2], (None, Some("/proc/self/fd/8")), home);
        assert_eq!(with_backend, ["-o", "rclone.program=/proc/self/fd/8", "--password-command"]);

        let value = OsStr::new("  secretbox get repo");
        assert_eq!(
            env_value(OsStr::new("RESTIC_PASSWORD_COMMAND"), value, img),
            OsStr::new("/proc/self/fd/9 get repo")
        );
        assert_eq!(env_value(OsStr::new("RESTIC_PASSWORD_COMMAND"), value, None), value);
        assert_eq!(env_value(OsStr::new("NOTE"), value, img), value);
        let other = OsStr::new("pass show repo");
        assert_eq!(env_value(OsStr::new("RCLONE_PASSWORD_COMMAND"), other, img), other);
    }
}
