//! `backupnizza explain TASK [--since 7d]`: every occurrence of a task in a window and what
//! became of it — ran, failed, caught up after a suspend, skipped (overlap, too late, folded
//! into a catch-up), or missed because the daemon was not running — from the run history.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{load_config, print, require_task};
use crate::cli::ExplainArgs;
use crate::config::Environment;
use crate::history::{Record, RunEnd};
use crate::time::rfc3339;

/// Most occurrences listed (a minutely task over a week has ten thousand).
const MAX_LINES: usize = 500;

struct Run {
    id: String,
    at: Timestamp,
    trigger: String,
    end: Option<(String, Option<i32>, u64, String)>,
    lock_wait: Option<crate::history::LockWait>,
    deferred: Option<crate::history::Deferred>,
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
            Record::End(RunEnd {
                run_id, task: t, status, exit_code, duration_ms, reason, ..
            }) if t == &task.name => {
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
            Record::Start {
                run_id, task: t, at, scheduled, trigger, lock_wait, deferred, ..
            } if t == &task.name => {
                let Some(at) = time(at) else { continue };
                let run = Run {
                    id: run_id.clone(),
                    at,
                    trigger: trigger.as_str().to_string(),
                    end: ends.get(run_id).cloned(),
                    lock_wait: lock_wait.clone(),
                    deferred: deferred.clone(),
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
    let mut lines: Vec<Line> = Vec::new();
    for occurrence in &occurrences {
        for run in earlier.get(occurrence).into_iter().flatten() {
            let when = rfc3339(run.at, tz);
            if run.end.as_ref().is_none_or(|(s, ..)| s == "interrupted") {
                interrupted += 1;
            }
            lines.push(Line {
                at: *occurrence,
                fate: "interrupted",
                run: Some(run),
                text: format!("interrupted at {when}, and run again below: {}", describe_end(run)),
            });
        }
        let (fate, run, text) = if let Some(run) = by_occurrence.get(occurrence) {
            let result = describe_end(run);
            let end = run.end.as_ref().map(|(s, ..)| s.as_str());
            let when = rfc3339(run.at, tz);
            let mut ran_how = if run.trigger == "catch_up" {
                let late =
                    Duration::try_from(run.at.duration_since(*occurrence)).unwrap_or_default();
                let late = crate::time::Human(Duration::from_secs(late.as_secs()));
                format!("caught up after suspend or downtime at {when} ({late} late)")
            } else {
                format!("ran at {when}")
            };
            if let Some(d) = &run.deferred {
                let took = crate::time::Human(Duration::from_secs(d.waited_ms / 1000));
                ran_how.push_str(&format!(" (deferred {took}: {})", d.why));
            }
            if let Some(wait) = &run.lock_wait {
                ran_how.push_str(&format!(" {}", describe_wait(wait)));
            }
            let (fate, text) = match end {
                Some("success" | "warning") => {
                    if run.trigger == "catch_up" {
                        caught_up += 1;
                        ("caught_up", format!("{ran_how}: {result}"))
                    } else {
                        ran += 1;
                        ("ran", format!("{ran_how}: {result}"))
                    }
                }
                Some("skipped") => {
                    skips += 1;
                    ("skipped", format!("skipped at {when}: {result}"))
                }
                Some("cancelled") => {
                    cancelled += 1;
                    (
                        "cancelled",
                        format!("cancelled at {when} (the daemon was stopping): {result}"),
                    )
                }
                Some("interrupted") => {
                    interrupted += 1;
                    (
                        "interrupted",
                        format!("interrupted at {when}: the daemon died during the run: {result}"),
                    )
                }
                // A failed catch-up is a failure, not a catch-up.
                Some(_) if run.trigger == "catch_up" => {
                    failed += 1;
                    ("failed", format!("{ran_how}, and failed: {result}"))
                }
                Some(_) => {
                    failed += 1;
                    ("failed", format!("failed at {when}: {result}"))
                }
                // The daemon started again after this run began, yet it never ended.
                None if daemon.iter().any(|(t, up)| *up && *t > run.at) => {
                    interrupted += 1;
                    (
                        "interrupted",
                        format!(
                            "interrupted at {when}: no end recorded; the daemon stopped or crashed during the run, run {}",
                            run.id
                        ),
                    )
                }
                None => ("running", format!("running since {when}: {result}")),
            };
            (fate, Some(run), text)
        } else if let Some((reason, detail)) = skipped.get(occurrence) {
            skips += 1;
            let why = match reason.as_str() {
                "overlap" => "the previous run was still going",
                "too_late" => "too late",
                "superseded" => "folded into a later catch-up run",
                "clock_change" => "the clock was corrected forward past it",
                other => other,
            };
            ("skipped", None, format!("skipped ({why}): {detail}"))
        } else if !daemon_up(*occurrence) {
            missed += 1;
            ("missed", None, "missed: the daemon was not running".to_string())
        } else {
            (
                "no_record",
                None,
                "no record (the history was rotated, or the daemon stopped unexpectedly)"
                    .to_string(),
            )
        };
        lines.push(Line { at: *occurrence, fate, run, text });
    }
    let manual: Vec<Line> = manual
        .iter()
        .filter(|r| r.at > since)
        .map(|run| Line {
            at: run.at,
            fate: "manual",
            run: Some(run),
            text: match &run.lock_wait {
                Some(wait) => format!(
                    "manual run (backupnizza trigger) {}: {}",
                    describe_wait(wait),
                    describe_end(run)
                ),
                None => format!("manual run (backupnizza trigger): {}", describe_end(run)),
            },
        })
        .collect();
    let summary = format!(
        "{} occurrences; {ran} ran, {failed} failed, {caught_up} caught up, {skips} skipped, {missed} missed while the daemon was down, {cancelled} cancelled, {interrupted} interrupted",
        occurrences.len()
    );
    if args.json {
        let entry = |line: &Line, key: &str| {
            let mut object = serde_json::json!({
                key: rfc3339(line.at, tz),
                "fate": line.fate,
                "text": line.text,
            });
            if let Some(run) = line.run {
                let fields = object.as_object_mut().expect("built as an object");
                fields.insert("run_id".into(), run.id.clone().into());
                fields.insert("started".into(), rfc3339(run.at, tz).into());
                fields.insert("trigger".into(), run.trigger.clone().into());
                if let Some(wait) = &run.lock_wait {
                    fields.insert("lock_wait".into(), serde_json::json!(wait));
                }
                if let Some(d) = &run.deferred {
                    fields.insert("deferred".into(), serde_json::json!(d));
                }
                if let Some((status, code, ms, reason)) = &run.end {
                    fields.insert("status".into(), status.clone().into());
                    fields.insert("exit_code".into(), serde_json::json!(code));
                    fields.insert("duration_ms".into(), (*ms).into());
                    fields.insert("reason".into(), reason.clone().into());
                }
            }
            object
        };
        let document = serde_json::json!({
            "task": task.name,
            "schedule": task.schedule.to_string(),
            "zone": task.zone.name,
            "since": rfc3339(since, tz),
            "until": rfc3339(now, tz),
            "occurrences": lines.iter().map(|l| entry(l, "occurrence")).collect::<Vec<_>>(),
            "manual": manual.iter().map(|l| entry(l, "at")).collect::<Vec<_>>(),
            "summary": {
                "occurrences": occurrences.len(),
                "ran": ran,
                "failed": failed,
                "caught_up": caught_up,
                "skipped": skips,
                "missed": missed,
                "cancelled": cancelled,
                "interrupted": interrupted,
            },
            "unreadable_lines": loaded.bad_lines.len(),
        });
        return print(|out| writeln!(out, "{document}"));
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
        for line in lines[shown..].iter().chain(&manual) {
            writeln!(out, "{}  {}", rfc3339(line.at, tz), line.text)?;
        }
        writeln!(out, "summary: {summary}")?;
        if let Some(bad) = loaded.bad_lines_summary() {
            writeln!(out, "history: {bad}; what they held is not counted above")?;
        }
        Ok(())
    })
}

/// One occurrence (or manual run) and what became of it.
struct Line<'a> {
    at: Timestamp,
    /// `ran`, `caught_up`, `failed`, `skipped`, `cancelled`, `interrupted`, `running`,
    /// `missed`, `no_record` or `manual`: what scripts read from `--json`.
    fate: &'static str,
    run: Option<&'a Run>,
    text: String,
}

/// "after waiting 12s for lock repo (held by prune)".
fn describe_wait(wait: &crate::history::LockWait) -> String {
    let took = crate::time::Human(Duration::from_secs(wait.waited_ms / 1000));
    let by = wait.held_by.as_ref().map_or_else(String::new, |t| format!(" (held by {t})"));
    format!("after waiting {took} for lock {}{by}", wait.lock)
}

fn describe_end(run: &Run) -> String {
    match &run.end {
        Some((status, code, ms, reason)) => {
            let code = code.map(|c| format!("exit {c}, ")).unwrap_or_default();
            format!(
                "{status} ({code}{}) {reason}, run {}",
                crate::time::Human(Duration::from_secs(ms / 1000)),
                run.id
            )
        }
        None => format!("no end recorded (still running, or the daemon stopped), run {}", run.id),
    }
}
