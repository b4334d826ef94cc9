//! A small harness for running the real binaries: a temporary directory per test, a command
//! builder, and outputs that print everything useful when an assertion fails.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BACKUPNIZZA: &str = env!("CARGO_BIN_EXE_backupnizza");
#[allow(dead_code)]
pub const SECRETBOX: &str = env!("CARGO_BIN_EXE_secretbox");

/// A per-test scratch directory, removed when dropped.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::Builder::new().prefix("bnz-").tempdir().expect("create temp dir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating parent directories) and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// A `backupnizza` command with a controlled environment rooted in this directory.
    pub fn backupnizza<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(BACKUPNIZZA);
        cmd.args(args).current_dir(self.path()).env_clear();
        for var in ["PATH", "LANG"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.env("HOME", self.path())
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            .env("XDG_STATE_HOME", self.path().join("state"))
            .env("TZ", "UTC");
        Cmd { cmd }
    }
}

pub struct Cmd {
    pub cmd: Command,
}

impl Cmd {
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Cmd {
        self.cmd.env(key, value);
        self
    }

    pub fn run(mut self) -> Run {
        let output = self.cmd.output().expect("spawn binary");
        Run { command: format!("{:?}", self.cmd), output }
    }
}

/// A finished command, printable in full for assertion messages.
pub struct Run {
    pub command: String,
    pub output: Output,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code(), Some(code), "unexpected exit status\n{self}");
        self
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.command)?;
        writeln!(f, "status: {}", self.output.status)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout())?;
        write!(f, "--- stderr ---\n{}", self.stderr())
    }
}

impl Cmd {
    /// Runs with a path argument appended.
    pub fn run_with(self, path: &Path) -> Run {
        self.run_with_args(path, &[])
    }

    /// Runs with a path argument and more arguments appended.
    pub fn run_with_args(mut self, path: &Path, more: &[&str]) -> Run {
        self.cmd.arg(path).args(more);
        self.run()
    }
}
