//! `backupnizza explain TASK [--since 7d]`: every occurrence of a task in a window and what
//! became of it — ran, failed, caught up after a suspend, skipped (overlap, too late, folded
//! into a catch-up), or missed because the daemon was not running — from the run history.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{load_config, print, require_task, rfc3339};
use crate::cli::ExplainArgs;
use crate::config::Environment;
use crate::history::Record;

/// Most occurrences listed (a minutely task over a week has ten thousand).
const MAX_LINES: usize = 500;

struct Run {
    id: String,
    at: Timestamp,
    trigger: String,
    end: Option<(String, Option<i32>, u64, String)>,
}

pub fn run(args: &ExplainArgs, env: &Environment) -> anyhow::Result<()> {
    let config = load_config(&args.config, env)?;
    let task = require_task(&config, &args.task)?;
    let tz = &task.zone.tz;
    let (loaded, _) =
        super::control::load_history(&config, env, args.socket.as_deref(), Some(&task.name))?;
    let records = &loaded.records;
    let now = Timestamp::now();
    let since =
        now - SignedDuration::try_from(args.since).unwrap_or(SignedDuration::from_hours(24 * 7));
    let time = |s: &str| s.parse::<Timestamp>().ok();

    // Runs by the occurrence they belong to, and manual ones; skips expanded per occurrence;
    // the daemon's starts and stops.
    let mut by_occurrence: BTreeMap<Timestamp, Run> = BTreeMap::new();
    // Earlier runs of an occurrence that ran again (after an interrupted run).
    let mut earlier: BTreeMap<Timestamp, Vec<Run>> = BTreeMap::new();
    let mut manual: Vec<Run> = Vec::new();
    let mut skipped: BTreeMap<Timestamp, (String, String)> = BTreeMap::new();
    let mut daemon: Vec<(Timestamp, bool)> = Vec::new();
    let mut ends: BTreeMap<String, (String, Option<i32>, u64, String)> = BTreeMap::new();
    for record in records {
        match record {
            Record::End { run_id, task: t, status, exit_code, duration_ms, reason, .. }
                if t == &task.name =>
            {
                ends.insert(
                    run_id.clone(),
                    (status.as_str().to_string(), *exit_code, *duration_ms, reason.clone()),
                );
            }
            Record::Daemon { event, at, .. } => {
                if let Some(at) = time(at) {
                    daemon.push((at, *event == crate::history::DaemonEvent::Start));
                }
            }
            _ => {}
        }
    }
    for record in records {
        match record {
            Record::Start { run_id, task: t, at, scheduled, trigger, .. } if t == &task.name => {
                let Some(at) = time(at) else { continue };
                let run = Run {
                    id: run_id.clone(),
                    at,
                    trigger: trigger.as_str().to_string(),
                    end: ends.get(run_id).cloned(),
                };
                match scheduled.as_deref().and_then(time) {
                    Some(occurrence) if *trigger != crate::schedule::timetable::Trigger::Manual => {
                        if let Some(before) = by_occurrence.insert(occurrence, run) {
                            earlier.entry(occurrence).or_default().push(before);
                        }
                    }
                    _ => manual.push(run),
                }
            }
            Record::Skip { task: t, scheduled, count, reason, detail, .. } if t == &task.name => {
                let Some(mut occurrence) = time(scheduled) else { continue };
                for _ in 0..(*count).min(100_000) {
                    skipped
                        .entry(occurrence)
                        .or_insert_with(|| (reason.as_str().to_string(), detail.clone()));
                    match task.schedule.next_after(occurrence, tz) {
                        Some(next) => occurrence = next,
                        None => break,
                    }
                }
            }
            _ => {}
        }
    }
    let daemon_up = |at: Timestamp| {
        daemon.iter().filter(|(t, _)| *t <= at).max_by_key(|(t, _)| *t).is_some_and(|(_, up)| *up)
    };

    // The occurrences in the window: from the schedule (cron), or as recorded (`@every`
    // counts from each daemon start, so only the history knows its instants).
    let mut occurrences: Vec<Timestamp> = Vec::new();
    if task.schedule.interval().is_some() {
        occurrences.extend(
            by_occurrence.keys().chain(skipped.keys()).copied().filter(|o| *o > since && *o <= now),
        );
        occurrences.sort();
        occurrences.dedup();
    } else {
        let mut t = since;
        while let Some(next) = task.schedule.next_after(t, tz).filter(|n| *n <= now) {
            occurrences.push(next);
            t = next;
            if occurrences.len() > 100_000 {
                break;
            }
        }
    }

    let shown = occurrences.len().saturating_sub(MAX_LINES);
    let (mut ran, mut failed, mut caught_up, mut skips, mut missed) = (0, 0, 0, 0, 0);
    let (mut cancelled, mut interrupted) = (0, 0);
    let mut lines = Vec::new();
    for occurrence in &occurrences {
        for run in earlier.get(occurrence).into_iter().flatten() {
            let when = rfc3339(run.at, tz);
            if run.end.as_ref().is_none_or(|(s, ..)| s == "interrupted") {
                interrupted += 1;
            }
            lines.push(format!(
                "{}  interrupted at {when}, and run again below: {}",
                rfc3339(*occurrence, tz),
                describe_end(run)
            ));
        }
        let fate = if let Some(run) = by_occurrence.get(occurrence) {
            let result = describe_end(run);
            let end = run.end.as_ref().map(|(s, ..)| s.as_str());
            let when = rfc3339(run.at, tz);
            let ran_how = if run.trigger == "catch_up" {
                let late =
                    Duration::try_from(run.at.duration_since(*occurrence)).unwrap_or_default();
                let late = crate::duration::Human(Duration::from_secs(late.as_secs()));
                format!("caught up after suspend or downtime at {when} ({late} late)")
            } else {
                format!("ran at {when}")
            };
            match end {
                Some("success" | "warning") => {
                    if run.trigger == "catch_up" {
                        caught_up += 1;
                    } else {
                        ran += 1;
                    }
                    format!("{ran_how}: {result}")
                }
                Some("skipped") => {
                    skips += 1;
                    format!("skipped by the before hook (exit 75) at {when}: {result}")
                }
                Some("cancelled") => {
                    cancelled += 1;
                    format!("cancelled at {when} (the daemon was stopping): {result}")
                }
                Some("interrupted") => {
                    interrupted += 1;
                    format!("interrupted at {when}: the daemon died during the run: {result}")
                }
                // A failed catch-up is a failure, not a catch-up.
                Some(_) if run.trigger == "catch_up" => {
                    failed += 1;
                    format!("{ran_how}, and failed: {result}")
                }
                Some(_) => {
                    failed += 1;
                    format!("failed at {when}: {result}")
                }
                // The daemon started again after this run began, yet it never ended.
                None if daemon.iter().any(|(t, up)| *up && *t > run.at) => {
                    interrupted += 1;
                    format!(
                        "interrupted at {when}: no end recorded; the daemon stopped or crashed during the run, run {}",
                        run.id
                    )
                }
                None => format!("running since {when}: {result}"),
            }
        } else if let Some((reason, detail)) = skipped.get(occurrence) {
            skips += 1;
            let why = match reason.as_str() {
                "overlap" => "the previous run was still going",
                "too_late" => "too late",
                "superseded" => "folded into a later catch-up run",
                "clock_change" => "the clock was corrected forward past it",
                other => other,
            };
            format!("skipped ({why}): {detail}")
        } else if !daemon_up(*occurrence) {
            missed += 1;
            "missed: the daemon was not running".to_string()
        } else {
            "no record (the history was rotated, or the daemon stopped unexpectedly)".to_string()
        };
        lines.push(format!("{}  {fate}", rfc3339(*occurrence, tz)));
    }
    print(|out| {
        writeln!(
            out,
            "{} ({}, {}): occurrences from {} to {}",
            task.name,
            task.schedule,
            task.zone.name,
            rfc3339(since, tz),
            rfc3339(now, tz)
        )?;
        if task.schedule.interval().is_some() {
            writeln!(
                out,
                "(an @every schedule counts from each daemon start: only recorded occurrences are listed)"
            )?;
        }
        if shown > 0 {
            writeln!(out, "({shown} earlier occurrences not shown)")?;
        }
        for line in &lines[shown..] {
            writeln!(out, "{line}")?;
        }
        for run in manual.iter().filter(|r| r.at > since) {
            writeln!(
                out,
                "{}  manual run (backupnizza trigger): {}",
                rfc3339(run.at, tz),
                describe_end(run)
            )?;
        }
        writeln!(
            out,
            "summary: {} occurrences; {ran} ran, {failed} failed, {caught_up} caught up, {skips} skipped, {missed} missed while the daemon was down, {cancelled} cancelled, {interrupted} interrupted",
            occurrences.len()
        )?;
        if let Some(bad) = loaded.bad_lines_summary() {
            writeln!(out, "history: {bad}; what they held is not counted above")?;
        }
        Ok(())
    })
}

fn describe_end(run: &Run) -> String {
    match &run.end {
        Some((status, code, ms, reason)) => {
            let code = code.map(|c| format!("exit {c}, ")).unwrap_or_default();
            format!(
                "{status} ({code}{}) {reason}, run {}",
                crate::duration::Human(Duration::from_secs(ms / 1000)),
                run.id
            )
        }
        None => format!("no end recorded (still running, or the daemon stopped), run {}", run.id),
    }
}
