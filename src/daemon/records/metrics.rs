//! Prometheus metrics as a text file (`metrics_textfile:`), for node_exporter's textfile
//! collector: rewritten atomically (a temporary file renamed over the old one) at start and
//! after every run. Labels are task names and rejection reasons only: never a secret, a
//! repository URL or a path.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use jiff::Timestamp;

/// What the daemon knows about one task, for the metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskMetrics {
    pub last_start: Option<Timestamp>,
    pub last_end: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    pub last_exit_code: Option<i32>,
    pub last_duration_seconds: Option<f64>,
    /// Since the daemon started.
    pub runs: u64,
    pub failures: u64,
    /// Occurrences that did not run (overlap, too late, superseded, a `before` hook's 75).
    pub skips: u64,
    /// Runs that had to wait for their `when:` or `blackout:` since the daemon started.
    pub deferrals: u64,
    pub next: Option<Timestamp>,
    /// The figures of the last run that saved restic snapshots (added up over its steps).
    pub last_backup: Option<crate::restic::BackupSummary>,
    /// What the task's last audit found (audit tasks only).
    pub audit_findings: Option<usize>,
    /// A verifier: files whose restored content differed in its last run that compared.
    pub verify_mismatches: Option<u64>,
    /// A backup task: when a verifier last proved its newest snapshot restorable.
    pub last_verified: Option<Timestamp>,
    /// Its last success is too old (see the state owner's `vigil`).
    pub overdue: bool,
    /// `backupnizza pause` holds it.
    pub paused: bool,
}

/// What one ended run (seen as it ends, or read back from its End record at start) tells
/// the metrics that its End record holds.
pub(crate) struct Ended<'a> {
    pub exit_code: Option<i32>,
    pub seconds: f64,
    pub ok: bool,
    pub backups: &'a [crate::restic::BackupSummary],
    /// `Some(findings)` for an audit task's run.
    pub audit: Option<usize>,
    /// What a verifier's run proved.
    pub verify: Option<&'a crate::history::Verification>,
}

impl TaskMetrics {
    pub(crate) fn ended(&mut self, run: &Ended<'_>) {
        self.last_exit_code = run.exit_code;
        self.last_duration_seconds = Some(run.seconds);
        if let Some(total) = crate::restic::total(run.backups) {
            self.last_backup = Some(total);
        }
        // A failed audit without findings (restic could not list) measured nothing.
        if let Some(findings) = run.audit.filter(|n| run.ok || *n > 0) {
            self.audit_findings = Some(findings);
        }
        if let Some(v) = run.verify {
            self.verify_mismatches = Some(v.mismatched);
        }
    }
}

/// Token counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenMetrics {
    pub minted: u64,
    pub redeemed: u64,
    pub rejected: Vec<(&'static str, u64)>,
}

fn seconds(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// One family of per-task samples: name, type, help, and the task's value (none: no
/// sample for that task).
type TaskFamily = (&'static str, &'static str, &'static str, fn(&TaskMetrics) -> Option<f64>);

/// The per-task families, in the order the file lists them.
const TASK_FAMILIES: &[TaskFamily] = &[
    (
        "backupnizza_task_last_start_timestamp_seconds",
        "gauge",
        "When the task's last run started.",
        |m| m.last_start.map(seconds),
    ),
    (
        "backupnizza_task_last_end_timestamp_seconds",
        "gauge",
        "When the task's last run ended.",
        |m| m.last_end.map(seconds),
    ),
    (
        "backupnizza_task_last_success_timestamp_seconds",
        "gauge",
        "When the task last ended successfully (success or warning).",
        |m| m.last_success.map(seconds),
    ),
    (
        "backupnizza_task_last_exit_code",
        "gauge",
        "Exit code of the last run's deciding step (-1 when it had none: timeout, refused).",
        |m| m.last_end.map(|_| f64::from(m.last_exit_code.unwrap_or(-1))),
    ),
    ("backupnizza_task_last_duration_seconds", "gauge", "How long the last run took.", |m| {
        m.last_duration_seconds
    }),
    ("backupnizza_task_runs_total", "counter", "Runs since the daemon started.", |m| {
        Some(m.runs as f64)
    }),
    ("backupnizza_task_failures_total", "counter", "Failed runs since the daemon started.", |m| {
        Some(m.failures as f64)
    }),
    (
        "backupnizza_task_skips_total",
        "counter",
        "Occurrences that did not run since the daemon started.",
        |m| Some(m.skips as f64),
    ),
    (
        "backupnizza_task_deferrals_total",
        "counter",
        "Runs that waited for their run conditions (when:, blackout:) since the daemon started.",
        |m| Some(m.deferrals as f64),
    ),
    ("backupnizza_task_next_fire_timestamp_seconds", "gauge", "When the task fires next.", |m| {
        m.next.map(seconds)
    }),
    (
        "backupnizza_task_last_backup_data_added_bytes",
        "gauge",
        "Bytes the last restic backup added to the repository.",
        |m| m.last_backup.as_ref().map(|b| b.data_added as f64),
    ),
    (
        "backupnizza_task_last_backup_files_new",
        "gauge",
        "Files the last restic backup found new.",
        |m| m.last_backup.as_ref().map(|b| b.files_new as f64),
    ),
    (
        "backupnizza_task_last_backup_files_changed",
        "gauge",
        "Files the last restic backup found changed.",
        |m| m.last_backup.as_ref().map(|b| b.files_changed as f64),
    ),
    (
        "backupnizza_task_last_backup_files_unmodified",
        "gauge",
        "Files the last restic backup found unchanged.",
        |m| m.last_backup.as_ref().map(|b| b.files_unmodified as f64),
    ),
    (
        "backupnizza_task_last_backup_processed_bytes",
        "gauge",
        "Bytes the last restic backup read.",
        |m| m.last_backup.as_ref().map(|b| b.total_bytes_processed as f64),
    ),
    (
        "backupnizza_task_last_backup_duration_seconds",
        "gauge",
        "How long the last restic backup took, as restic measured it.",
        |m| m.last_backup.as_ref().map(|b| b.total_duration),
    ),
    (
        "backupnizza_audit_findings",
        "gauge",
        "Problems the task's last snapshot audit found (missing, replaced, changed, unrecorded or stale snapshots).",
        |m| m.audit_findings.map(|n| n as f64),
    ),
    (
        "backupnizza_verify_last_success_timestamp_seconds",
        "gauge",
        "When the verifier's last successful run ended (its snapshots restored and matched).",
        // A verifier's last success (re-read after clock changes like the others).
        |m| m.verify_mismatches.and(m.last_success).map(seconds),
    ),
    (
        "backupnizza_verify_mismatches",
        "gauge",
        "Files whose restored content differed from the source in the verifier's last run.",
        |m| m.verify_mismatches.map(|n| n as f64),
    ),
    (
        "backupnizza_task_last_verified_timestamp_seconds",
        "gauge",
        "When a verifier last proved the task's newest snapshot restorable.",
        |m| m.last_verified.map(seconds),
    ),
    (
        "backupnizza_task_overdue",
        "gauge",
        "1 when the task's last success is too old (two occurrences missed, or its audit's max_age), else 0; manual tasks have no sample.",
        |m| m.next.map(|_| f64::from(u8::from(m.overdue))),
    ),
    (
        "backupnizza_task_paused",
        "gauge",
        "1 while `backupnizza pause` holds the task, else 0.",
        |m| Some(f64::from(u8::from(m.paused))),
    ),
];

/// Renders the exposition text.
pub(crate) fn render(
    tasks: &[(&str, &TaskMetrics)],
    tokens: &TokenMetrics,
    started: Timestamp,
) -> String {
    let mut out = String::new();
    let once = |value: f64| vec![(String::new(), value)];
    family(
        &mut out,
        ("backupnizza_start_time_seconds", "gauge", "When the daemon started (Unix time)."),
        once(seconds(started)),
    );
    for (name, kind, help, value) in TASK_FAMILIES {
        let samples = tasks.iter().filter_map(|(task, m)| value(m).map(|v| (label(task), v)));
        family(&mut out, (name, kind, help), samples.collect());
    }
    family(
        &mut out,
        ("backupnizza_tokens_minted_total", "counter", "One-time tokens issued."),
        once(tokens.minted as f64),
    );
    family(
        &mut out,
        ("backupnizza_tokens_redeemed_total", "counter", "Secrets handed out for a token."),
        once(tokens.redeemed as f64),
    );
    let rejected = tokens.rejected.iter().map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n as f64));
    family(
        &mut out,
        (
            "backupnizza_tokens_rejected_total",
            "counter",
            "Refused redemptions and connections, by reason.",
        ),
        rejected.collect(),
    );
    out
}

/// One family: its `HELP` and `TYPE` lines, then a line per sample (labels and value).
fn family(out: &mut String, (name, kind, help): (&str, &str, &str), samples: Vec<(String, f64)>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// A task's label, masked raw before the exposition format escapes it (a task name is no
/// secret, but this file is world-readable).
fn label(task: &str) -> String {
    let task = crate::redact::redact(task);
    format!("{{task=\"{}\"}}", task.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Writes `text` to `path` atomically: a temporary file beside it, then a rename.
pub(crate) fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".backupnizza-metrics").tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_data()?;
    // node_exporter runs as another user: the file is readable by all (it holds no secrets).
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_with_help_and_type() {
        let m = TaskMetrics {
            runs: 2,
            last_exit_code: Some(0),
            last_end: Some(Timestamp::from_second(100).unwrap()),
            ..Default::default()
        };
        let text = render(
            &[("docs", &m)],
            &TokenMetrics { minted: 3, redeemed: 2, rejected: vec![("used", 1)] },
            Timestamp::UNIX_EPOCH,
        );
        assert!(
            text.contains("# TYPE backupnizza_task_runs_total counter\nbackupnizza_task_runs_total{task=\"docs\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("backupnizza_task_last_end_timestamp_seconds{task=\"docs\"} 100\n"),
            "{text}"
        );
        assert!(text.contains("backupnizza_tokens_rejected_total{reason=\"used\"} 1\n"), "{text}");
        assert!(
            !text.contains("last_start_timestamp_seconds{"),
            "absent values are not invented: {text}"
        );
    }
}
