//! `backupnizza next`: upcoming fire times of a task file's tasks or of one expression.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::{load_config, print, require_task};
use crate::cli::NextArgs;
use crate::config::Environment;
use crate::exit::Exit;
use crate::schedule::Schedule;
use crate::time::rfc3339;

pub fn run(args: &NextArgs, env: &Environment) -> anyhow::Result<()> {
    let after = match &args.after {
        Some(text) => text.parse::<Timestamp>().map_err(|e| {
            Exit::usage(format!(
                "invalid --after {text:?}: {e} (write RFC 3339 with an offset, e.g. 2026-03-07T12:00:00-05:00)"
            ))
        })?,
        None => Timestamp::now(),
    };
    let count = args.count as usize;
    if let Some(expr) = &args.schedule {
        let schedule = Schedule::parse(expr)
            .map_err(|e| Exit::usage(format!("invalid schedule {expr:?}: {e}")))?;
        let tz = match &args.timezone {
            Some(name) => TimeZone::get(name).map_err(|_| {
                Exit::usage(format!(
                    "unknown time zone {name:?}: use an IANA name such as Europe/Berlin or UTC"
                ))
            })?,
            None => TimeZone::system(),
        };
        return print(|out| {
            for at in upcoming(&schedule, &tz, after, count) {
                writeln!(out, "{}", rfc3339(at, &tz))?;
            }
            Ok(())
        });
    }

    let config = load_config(&args.config, env)?;
    for name in &args.tasks {
        require_task(&config, name)?;
    }
    let mut lines = Vec::new();
    for task in
        config.tasks.iter().filter(|t| args.tasks.is_empty() || args.tasks.contains(&t.name))
    {
        for at in upcoming(&task.schedule, &task.zone.tz, after, count) {
            lines.push((at, rfc3339(at, &task.zone.tz), task.name.as_str()));
        }
    }
    lines.sort();
    print(|out| {
        for (_, time, name) in lines {
            writeln!(out, "{time}\t{name}")?;
        }
        Ok(())
    })
}

/// The next `count` fire times after `after` (an `@every` schedule is anchored at `after`).
fn upcoming(schedule: &Schedule, tz: &TimeZone, after: Timestamp, count: usize) -> Vec<Timestamp> {
    let mut out = Vec::with_capacity(count);
    let mut t = after;
    while out.len() < count {
        match schedule.next_after(t, tz) {
            Some(next) => {
                out.push(next);
                t = next;
            }
            None => break,
        }
    }
    out
}
