//! `backupnizza explain TASK [--since 7d]`: every occurrence of a task in a window and what
//! became of it — ran, failed, caught up after a suspend, skipped (overlap, too late, folded
//! into a catch-up), or missed because the daemon was not running — from the run history.
//! Occurrences before the daemon's first start are not missed (there was no daemon yet):
//! they are counted in one line, not listed.

use std::collections::BTreeMap;
use std::time::Duration;

use std::io::Write;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::{load_config, print, require_task};
use crate::cli::ExplainArgs;
use crate::config::{Environment, Task};
use crate::history::{Record, RunEnd};
use crate::schedule::timetable::Trigger;
use crate::time::rfc3339;

/// Most occurrences listed (a minutely task over a week has ten thousand).
const MAX_LINES: usize = 500;

/// A run of the task, from its Start record and its End record (if any).
struct Run {
    id: String,
    at: Timestamp,
    trigger: String,
    end: Option<End>,
    lock_wait: Option<crate::history::LockWait>,
    deferred: Option<crate::history::Deferred>,
}

/// How a run ended, as its End record says.
#[derive(Clone)]
struct End {
    status: String,
    exit_code: Option<i32>,
    duration_ms: u64,
    reason: String,
}

/// Occurrences a Skip record covers: why, and its detail.
struct Skipped {
    reason: String,
    detail: String,
}

/// The daemon started (`up`) or stopped at `at`.
struct DaemonMark {
    at: Timestamp,
    up: bool,
}

/// What the history says of one task: runs by the occurrence they belong to (and earlier
/// runs of an occurrence that ran again after an interrupted run), manual runs, skips
/// expanded per occurrence, and the daemon's starts and stops.
#[derive(Default)]
struct Story {
    by_occurrence: BTreeMap<Timestamp, Run>,
    earlier: BTreeMap<Timestamp, Vec<Run>>,
    manual: Vec<Run>,
    skipped: BTreeMap<Timestamp, Skipped>,
    daemon: Vec<DaemonMark>,
}

/// What became of the occurrences, counted.
#[derive(Default)]
struct Counts {
    ran: usize,
    failed: usize,
    caught_up: usize,
    skipped: usize,
    missed: usize,
    cancelled: usize,
    interrupted: usize,
}

fn time(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok()
}

pub fn run(args: &ExplainArgs, env: &Environment) -> anyhow::Result<()> {
    let config = load_config(&args.config, env)?;
    let task = require_task(&config, &args.task)?;
    let tz = &task.zone.tz;
    let (loaded, _) =
        super::control::load_history(&config, env, args.socket.as_deref(), Some(&task.name))?;
    let now = Timestamp::now();
    let since =
        now - SignedDuration::try_from(args.since).unwrap_or(SignedDuration::from_hours(24 * 7));
    let story = Story::read(&loaded.records, task);
    let mut occurrences = story.occurrences(task, since, now);
    // Occurrences before the daemon's first start are left out rather than called missed:
    // no daemon existed to miss them. Only the count is said.
    let listed = occurrences.len();
    occurrences.retain(|o| !story.before_first_start(*o));
    let before_first_start = listed - occurrences.len();
    let mut counts = Counts::default();
    let mut lines: Vec<Line> = Vec::new();
    for occurrence in &occurrences {
        for run in story.earlier.get(occurrence).into_iter().flatten() {
            let when = rfc3339(run.at, tz);
            if run.end.as_ref().is_none_or(|e| e.status == "interrupted") {
                counts.interrupted += 1;
            }
            lines.push(Line {
                at: *occurrence,
                fate: "interrupted",
                run: Some(run),
                text: format!("interrupted at {when}, and run again below: {}", describe_end(run)),
            });
        }
        lines.push(story.fate(*occurrence, tz, &mut counts));
    }
    let manual: Vec<Line> = story.manual.iter().filter(|r| r.at > since).map(manual_line).collect();
    let report = Report {
        task,
        since,
        now,
        occurrences: occurrences.len(),
        before_first_start: (before_first_start, story.first_start()),
        counts,
        lines,
        manual,
    };
    if args.json {
        let document = report.json(loaded.bad_lines.len());
        return print(|out| writeln!(out, "{document}"));
    }
    print(|out| report.write(out, loaded.bad_lines_summary()))
}

impl Story {
    fn read(records: &[Record], task: &Task) -> Story {
        let mut story = Story::default();
        let mut ends: BTreeMap<String, End> = BTreeMap::new();
        for record in records {
            match record {
                Record::End(RunEnd {
                    run_id,
                    task: t,
                    status,
                    exit_code,
                    duration_ms,
                    reason,
                    ..
                }) if t == &task.name => {
                    let end = End {
                        status: status.as_str().to_string(),
                        exit_code: *exit_code,
                        duration_ms: *duration_ms,
                        reason: reason.clone(),
                    };
                    ends.insert(run_id.clone(), end);
                }
                Record::Daemon { event, at, .. } => {
                    if let Some(at) = time(at) {
                        let up = *event == crate::history::DaemonEvent::Start;
                        story.daemon.push(DaemonMark { at, up });
                    }
                }
                _ => {}
            }
        }
        for record in records {
            match record {
                Record::Start {
                    run_id,
                    task: t,
                    at,
                    scheduled,
                    trigger,
                    lock_wait,
                    deferred,
                    ..
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
                    story.add_run(run, scheduled.as_deref().and_then(time), *trigger);
                }
                Record::Skip { task: t, scheduled, count, reason, detail, .. }
                    if t == &task.name =>
                {
                    let Some(first) = time(scheduled) else { continue };
                    story.add_skips(task, first, *count, (reason.as_str(), detail));
                }
                _ => {}
            }
        }
        story
    }

    fn add_run(&mut self, run: Run, occurrence: Option<Timestamp>, trigger: Trigger) {
        match occurrence {
            Some(occurrence) if trigger != Trigger::Manual => {
                if let Some(before) = self.by_occurrence.insert(occurrence, run) {
                    self.earlier.entry(occurrence).or_default().push(before);
                }
            }
            _ => self.manual.push(run),
        }
    }

    /// A Skip record's occurrences, one by one from the first.
    fn add_skips(
        &mut self,
        task: &Task,
        first: Timestamp,
        count: u64,
        (reason, detail): (&str, &str),
    ) {
        let mut occurrence = first;
        for _ in 0..count.min(100_000) {
            self.skipped.entry(occurrence).or_insert_with(|| Skipped {
                reason: reason.to_string(),
                detail: detail.to_string(),
            });
            match task.schedule.next_after(occurrence, &task.zone.tz) {
                Some(next) => occurrence = next,
                None => break,
            }
        }
    }

    /// Whether the daemon was running at `at` (its last start or stop before then).
    fn daemon_up(&self, at: Timestamp) -> bool {
        self.daemon.iter().filter(|m| m.at <= at).max_by_key(|m| m.at).is_some_and(|m| m.up)
    }

    /// The daemon's first start, when it is the first thing the history says of the daemon
    /// (a stop first means the rotation dropped the start before it).
    fn first_start(&self) -> Option<Timestamp> {
        self.daemon.iter().min_by_key(|m| m.at).filter(|m| m.up).map(|m| m.at)
    }

    /// Whether `occurrence` has no record of its own and comes before the daemon's first
    /// start (or the history has no daemon start or stop at all): no daemon existed yet to
    /// miss it. An occurrence with a record is told whatever its date.
    fn before_first_start(&self, occurrence: Timestamp) -> bool {
        let recorded = self.by_occurrence.contains_key(&occurrence)
            || self.skipped.contains_key(&occurrence)
            || self.earlier.contains_key(&occurrence);
        let never_seen = self.daemon.is_empty();
        !recorded && (never_seen || self.first_start().is_some_and(|first| occurrence < first))
    }

    /// The occurrences in the window: from the schedule (cron), or as recorded (`@every`
    /// counts from each daemon start, so only the history knows its instants).
    fn occurrences(&self, task: &Task, since: Timestamp, now: Timestamp) -> Vec<Timestamp> {
        let mut occurrences: Vec<Timestamp> = Vec::new();
        if task.schedule.interval().is_some() {
            let recorded = self.by_occurrence.keys().chain(self.skipped.keys()).copied();
            occurrences.extend(recorded.filter(|o| *o > since && *o <= now));
            occurrences.sort();
            occurrences.dedup();
        } else {
            let mut t = since;
            while let Some(next) = task.schedule.next_after(t, &task.zone.tz).filter(|n| *n <= now)
            {
                occurrences.push(next);
                t = next;
                if occurrences.len() > 100_000 {
                    break;
                }
            }
        }
        occurrences
    }

    /// What became of one occurrence: its run, its skip, or why there is neither.
    fn fate<'a>(&'a self, occurrence: Timestamp, tz: &TimeZone, counts: &mut Counts) -> Line<'a> {
        let (fate, run, text) = if let Some(run) = self.by_occurrence.get(&occurrence) {
            let (fate, text) = self.run_fate(run, occurrence, tz, counts);
            (fate, Some(run), text)
        } else if let Some(Skipped { reason, detail }) = self.skipped.get(&occurrence) {
            counts.skipped += 1;
            let why = match reason.as_str() {
                "overlap" => "the previous run was still going",
                "too_late" => "too late",
                "superseded" => "folded into a later catch-up run",
                "clock_change" => "the clock was corrected forward past it",
                "paused" => "`backupnizza pause` held the task",
                other => other,
            };
            ("skipped", None, format!("skipped ({why}): {detail}"))
        } else if !self.daemon_up(occurrence) {
            counts.missed += 1;
            ("missed", None, "missed: the daemon was not running".to_string())
        } else {
            let why = "no record (the history was rotated, or the daemon stopped unexpectedly)";
            ("no_record", None, why.to_string())
        };
        Line { at: occurrence, fate, run, text }
    }

    /// An occurrence that ran: how (on time, caught up, after a deferral or a lock) and how
    /// it ended.
    fn run_fate(
        &self,
        run: &Run,
        occurrence: Timestamp,
        tz: &TimeZone,
        counts: &mut Counts,
    ) -> (&'static str, String) {
        let result = describe_end(run);
        let when = rfc3339(run.at, tz);
        let catch_up = run.trigger == "catch_up";
        let ran_how = describe_start(run, occurrence, &when);
        match run.end.as_ref().map(|e| e.status.as_str()) {
            Some("success" | "warning") if catch_up => {
                counts.caught_up += 1;
                ("caught_up", format!("{ran_how}: {result}"))
            }
            Some("success" | "warning") => {
                counts.ran += 1;
                ("ran", format!("{ran_how}: {result}"))
            }
            Some("skipped") => {
                counts.skipped += 1;
                ("skipped", format!("skipped at {when}: {result}"))
            }
            Some("cancelled") => {
                counts.cancelled += 1;
                ("cancelled", format!("cancelled at {when} (the daemon was stopping): {result}"))
            }
            Some("interrupted") => {
                counts.interrupted += 1;
                let text =
                    format!("interrupted at {when}: the daemon died during the run: {result}");
                ("interrupted", text)
            }
            // A failed catch-up is a failure, not a catch-up.
            Some(_) if catch_up => {
                counts.failed += 1;
                ("failed", format!("{ran_how}, and failed: {result}"))
            }
            Some(_) => {
                counts.failed += 1;
                ("failed", format!("failed at {when}: {result}"))
            }
            // The daemon started again after this run began, yet it never ended.
            None if self.daemon.iter().any(|m| m.up && m.at > run.at) => {
                counts.interrupted += 1;
                let text = format!(
                    "interrupted at {when}: no end recorded; the daemon stopped or crashed during the run, run {}",
                    run.id
                );
                ("interrupted", text)
            }
            None => ("running", format!("running since {when}: {result}")),
        }
    }
}

/// "ran at …" or "caught up after suspend or downtime at … (… late)", with how long it was
/// deferred and how long it waited for its lock.
fn describe_start(run: &Run, occurrence: Timestamp, when: &str) -> String {
    let mut ran_how = if run.trigger == "catch_up" {
        let late = Duration::try_from(run.at.duration_since(occurrence)).unwrap_or_default();
        let late = crate::time::Took(late);
        format!("caught up after suspend or downtime at {when} ({late} late)")
    } else {
        format!("ran at {when}")
    };
    if let Some(d) = &run.deferred {
        let took = crate::time::Took(Duration::from_millis(d.waited_ms));
        ran_how.push_str(&format!(" (deferred {took}: {})", d.why));
    }
    if let Some(wait) = &run.lock_wait {
        ran_how.push_str(&format!(" {}", describe_wait(wait)));
    }
    ran_how
}

fn manual_line(run: &Run) -> Line<'_> {
    let text = match &run.lock_wait {
        Some(wait) => format!(
            "manual run (backupnizza trigger) {}: {}",
            describe_wait(wait),
            describe_end(run)
        ),
        None => format!("manual run (backupnizza trigger): {}", describe_end(run)),
    };
    Line { at: run.at, fate: "manual", run: Some(run), text }
}

/// The explanation, ready to print as text or as JSON.
struct Report<'a> {
    task: &'a Task,
    since: Timestamp,
    now: Timestamp,
    occurrences: usize,
    /// How many occurrences in the window came before the daemon's first start (not
    /// listed), and that start, if the history has one.
    before_first_start: (usize, Option<Timestamp>),
    counts: Counts,
    lines: Vec<Line<'a>>,
    manual: Vec<Line<'a>>,
}

impl Report<'_> {
    fn summary(&self) -> String {
        let Counts { ran, failed, caught_up, skipped, missed, cancelled, interrupted } =
            self.counts;
        format!(
            "{} occurrences; {ran} ran, {failed} failed, {caught_up} caught up, {skipped} skipped, {missed} missed while the daemon was down, {cancelled} cancelled, {interrupted} interrupted",
            self.occurrences
        )
    }

    fn json(&self, unreadable: usize) -> serde_json::Value {
        let tz = &self.task.zone.tz;
        let c = &self.counts;
        serde_json::json!({
            "task": self.task.name,
            "schedule": self.task.schedule.to_string(),
            "zone": self.task.zone.name,
            "since": rfc3339(self.since, tz),
            "until": rfc3339(self.now, tz),
            "occurrences": self.lines.iter().map(|l| l.json("occurrence", tz)).collect::<Vec<_>>(),
            "manual": self.manual.iter().map(|l| l.json("at", tz)).collect::<Vec<_>>(),
            "summary": {
                "occurrences": self.occurrences,
                "ran": c.ran,
                "failed": c.failed,
                "caught_up": c.caught_up,
                "skipped": c.skipped,
                "missed": c.missed,
                "cancelled": c.cancelled,
                "interrupted": c.interrupted,
                "before_first_start": self.before_first_start.0,
            },
            "unreadable_lines": unreadable,
        })
    }

    fn write(&self, out: &mut dyn Write, bad_lines: Option<String>) -> std::io::Result<()> {
        let (task, tz) = (self.task, &self.task.zone.tz);
        writeln!(
            out,
            "{} ({}, {}): occurrences from {} to {}",
            task.name,
            task.schedule,
            task.zone.name,
            rfc3339(self.since, tz),
            rfc3339(self.now, tz)
        )?;
        if task.schedule.interval().is_some() {
            writeln!(
                out,
                "(an @every schedule counts from each daemon start: only recorded occurrences are listed)"
            )?;
        }
        match self.before_first_start {
            (0, _) => {}
            (n, Some(first)) => writeln!(
                out,
                "({n} earlier occurrence{} not listed: before the daemon's first start, at {})",
                if n == 1 { "" } else { "s" },
                rfc3339(first, tz)
            )?,
            (n, None) => writeln!(
                out,
                "({n} occurrence{} not listed: the history records no daemon start)",
                if n == 1 { "" } else { "s" }
            )?,
        }
        let shown = self.occurrences.saturating_sub(MAX_LINES);
        if shown > 0 {
            writeln!(out, "({shown} earlier occurrences not shown)")?;
        }
        for line in self.lines[shown..].iter().chain(&self.manual) {
            writeln!(out, "{}  {}", rfc3339(line.at, tz), line.text)?;
        }
        writeln!(out, "summary: {}", self.summary())?;
        if let Some(bad) = bad_lines {
            writeln!(out, "history: {bad}; what they held is not counted above")?;
        }
        Ok(())
    }
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

impl Line<'_> {
    /// The line in `--json`: the occurrence (or start) under `key`, with its run's facts.
    fn json(&self, key: &str, tz: &TimeZone) -> serde_json::Value {
        let mut object = serde_json::json!({
            key: rfc3339(self.at, tz),
            "fate": self.fate,
            "text": self.text,
        });
        if let Some(run) = self.run {
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
            if let Some(end) = &run.end {
                fields.insert("status".into(), end.status.clone().into());
                fields.insert("exit_code".into(), serde_json::json!(end.exit_code));
                fields.insert("duration_ms".into(), end.duration_ms.into());
                fields.insert("reason".into(), end.reason.clone().into());
            }
        }
        object
    }
}

/// "after waiting 12s for lock repo (held by prune)".
fn describe_wait(wait: &crate::history::LockWait) -> String {
    let took = crate::time::Took(Duration::from_millis(wait.waited_ms));
    let by = wait.held_by.as_ref().map_or_else(String::new, |t| format!(" (held by {t})"));
    format!("after waiting {took} for lock {}{by}", wait.lock)
}

fn describe_end(run: &Run) -> String {
    match &run.end {
        Some(End { status, exit_code, duration_ms, reason }) => {
            let code = exit_code.map(|c| format!("exit {c}, ")).unwrap_or_default();
            format!(
                "{status} ({code}{}) {reason}, run {}",
                crate::time::Took(Duration::from_millis(*duration_ms)),
                run.id
            )
        }
        None => format!("no end recorded (still running, or the daemon stopped), run {}", run.id),
    }
}
