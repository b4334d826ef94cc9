//! The `backupnizza` command: parses arguments, runs the subcommand, maps errors to exit codes.

use clap::Parser;

use backupnizza::cli::{Backupnizza, Command};
use backupnizza::commands;
use backupnizza::config::Environment;
use backupnizza::exit;

fn main() {
    let cli = Backupnizza::parse();
    let env = Environment::from_process();
    let result = match &cli.command {
        Command::Validate(args) => commands::validate::run(args, &env),
        Command::Next(args) => commands::next::run(args, &env),
    };
    if let Err(err) = result {
        let message = format!("{err:#}");
        if !message.is_empty() {
            eprintln!("backupnizza: error: {message}");
        }
        std::process::exit(exit::code_of(&err));
    }
}
