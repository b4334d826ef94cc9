//! `backupnizza validate`: check a task file before it is deployed: the file itself
//! (every problem at once, with its line), then this machine ([`machine`]) unless
//! `--portable`.

mod machine;

use jiff::Timestamp;

use super::{config_path, print};
use crate::cli::ValidateArgs;
use crate::config::{self, Environment, Severity};
use crate::exit::{Exit, USAGE};
use crate::time::rfc3339;

pub fn run(args: &ValidateArgs, env: &Environment) -> anyhow::Result<()> {
    let path = config_path(&args.config, env)?;
    let checked = config::check_file(&path, env).map_err(|e| Exit::usage(e.to_string()))?;
    for problem in &checked.problems {
        eprintln!("{}", problem.display(&path));
    }
    let Some(config) = checked.config else {
        let errors = checked.problems.iter().filter(|p| p.severity == Severity::Error).count();
        eprintln!("{}: {errors} error{} found", path.display(), if errors == 1 { "" } else { "s" });
        return Err(Exit::silent(USAGE).into());
    };
    if !args.portable {
        let found = machine::check(&config, env);
        for advice in &found.advice {
            eprintln!("{}: advice: {advice}", path.display());
        }
        for error in &found.errors {
            eprintln!("{}: error: {error}", path.display());
        }
        let n = found.errors.len();
        if n > 0 {
            eprintln!(
                "{}: {n} error{} found on this machine (--portable checks the file alone)",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            return Err(Exit::silent(USAGE).into());
        }
    }
    let now = Timestamp::now();
    let name_width = config.tasks.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let sched_width = config.tasks.iter().map(|t| t.schedule.as_str().len()).max().unwrap_or(0);
    print(|out| {
        writeln!(
            out,
            "{}: valid: {} task{}, {} secret{}",
            path.display(),
            config.tasks.len(),
            if config.tasks.len() == 1 { "" } else { "s" },
            config.secrets.len(),
            if config.secrets.len() == 1 { "" } else { "s" },
        )?;
        for task in &config.tasks {
            let next = match task.schedule.interval() {
                _ if task.schedule.is_manual() => "runs only when triggered".to_string(),
                Some(_) => "counted from daemon start".to_string(),
                None => match task.schedule.next_after(now, &task.zone.tz) {
                    Some(at) => format!("next {}", rfc3339(at, &task.zone.tz)),
                    None => "never fires in the next 30 years".to_string(),
                },
            };
            writeln!(
                out,
                "  {:name_width$}  {:sched_width$}  {}  {next}",
                task.name,
                task.schedule.as_str(),
                task.zone.name,
            )?;
        }
        Ok(())
    })
}
