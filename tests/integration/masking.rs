//! Masking that is no oracle (issue 28): a `***` in output someone can shape tells them
//! they guessed a secret. A red team made 1,000 files named `7000`…`7999` where a backup
//! looked, followed the run, and found a 4-digit secret no task used in the one `***`. So
//! a secret shorter than 12 bytes is refused unless it says it may be short, a task's
//! output is masked with its own secrets only, and it is matched as a reader sees it: a
//! secret printed with an invisible character in the middle (NUL, BEL, backspace, SI, DEL,
//! a C1 CSI, a zero-width space, a byte that is not UTF-8) is masked in the log, the
//! history, the output file and `trigger --follow` all the same.
//!
//! The real daemon and CLI; the attacker is a separate process that plants file names and
//! follows the run, as a member would.

use std::process::Command;

use crate::harness::{BACKUPNIZZA, Scratch, TRIGGERED, canary, history, write_private};

/// `trigger --follow TASK`, as a member runs it, its output captured (a pipe, not a
/// terminal: lines as the daemon sends them).
fn follow(scratch: &Scratch, config: &std::path::Path, task: &str) -> std::process::Output {
    scratch
        .command(BACKUPNIZZA)
        .args(["trigger", "--follow", task, "-c"])
        .arg(config)
        .output()
        .unwrap()
}

/// A PIN-like secret is refused at start and by `secret check`, naming the secret and the
/// fix; `allow_short: true` lets it load.
#[test]
fn a_four_digit_secret_is_refused_unless_it_may_be_short() {
    let scratch = Scratch::new();
    let pin = scratch.path().join("pin");
    write_private(&pin, b"7342\n");
    let body = |allow: &str| {
        format!(
            "secrets:\n  pin: {{file: {}{allow}}}\ntasks:\n  t:\n    {TRIGGERED}\n    command: [true]\n    secrets: [pin]\n",
            pin.display()
        )
    };
    let config = scratch.config(&body(""));
    let check = scratch.backupnizza(["secret", "check", "-c"]).run_with(&config);
    check.expect_code(1);
    assert!(
        check.stdout().contains("pin") && check.stdout().contains("shorter than 12"),
        "{check}"
    );
    assert!(check.stdout().contains("allow_short: true"), "the fix is named\n{check}");
    assert!(!check.stdout().contains("7342") && !check.stderr().contains("7342"));

    let log = scratch.path().join("refused.log");
    let status = scratch.daemon_command(&config, &log).status().unwrap();
    assert_eq!(status.code(), Some(1), "start-up refuses it");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("\"pin\"") && said.contains("shorter than 12"), "{said}");
    assert!(!said.contains("7342"), "the value is never printed");

    let allowed = scratch.config(&body(", allow_short: true"));
    scratch.backupnizza(["secret", "check", "-c"]).run_with(&allowed).expect_code(0);
    let _daemon = scratch.start_daemon(&allowed);
    scratch.backupnizza(["trigger", "--wait", "t", "-c"]).run_with(&allowed).expect_code(0);
}

/// The attack replayed: another task's short secret (allowed short) is not revealed by the
/// file names an outsider planted, in `--follow`, the history or the output file, while
/// the task's own secret is still masked everywhere.
#[test]
fn a_tasks_output_is_not_masked_with_another_tasks_secret() {
    let scratch = Scratch::new();
    let (pin, mine) = ("7342", canary());
    let pin_file = scratch.path().join("pin");
    let mine_file = scratch.path().join("mine");
    write_private(&pin_file, pin.as_bytes());
    write_private(&mine_file, mine.as_bytes());
    let planted = scratch.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    let config = scratch.config(&format!(
        "secrets:
  pin: {{file: {pin}, allow_short: true}}
  mine: {{file: {mine}}}
tasks:
  other:
    {TRIGGERED}
    command: [true]
    secrets: [pin]
  lister:
    {TRIGGERED}
    secrets: [mine]
    command: [sh, -c, 'ls -1 {dir}; ls -1 {dir} | grep 734 >&2; echo \"own: $(secretbox get mine)\"']
    output_file: out/lister.log
",
        pin = pin_file.display(),
        mine = mine_file.display(),
        dir = planted.display(),
    ));
    let _daemon = scratch.start_daemon(&config);
    // The outsider: plants the guesses, then follows the run it triggers.
    let plant = Command::new("sh")
        .arg("-c")
        .arg("i=7000; while [ $i -le 7999 ]; do : > \"$1/$i\"; i=$((i+1)); done")
        .arg("planter")
        .arg(&planted)
        .status()
        .unwrap();
    assert!(plant.success());
    let follower = follow(&scratch, &config, "lister");
    let followed = String::from_utf8_lossy(&follower.stdout).into_owned();
    let followed_err = String::from_utf8_lossy(&follower.stderr).into_owned();
    assert!(follower.status.success(), "{followed}\n{followed_err}");
    // Every guess is shown as it is: no `***` tells which one is a secret.
    let shown: Vec<&str> = followed.lines().filter(|l| l.starts_with('7')).collect();
    assert_eq!(shown.len(), 1000, "{followed}");
    assert!(shown.contains(&pin), "the other task's PIN is an ordinary file name here");
    assert!(followed_err.lines().any(|l| l == pin), "{followed_err}");
    // The task's own secret is masked.
    assert!(followed.contains("own: ***") && !followed.contains(&mine), "{followed}");

    let records = history(&scratch);
    let end = records
        .iter()
        .find(|r| r["type"] == "end" && r["task"] == "lister")
        .unwrap_or_else(|| panic!("{records:#?}"));
    let tail: Vec<&str> =
        end["stderr_tail"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
    assert!(tail.contains(&pin), "the tail shows the file name unmasked: {tail:?}");
    let file = std::fs::read_to_string(scratch.path().join("state/out/lister.log")).unwrap();
    assert!(file.lines().any(|l| l.ends_with(&format!(" {pin}"))), "{file}");
    assert!(file.contains("own: ***") && !file.contains(&mine));
}

/// Each invisible separator the red team printed inside a secret, as the bytes a task
/// writes.
const SEPARATORS: &[(&str, &[u8])] = &[
    ("NUL", b"\x00"),
    ("BEL", b"\x07"),
    ("backspace", b"\x08"),
    ("SI", b"\x0f"),
    ("DEL", b"\x7f"),
    ("C1 CSI", "\u{9b}".as_bytes()),
    ("zero-width space", "\u{200b}".as_bytes()),
    ("byte order mark", "\u{feff}".as_bytes()),
    ("invalid byte", b"\xff"),
    ("colour change", b"\x1b[31m"),
];

/// Removes what a reader does not see, as a terminal shows the line.
fn as_seen(text: &str) -> String {
    let dropped = |c: char| {
        (c.is_control() && c != '\t' && c != '\n')
            || c == '\u{fffd}'
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{feff}' | '\u{2060}'..='\u{2064}')
    };
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            // A CSI sequence up to its final byte.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
            continue;
        }
        if !dropped(c) {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_secret_split_by_an_invisible_character_is_masked_everywhere_it_goes() {
    let scratch = Scratch::new();
    let secret = canary();
    let file = scratch.path().join("s");
    write_private(&file, secret.as_bytes());
    // The task prints its secret once per separator, split in the middle, on both streams.
    let seps: Vec<String> =
        SEPARATORS.iter().map(|(_, b)| b.iter().map(|x| format!("\\x{x:02x}")).collect()).collect();
    let script = format!(
        "import subprocess, sys\n\
         v = subprocess.check_output(['secretbox', 'get', 's']).rstrip(b'\\n')\n\
         h = len(v) // 2\n\
         for sep in [{}]:\n\
         \x20   line = b'split: ' + v[:h] + sep + v[h:] + b'\\n'\n\
         \x20   sys.stdout.buffer.write(line)\n\
         \x20   sys.stderr.buffer.write(line)\n",
        seps.iter().map(|s| format!("b'{s}'")).collect::<Vec<_>>().join(", ")
    );
    let script_file = scratch.write("split.py", &script);
    let config = scratch.config(&format!(
        "secrets:\n  s: {{file: {}}}\ntasks:\n  t:\n    {TRIGGERED}\n    secrets: [s]\n    command: [python3, {}]\n    output_file: out/t.log\n",
        file.display(),
        script_file.display()
    ));
    let daemon = scratch.start_daemon(&config);
    let follower = follow(&scratch, &config, "t");
    assert!(follower.status.success(), "{}", String::from_utf8_lossy(&follower.stderr));
    daemon.wait_for("the run's end", |l| l.contains("run ended"));
    crate::harness::wait_until("the end record", || {
        history(&scratch).iter().any(|r| r["type"] == "end")
    });
    let records = serde_json::to_string(&history(&scratch)).unwrap();
    let places = [
        ("--follow stdout", String::from_utf8_lossy(&follower.stdout).into_owned()),
        ("--follow stderr", String::from_utf8_lossy(&follower.stderr).into_owned()),
        ("the log", daemon.log_text()),
        (
            "the output file",
            std::fs::read_to_string(scratch.path().join("state/out/t.log")).unwrap(),
        ),
        ("the history", unescape_json(&records)),
    ];
    for (place, text) in &places {
        let seen = as_seen(text);
        assert!(!seen.contains(&secret), "{place} shows the secret to a reader:\n{text}");
        let masked = seen.lines().filter(|l| l.contains("split: ***")).count();
        assert!(masked >= SEPARATORS.len().min(20), "{place}: {masked} masked lines\n{text}");
    }
}

/// The history's JSON with its `\uXXXX` and `\n` escapes decoded, as a reader of a
/// decoded record sees it.
fn unescape_json(text: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    let mut out = String::new();
    fn walk(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&value, &mut out);
    out
}
