//! The Grafana dashboard in examples/: it has what Grafana's import needs, and every metric
//! its queries name is one a real daemon writes into its metrics file, with the type the
//! query assumes (`rate`, `increase` only over counters). A renamed or removed metric fails
//! here, not on a sysadmin's screen as an empty panel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::harness::{Scratch, TRIGGERED, trigger, wait_until};

/// The words a query may use besides metric names: PromQL functions, aggregations and
/// keywords, and Grafana's `label_values`. Anything else shaped like an identifier is taken
/// for a metric name, and must then be one of the daemon's.
const PROMQL_WORDS: &[&str] = &[
    "time",
    "rate",
    "increase",
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "by",
    "without",
    "and",
    "or",
    "unless",
    "label_values",
];

/// Functions that only make sense over a counter.
const COUNTER_FUNCTIONS: &[&str] = &["rate", "increase"];

/// The labels a query may name: the daemon's own, and those Prometheus adds when it
/// scrapes node_exporter.
const LABELS: &[&str] = &["task", "reason", "instance", "job"];

/// What one query names.
#[derive(Debug, Default)]
struct Scan {
    /// Every `backupnizza_*` metric.
    metrics: Vec<String>,
    /// The metrics read through `rate` or `increase`.
    counted: Vec<String>,
    /// Other identifiers (functions, keywords, or a metric of someone else's).
    words: Vec<String>,
    /// Label names in matchers, `by (...)` lists and `label_values`' second argument.
    labels: Vec<String>,
    /// Dashboard variables (`$task`, `${task}`).
    variables: Vec<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Reads an identifier starting at `i`; returns it and the index after it.
fn ident(chars: &[char], mut i: usize) -> (String, usize) {
    let start = i;
    while i < chars.len() && is_ident(chars[i]) {
        i += 1;
    }
    (chars[start..i].iter().collect(), i)
}

/// Reads a `$name` or `${name}` variable at `i` (on the `$`).
fn variable(chars: &[char], i: usize) -> (String, usize) {
    if chars.get(i + 1) == Some(&'{') {
        let end = chars[i..].iter().position(|&c| c == '}').map_or(chars.len(), |p| i + p);
        (chars[i + 2..end].iter().collect(), end + 1)
    } else {
        ident(chars, i + 1)
    }
}

/// Skips a quoted string at `i` (on the quote), collecting the variables inside it.
fn string(chars: &[char], mut i: usize, scan: &mut Scan) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != quote {
        match chars[i] {
            '\\' => i += 2,
            '$' => {
                let (name, next) = variable(chars, i);
                scan.variables.push(name);
                i = next;
            }
            _ => i += 1,
        }
    }
    i + 1
}

/// Reads the label names of a `{...}` matcher or a `(...)` grouping list at `i` (on the
/// opening bracket) up to `close`.
fn label_list(chars: &[char], mut i: usize, close: char, scan: &mut Scan) -> usize {
    i += 1;
    while i < chars.len() && chars[i] != close {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = string(chars, i, scan);
        } else if is_ident_start(c) {
            let (name, next) = ident(chars, i);
            scan.labels.push(name);
            i = next;
        } else {
            i += 1;
        }
    }
    i + 1
}

/// Names what a PromQL expression uses. A small scanner rather than a PromQL parser: the
/// dashboard keeps its queries simple, and whatever this cannot place ends up in `words`,
/// where the test refuses it.
fn scan(expr: &str) -> Scan {
    let chars: Vec<char> = expr.chars().collect();
    let mut scan = Scan::default();
    let mut counter_function = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = string(&chars, i, &mut scan);
        } else if c == '{' {
            i = label_list(&chars, i, '}', &mut scan);
        } else if c == '[' {
            // A range (`[1h]`) or a subquery's (`[1h:5m]`): durations, no names.
            i = chars[i..].iter().position(|&c| c == ']').map_or(chars.len(), |p| i + p + 1);
        } else if c == '$' {
            let (name, next) = variable(&chars, i);
            scan.variables.push(name);
            i = next;
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (`86400`, `1e3`, `5m`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let (word, next) = ident(&chars, i);
            i = next;
            if word == "by" || word == "without" {
                while chars.get(i).is_some_and(char::is_ascii_whitespace) {
                    i += 1;
                }
                if chars.get(i) == Some(&'(') {
                    i = label_list(&chars, i, ')', &mut scan);
                }
            } else if word.starts_with("backupnizza_") {
                if counter_function {
                    scan.counted.push(word.clone());
                    counter_function = false;
                }
                scan.metrics.push(word);
            } else {
                counter_function = COUNTER_FUNCTIONS.contains(&word.as_str());
                scan.words.push(word);
            }
        } else {
            i += 1;
        }
    }
    scan
}

/// A templating query: `label_values(SELECTOR, LABEL)` names a label after the comma,
/// which PromQL would not; anything else is PromQL.
fn scan_variable_query(query: &str) -> Scan {
    let inner = query.trim().strip_prefix("label_values(").and_then(|q| q.strip_suffix(')'));
    match inner.and_then(|q| q.rsplit_once(',')) {
        Some((selector, label)) => {
            let mut scan = scan(selector);
            scan.words.push("label_values".into());
            scan.labels.push(label.trim().to_string());
            scan
        }
        None => scan(query),
    }
}

/// A string that is there and not blank.
fn filled(value: &Value) -> Option<&str> {
    value.as_str().filter(|s| !s.trim().is_empty())
}

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, those inside collapsed rows included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every query in the dashboard, with where it is: panel targets and templating queries.
fn queries(dash: &Value) -> Vec<(String, Scan)> {
    let mut out = Vec::new();
    for panel in panels(dash) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((format!("panel {:?}: {expr}", panel["title"]), scan(expr)));
            }
        }
    }
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query" {
            // Grafana 10 stores `{query, refId}`; older dashboards a plain string.
            let query = var["query"]["query"].as_str().or(var["query"].as_str()).unwrap_or("");
            out.push((format!("variable {:?}: {query}", var["name"]), scan_variable_query(query)));
        }
    }
    out
}

#[test]
fn the_grafana_dashboard_has_what_an_import_needs() {
    let dash = dashboard();
    let mut problems = Vec::new();
    if filled(&dash["title"]).is_none() {
        problems.push("no top-level title".to_string());
    }
    if dash["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problems.push(format!("schemaVersion {} predates Grafana 9", dash["schemaVersion"]));
    }
    let all = panels(&dash);
    if all.is_empty() {
        problems.push("no panels".to_string());
    }
    let vars: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let inputs: BTreeSet<&str> = dash["__inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    // Import asks for the data source named by `__inputs`; a provisioned copy finds it
    // through the variable of the same name.
    for needed in ["DS_PROMETHEUS", "task"] {
        if !vars.contains(needed) {
            problems.push(format!("no templating variable {needed}"));
        }
    }
    if !inputs.contains("DS_PROMETHEUS") {
        problems.push("no DS_PROMETHEUS in __inputs".to_string());
    }
    let mut ids = BTreeSet::new();
    for panel in &all {
        let title = &panel["title"];
        for field in ["type", "title"] {
            if filled(&panel[field]).is_none() {
                problems.push(format!("panel {title}: no {field}"));
            }
        }
        let grid = &panel["gridPos"];
        let [height, width, left, top] = ["h", "w", "x", "y"].map(|k| grid[k].as_u64());
        match (height, width, left, top) {
            (Some(1..), Some(width @ 1..), Some(left), Some(_)) if left + width <= 24 => {}
            _ => problems.push(format!("panel {title}: gridPos {grid} is off the 24-column grid")),
        }
        match panel["id"].as_u64() {
            Some(id) if !ids.insert(id) => problems.push(format!("panel {title}: id {id} twice")),
            Some(_) => {}
            None => problems.push(format!("panel {title}: no id")),
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title}: no targets"));
        }
        let mut refs = BTreeSet::new();
        for target in &targets {
            match target["refId"].as_str() {
                Some(r) if !refs.insert(r) => {
                    problems.push(format!("panel {title}: refId {r} twice"));
                }
                Some(_) => {}
                None => problems.push(format!("panel {title}: a target without refId")),
            }
            if filled(&target["expr"]).is_none() {
                problems.push(format!("panel {title}: a target without expr"));
            }
        }
        for source in std::iter::once(*panel).chain(&targets) {
            if source["datasource"]["uid"] != "${DS_PROMETHEUS}" {
                problems.push(format!("panel {title}: data source {}", source["datasource"]));
            }
        }
    }
    for (place, scan) in queries(&dash) {
        for var in &scan.variables {
            if !vars.contains(var.as_str()) {
                problems.push(format!("{place}: ${var} is no templating variable"));
            }
        }
        for label in &scan.labels {
            if !LABELS.contains(&label.as_str()) {
                problems.push(format!("{place}: label {label} is none of {LABELS:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "examples/grafana-dashboard.json:\n{}", problems.join("\n"));
}

#[test]
fn every_metric_the_grafana_dashboard_queries_is_one_the_daemon_writes() {
    let dash = dashboard();
    let queries = queries(&dash);
    assert!(queries.len() > 10, "too few queries found: {queries:?}");
    let mut problems = Vec::new();
    for (place, scan) in &queries {
        for word in &scan.words {
            if !PROMQL_WORDS.contains(&word.as_str()) {
                problems.push(format!(
                    "{place}: {word} is neither a backupnizza_ metric nor an allowed PromQL word"
                ));
            }
        }
    }

    // A real daemon's file: a run that succeeds and one that fails, so that the per-task
    // families have samples (the `task` variable lists the tasks of
    // backupnizza_task_runs_total). The daemon writes `# TYPE` for every family it knows,
    // with samples or without, so the audit and verify families are there too without a
    // repository to audit.
    let scratch = Scratch::new();
    let metrics = scratch.path().join("metrics/backupnizza.prom");
    std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    let config = scratch.config(&format!(
        "metrics_textfile: {}\ntasks:\n  fine:\n    {TRIGGERED}\n    command: ['true']\n  broken:\n    {TRIGGERED}\n    command: ['false']\n",
        metrics.display()
    ));
    let _daemon = scratch.start_daemon(&config);
    trigger(&scratch, &config, "fine", true).expect_code(0);
    trigger(&scratch, &config, "broken", true).expect_code(1);
    // The file is rewritten in the background right after each run.
    let read = || std::fs::read_to_string(&metrics).unwrap_or_default();
    wait_until("both runs in the metrics file", || {
        let text = read();
        text.contains("backupnizza_task_runs_total{task=\"fine\"} 1\n")
            && text.contains("backupnizza_task_runs_total{task=\"broken\"} 1\n")
    });
    let text = read();
    let families: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let samples = crate::home::prometheus_parse(&metrics);
    for task in ["fine", "broken"] {
        assert!(
            samples.iter().any(|(n, l, _)| n == "backupnizza_task_runs_total" && l == task),
            "the task variable's query would not list {task}:\n{text}"
        );
    }

    let used: BTreeSet<&str> =
        queries.iter().flat_map(|(_, s)| &s.metrics).map(String::as_str).collect();
    for metric in &used {
        if !families.contains_key(metric) {
            problems.push(format!(
                "the dashboard uses {metric}, which the daemon's metrics file does not declare"
            ));
        }
    }
    for (place, scan) in &queries {
        for metric in &scan.counted {
            if let Some(kind) = families.get(metric.as_str()).filter(|k| **k != "counter") {
                problems.push(format!("{place}: rate/increase over {metric}, a {kind}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "examples/grafana-dashboard.json against the metrics file:\n{}\n\nthe metrics file:\n{text}",
        problems.join("\n")
    );
}

#[test]
fn the_query_scanner_tells_metrics_labels_and_words_apart() {
    let s = scan(
        r#"sum by (instance, reason) (increase(backupnizza_tokens_rejected_total{instance=~"$instance"}[1h])) * 1e3 + time() - other_metric"#,
    );
    assert_eq!(s.metrics, ["backupnizza_tokens_rejected_total"]);
    assert_eq!(s.counted, ["backupnizza_tokens_rejected_total"]);
    assert_eq!(s.labels, ["instance", "reason", "instance"]);
    assert_eq!(s.variables, ["instance"]);
    assert_eq!(s.words, ["sum", "increase", "time", "other_metric"]);
    let v = scan_variable_query("label_values(backupnizza_task_runs_total, task)");
    assert_eq!(v.metrics, ["backupnizza_task_runs_total"]);
    assert_eq!(v.labels, ["task"]);
}
