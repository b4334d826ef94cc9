//! `backupnizza history [TASK] [--json]`: past runs and skipped occurrences, from the history
//! file (or the daemon's, over its socket: see [`super::control::load_history`]).
//!
//! The text form is one line per run or skip, with the snapshot a restic backup saved and,
//! under a run that did not succeed, the last lines it wrote on stderr. `--json` is for
//! scripts: one JSON object per line, a run's start and end records joined into one object.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::{load_config, print, require_task};
use crate::cli::HistoryArgs;
use crate::config::Environment;
use crate::history::{Record, RunEnd};
use crate::protocol::RunStatus;

/// stderr lines shown under a run that did not succeed (the record keeps up to 20).
const TAIL_SHOWN: usize = 5;

pub fn run(args: &HistoryArgs, env: &Environment) -> anyhow::Result<()> {
    let config = load_config(&args.config, env)?;
    if let Some(task) = &args.task {
        require_task(&config, task)?;
    }
    let (loaded, source) =
        super::control::load_history(&config, env, args.socket.as_deref(), args.task.as_deref())?;
    let records: Vec<&Record> = loaded
        .records
        .iter()
        .filter(|r| args.task.as_deref().is_none_or(|t| r.task() == Some(t)))
        .collect();
    let entries = if args.json { json_entries(&records) } else { text_entries(&records, args) };
    print(|out| {
        if entries.is_empty() && !args.json {
            writeln!(out, "no runs recorded in {source}")?;
        }
        let skip = entries.len().saturating_sub(args.count);
        for entry in &entries[skip..] {
            writeln!(out, "{entry}")?;
        }
        Ok(())
    })?;
    // On stderr, so scripts reading the lines above are not confused.
    if let Some(bad) = loaded.bad_lines_summary() {
        eprintln!("backupnizza: warning: run history: {bad}");
    }
    Ok(())
}

/// One entry per run end, skip and (without a task) daemon start or stop; an entry may
/// span several lines.
fn text_entries(records: &[&Record], args: &HistoryArgs) -> Vec<String> {
    let mut entries = Vec::new();
    for record in records {
        let entry = match record {
            Record::End(RunEnd {
                run_id,
                task,
                at,
                status,
                exit_code,
                duration_ms,
                reason,
                stderr_tail,
                backups,
                attempts,
                findings,
                verify,
            }) => {
                let code = exit_code.map_or_else(|| "-".into(), |c| format!("exit {c}"));
                let took = crate::time::Took(Duration::from_millis(*duration_ms));
                let mut entry = format!("{at}  {task}  {status}  {code}  {took}  {run_id}");
                for b in backups {
                    if b.unchanged {
                        entry.push_str("  unchanged (no snapshot)");
                    } else {
                        entry.push_str(&format!("  snapshot {}", short_id(&b.snapshot_id)));
                    }
                    if b.partial {
                        entry.push_str(" (partial)");
                    }
                }
                entry.push_str(&format!("  {reason}"));
                for a in attempts {
                    let code = a.exit_code.map_or_else(String::new, |c| format!(", exit {c}"));
                    entry.push_str(&format!(
                        "\n    attempt {} {}{code} at {}: {}",
                        a.number, a.status, a.at, a.reason
                    ));
                }
                for f in findings {
                    entry.push_str(&format!("\n    ! audit: {}", f.detail));
                }
                if let Some(v) = verify {
                    entry.push_str(&verify_lines(v));
                }
                if !status.is_ok() && *status != RunStatus::Skipped {
                    let from = stderr_tail.len().saturating_sub(TAIL_SHOWN);
                    for line in &stderr_tail[from..] {
                        entry.push_str(&format!("\n    | {line}"));
                    }
                }
                entry
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
        entries.push(entry);
    }
    entries
}

/// A verifier's run, under its entry: what it compared, read and restored, and what failed.
fn verify_lines(v: &crate::history::Verification) -> String {
    let mut out = format!(
        "\n    verified {}: sampled {}, matched {}, mismatched {}, skipped {} (changed since), canaries {} (seed {})",
        v.snapshots.join(" "),
        v.sampled,
        v.matched,
        v.mismatched,
        v.skipped,
        v.canaries,
        v.seed
    );
    if let Some(subset) = &v.subset {
        let cycle = v
            .cycle_completed
            .as_deref()
            .map_or_else(|| "no full cycle yet".to_string(), |at| format!("last full cycle {at}"));
        out.push_str(&format!("\n    data check: subset {subset} read ({cycle})"));
    }
    if let Some(d) = &v.drill {
        out.push_str(&format!(
            "\n    drill: restored {} files, {} bytes (snapshot: {} files, {} bytes){}",
            d.files,
            d.bytes,
            d.expected_files,
            d.expected_bytes,
            if d.restic_verified { ", read back by restic --verify" } else { "" }
        ));
    }
    for p in &v.problems {
        out.push_str(&format!("\n    ! verify: {p}"));
    }
    out
}

/// restic's short form of a snapshot id.
pub(super) fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// One JSON object per run (its start and end joined; `status` is `running` until it ends)
/// and per skip record, in the order they began.
fn json_entries(records: &[&Record]) -> Vec<String> {
    let mut objects: Vec<Value> = Vec::new();
    let mut by_run: HashMap<&str, usize> = HashMap::new();
    for record in records {
        match record {
            Record::Start { run_id, task, at, scheduled, trigger, .. } => {
                by_run.insert(run_id, objects.len());
                objects.push(json!({
                    "type": "run",
                    "run_id": run_id,
                    "task": task,
                    "trigger": trigger.as_str(),
                    "scheduled": scheduled,
                    "started": at,
                    "ended": null,
                    "status": "running",
                }));
            }
            Record::End(RunEnd {
                run_id,
                task,
                at,
                status,
                exit_code,
                duration_ms,
                reason,
                stderr_tail,
                backups,
                attempts,
                findings,
                verify,
            }) => {
                // A start rotated out of the kept generations: the end stands alone.
                let idx = *by_run.entry(run_id).or_insert_with(|| {
                    objects.push(json!({"type": "run", "run_id": run_id, "task": task}));
                    objects.len() - 1
                });
                let total = crate::restic::total(backups);
                let object = objects[idx].as_object_mut().expect("built as an object");
                for (key, value) in [
                    ("ended", json!(at)),
                    ("status", json!(status.as_str())),
                    ("exit_code", json!(exit_code)),
                    ("duration_ms", json!(duration_ms)),
                    ("reason", json!(reason)),
                    ("stderr_tail", json!(stderr_tail)),
                    ("snapshot_id", json!(total.as_ref().map(|t| &t.snapshot_id))),
                    ("data_added", json!(total.as_ref().map(|t| t.data_added))),
                    ("backups", json!(backups)),
                    ("attempts", json!(attempts)),
                    ("findings", json!(findings)),
                    ("verify", json!(verify)),
                ] {
                    object.insert(key.into(), value);
                }
            }
            Record::Skip { task, at, scheduled, count, reason, detail } => {
                objects.push(json!({
                    "type": "skip",
                    "task": task,
                    "at": at,
                    "scheduled": scheduled,
                    "count": count,
                    "reason": reason.as_str(),
                    "detail": detail,
                }));
            }
            Record::Daemon { .. } => {}
        }
    }
    objects.iter().map(Value::to_string).collect()
}
