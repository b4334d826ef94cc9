//! What restic says when it fails, in words for the record: its exit codes (restic 0.17
//! gave them meanings beyond 0, 1 and 3), its `{"message_type":"exit_error"}` message
//! (restic 0.18 with `--json`, on stderr), and Go stack frames, which restic 0.14 prints
//! under some errors and which would otherwise fill the whole stderr tail a record keeps.

use serde::Deserialize;

/// What an exit code of restic means, for the reason of a failed step. 0 and 1 say
/// nothing a reason needs (1 is any other error: the stderr tail says which).
pub(crate) fn meaning(code: i32) -> Option<&'static str> {
    Some(match code {
        3 => "restic: some source data could not be read; the snapshot is incomplete",
        10 => "restic: the repository does not exist",
        11 => "restic: the repository is locked by another process",
        12 => "restic: wrong password, or no key for it in the repository",
        130 => "restic: interrupted",
        _ => return None,
    })
}

/// restic 0.18's last word under `--json`: `{"message_type":"exit_error","code":N,
/// "message":"..."}` on stderr.
#[derive(Deserialize)]
struct ExitError {
    message_type: String,
    message: String,
}

/// The message of an `exit_error` line (its first line: restic appends hints such as "the
/// `unlock` command can be used to remove stale locks" after a newline), or `None` when the
/// line is something else.
fn exit_error(line: &str) -> Option<String> {
    let line = line.trim();
    if !line.starts_with('{') || !line.contains("exit_error") {
        return None;
    }
    let parsed: ExitError = serde_json::from_str(line).ok()?;
    let first = parsed.message.lines().map(str::trim).find(|l| !l.is_empty())?;
    (parsed.message_type == "exit_error").then(|| first.to_string())
}

/// Why restic failed, from the last lines it wrote on stderr (`tail`, oldest first, stack
/// frames already left out): restic 0.18's `exit_error` message, else its last `Fatal:`
/// line, else its last line (restic says what went wrong last, and before 0.18 some errors
/// have no `Fatal:`, such as 0.14's "blob not removed, server response: 403 Forbidden").
pub(crate) fn cause<'a>(
    tail: impl DoubleEndedIterator<Item = &'a String> + Clone,
) -> Option<String> {
    let lines = tail.map(|l| l.trim()).filter(|l| !l.is_empty());
    lines
        .clone()
        .rev()
        .find_map(exit_error)
        .or_else(|| lines.clone().rev().find(|l| l.starts_with("Fatal:")).map(String::from))
        .or_else(|| lines.clone().next_back().map(String::from))
}

/// Whether a stderr line is part of a Go stack trace: a frame's source line (a tab, then
/// `/path/file.go:123`, maybe `+0x1f`), a `goroutine 1 [running]:` header, or a `created
/// by` line. A frame's function line (the line before its source line) is told by
/// [`is_frame_function`].
pub(crate) fn is_frame_source(line: &str) -> bool {
    let t = line.trim_start();
    if t.starts_with("goroutine ") && t.ends_with("]:") || t.starts_with("created by ") {
        return true;
    }
    if !line.starts_with([' ', '\t']) {
        return false;
    }
    let t = t.split(" +0x").next().unwrap_or(t);
    // Go source, or the runtime's assembly (`runtime/asm_amd64.s:1594`).
    match t.rsplit_once(".go:").or_else(|| t.rsplit_once(".s:")) {
        Some((file, number)) => {
            !file.is_empty()
                && !file.contains(' ')
                && !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// Whether a line looks like a Go frame's function (`main.main`,
/// `github.com/restic/restic/internal/backend/rest.(*Backend).Remove`, `main.runForget(...)`):
/// one word, a dot in it, no leading space. Only ever asked of the line just before a
/// frame's source line.
pub(crate) fn is_frame_function(line: &str) -> bool {
    let t = line.trim_end();
    let name = t.split('(').next().unwrap_or(t);
    !t.is_empty()
        && !t.starts_with([' ', '\t'])
        && !name.contains(' ')
        && (name.contains('.') || t.contains(")."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_have_meanings_and_exit_error_gives_the_message() {
        assert!(meaning(10).unwrap().contains("does not exist"));
        assert!(meaning(11).unwrap().contains("locked"));
        assert!(meaning(12).unwrap().contains("wrong password"));
        assert_eq!(meaning(1), None);
        let line = r#"{"message_type":"exit_error","code":11,"message":"Fatal: unable to create lock in backend: repository is already locked by PID 7\nthe `unlock` command can be used to remove stale locks"}"#;
        assert_eq!(
            exit_error(line).unwrap(),
            "Fatal: unable to create lock in backend: repository is already locked by PID 7"
        );
        assert_eq!(exit_error(r#"{"message_type":"status"}"#), None);
        assert_eq!(exit_error("exit_error"), None);
    }

    #[test]
    fn the_cause_is_the_exit_error_else_the_fatal_line_else_the_last_line() {
        let tail = |lines: &[&str]| lines.iter().map(ToString::to_string).collect::<Vec<_>>();
        let json = r#"{"message_type":"exit_error","code":10,"message":"Fatal: repository does not exist: unable to open config file"}"#;
        let t = tail(&["noise", json, ""]);
        assert_eq!(
            cause(t.iter()).unwrap(),
            "Fatal: repository does not exist: unable to open config file"
        );
        let t = tail(&["Fatal: wrong password or no key found", "hint"]);
        assert_eq!(cause(t.iter()).unwrap(), "Fatal: wrong password or no key found");
        let t = tail(&["retrying", "blob not removed, server response: 403 Forbidden (403)"]);
        assert_eq!(
            cause(t.iter()).unwrap(),
            "blob not removed, server response: 403 Forbidden (403)"
        );
        assert_eq!(cause(tail(&[]).iter()), None);
    }

    #[test]
    fn go_stack_frames_are_told_from_messages() {
        // restic 0.14's forget against an append-only server, as pkg/errors prints it.
        let trace = [
            ("blob not removed, server response: 403 Forbidden (403)", false),
            ("github.com/restic/restic/internal/backend/rest.(*Backend).Remove", true),
            ("\t/build/restic/internal/backend/rest/rest.go:384", true),
            ("main.main", true),
            ("\t/build/restic/cmd/restic/main.go:98", true),
            ("runtime.main", true),
            ("\t/usr/lib/go-1.19/src/runtime/proc.go:250 +0x212", true),
            ("runtime.goexit", true),
            ("\truntime/asm_amd64.s:1594", true),
            ("goroutine 1 [running]:", true),
            ("created by main.init.0", true),
            ("Fatal: unable to remove snapshot", false),
            ("\tsome indented text", false),
        ];
        for (i, (line, frame)) in trace.iter().enumerate() {
            let source = is_frame_source(line);
            let function =
                trace.get(i + 1).is_some_and(|n| is_frame_source(n.0)) && is_frame_function(line);
            assert_eq!(source || function, *frame, "{line}");
        }
    }
}
