//! Exit codes of `backupnizza`, in one place (`secretbox` has its own, in `protocol`).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; also when the reader of standard output goes away (a pipe into `head -1`): the command stops there, quietly, as `yes` does |
//! | 1 | a runtime failure (a secret could not be loaded, the daemon is unreachable, a triggered run failed, ...) |
//! | 2 | usage error or an invalid task file (nothing was started) |

/// Success.
pub const OK: i32 = 0;
/// A runtime failure.
pub const FAILURE: i32 = 1;
/// A usage error or an invalid task file.
pub const USAGE: i32 = 2;

/// An error that carries the exit code it should end the process with. Library code
/// returns `anyhow::Error`s; wrapping one in `Exit` chooses a code other than `FAILURE`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    pub fn usage(message: impl Into<String>) -> Exit {
        Exit { code: USAGE, message: message.into() }
    }

    /// Ends with `code` after the command already printed what it had to say.
    pub fn silent(code: i32) -> Exit {
        Exit { code, message: String::new() }
    }
}

/// The error for a failed write to standard output. A reader that went away (`| head -1`)
/// is not a failure: the command stops there and exits 0 with no message. Rust ignores
/// SIGPIPE, so a closed pipe arrives here as `BrokenPipe`; restoring SIGPIPE's default instead
/// would let a closed pipe kill the daemon and keep `secretbox` from reporting write errors.
pub fn stdout_error(err: std::io::Error) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        Exit::silent(OK).into()
    } else {
        anyhow::Error::new(err).context("cannot write to standard output")
    }
}

/// The exit code for an error returned by a command: the code of an [`Exit`] in its chain,
/// else `FAILURE`.
pub fn code_of(err: &anyhow::Error) -> i32 {
    err.chain().find_map(|e| e.downcast_ref::<Exit>().map(|x| x.code)).unwrap_or(FAILURE)
}
