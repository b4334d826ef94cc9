//! The `backupnizza` command: parses arguments, runs the subcommand, maps errors to exit codes.

use std::io::Write;

use clap::Parser;

use backupnizza::cli::{Backupnizza, Command, SecretCommand};
use backupnizza::commands;
use backupnizza::config::Environment;
use backupnizza::exit;

fn main() {
    // Before any thread exists: kernel keyutils needs a session keyring of our own (see
    // hardening::join_session_keyring), and the daemon wipes `env` secrets from the
    // environment, which is only sound while single-threaded.
    backupnizza::sys::hardening::join_session_keyring();
    let cli = Backupnizza::parse();
    let env = Environment::from_process();
    let result = match &cli.command {
        Command::Validate(args) => commands::validate::run(args, &env),
        Command::Next(args) => commands::next::run(args, &env),
        Command::Run(args) => {
            // No thread exists yet: nothing above starts one (the daemon checks too).
            commands::config_path(&args.config, &env)
                .and_then(|path| backupnizza::daemon::main(path, env))
        }
        Command::Status(args) => commands::control::status(args, &env),
        Command::Trigger(args) => commands::control::trigger(args, &env),
        Command::Pause(args) => commands::control::pause(args, &env),
        Command::Resume(args) => commands::control::resume(args, &env),
        Command::Watch(args) => commands::watch::watch(args, &env),
        Command::History(args) => commands::history::run(args, &env),
        Command::Ledger(args) => commands::ledger::run(args, &env),
        Command::Secret(SecretCommand::Set(args)) => commands::secret::set(args, &env),
        Command::Secret(SecretCommand::Check(args)) => commands::secret::check(args, &env),
        Command::Explain(args) => commands::explain::run(args, &env),
        Command::Service(command) => commands::service::run(command, &env),
        Command::Completions(args) => commands::generate::completions(args),
        Command::Man(args) => commands::generate::man(args),
        Command::Guard => backupnizza::daemon::guard(),
    };
    if let Err(err) = result {
        let message = format!("{err:#}");
        if !message.is_empty() {
            // Not `eprintln!`: a closed stderr must not turn the exit code into a panic.
            let _ = writeln!(std::io::stderr(), "backupnizza: error: {message}");
        }
        std::process::exit(exit::code_of(&err));
    }
}
