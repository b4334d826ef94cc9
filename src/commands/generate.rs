//! `backupnizza completions SHELL` and `backupnizza man`: generated from the clap
//! definitions of both binaries, so they never drift from the real options.

use clap::CommandFactory;

use super::print;
use crate::cli::{Backupnizza, CompletionsArgs, ManArgs, Program, Secretbox};

fn command(program: Program) -> clap::Command {
    match program {
        Program::Backupnizza => Backupnizza::command(),
        Program::Secretbox => Secretbox::command(),
    }
}

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = command(args.program);
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name, &mut out);
    print(|stdout| stdout.write_all(&out))
}

pub fn man(args: &ManArgs) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command(args.program)).render(&mut out)?;
    print(|stdout| stdout.write_all(&out))
}
