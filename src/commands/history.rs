//! `backupnizza history [TASK]`: past runs and skipped occurrences, from the history file
//! (or the daemon's, over its socket: see [`super::control::load_history`]).

use std::time::Duration;

use super::{load_config, print, require_task};
use crate::cli::HistoryArgs;
use crate::config::Environment;
use crate::history::Record;

pub fn run(args: &HistoryArgs, env: &Environment) -> anyhow::Result<()> {
    let config = load_config(&args.config, env)?;
    if let Some(task) = &args.task {
        require_task(&config, task)?;
    }
    let (loaded, source) =
        super::control::load_history(&config, env, args.socket.as_deref(), args.task.as_deref())?;
    let records = &loaded.records;
    let mut lines = Vec::new();
    for record in records {
        if args.task.as_deref().is_some_and(|t| record.task() != Some(t)) {
            continue;
        }
        let line = match record {
            Record::End { run_id, task, at, status, exit_code, duration_ms, reason, .. } => {
                let code = exit_code.map_or_else(|| "-".into(), |c| format!("exit {c}"));
                let took = crate::duration::Human(Duration::from_secs(duration_ms / 1000));
                format!("{at}  {task}  {status}  {code}  {took}  {run_id}  {reason}")
            }
            Record::Skip { task, scheduled, count, reason, detail, .. } => {
                let times = if *count == 1 { String::new() } else { format!(" x{count}") };
                format!("{scheduled}  {task}  skipped{times}  {reason}  {detail}")
            }
            Record::Daemon { event, at, pid } if args.task.is_none() => {
                format!("{at}  daemon {event} (pid {pid})")
            }
            _ => continue,
        };
        lines.push(line);
    }
    print(|out| {
        if lines.is_empty() {
            writeln!(out, "no runs recorded in {source}")?;
        }
        let skip = lines.len().saturating_sub(args.count);
        for line in &lines[skip..] {
            writeln!(out, "{line}")?;
        }
        Ok(())
    })?;
    // On stderr, so scripts reading the lines above are not confused.
    if let Some(bad) = loaded.bad_lines_summary() {
        eprintln!("backupnizza: warning: run history: {bad}");
    }
    Ok(())
}
