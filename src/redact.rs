//! Redaction: every loaded secret value, every token, and the password part of any URL with
//! credentials are replaced by `***` in log lines, captured child output, run history,
//! notifications and metrics.
//!
//! A secret is looked for raw and in the escaped forms a formatter gives it ([`escaped_forms`]:
//! JSON as serde_json, Python and Go write it, and Rust's `{:?}`), whole and line by line.
//! Callers mask raw text before they format it (a JSON escaper turns `"` into `\"`, and the
//! raw value is then no longer there to find); the escaped forms are a second net over
//! formatted text, and catch a task that prints its secret JSON-encoded. The redactor reads
//! the values from the locked store itself (it holds no copies; the escaped forms live on
//! locked pages there too). It is process-global because the log writer, created before
//! secrets load, needs it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use zeroize::Zeroizing;

use crate::protocol::TOKEN_PREFIX;

pub(crate) mod visible;

pub(crate) const MASK: &str = "***";

/// What the redactor masks: byte strings, longest first, so a secret that contains another
/// is masked whole. The broker's locked store implements it (each value, each line of a
/// multi-line value, and their escaped forms); the redactor never copies what it is given.
pub(crate) trait Needles: Send + Sync {
    fn needles(&self) -> Box<dyn Iterator<Item = &[u8]> + '_>;

    /// The needles of the secrets called `names` only (a task's own). By default, all.
    fn needles_of<'a>(&'a self, names: &'a [String]) -> Box<dyn Iterator<Item = &'a [u8]> + 'a> {
        let _ = names;
        self.needles()
    }
}

static SECRETS: RwLock<Option<Arc<dyn Needles>>> = RwLock::new(None);

/// Each task's own secrets, by task name: its output is masked with these, not with every
/// secret the daemon holds. A `***` in output someone can shape (a file name a backup
/// lists) tells them they guessed a value, and they should learn nothing of secrets the
/// task does not even use.
static SCOPES: RwLock<Option<Arc<Scopes>>> = RwLock::new(None);

/// Task name to the names of its own secrets.
type Scopes = HashMap<String, Vec<String>>;

thread_local! {
    /// The task whose output is being masked on this thread ([`as_task`]), if any.
    static TASK: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Makes `secrets` known to the redactor (replacing any earlier set).
pub(crate) fn register(secrets: Arc<dyn Needles>) {
    *SECRETS.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(secrets);
}

/// Makes each task's own secrets known (task name to secret names).
pub(crate) fn register_scopes(scopes: Scopes) {
    *SCOPES.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(scopes));
}

/// Forgets the secrets (at shutdown, before they are wiped).
pub(crate) fn unregister() {
    *SECRETS.write().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
}

/// Runs `f` with every [`redact`] on this thread masking `task`'s own secrets (and tokens
/// and URL passwords) rather than all of them: for the task's output and what is made of it
/// (its log lines, history record, notifications). `f` must not await: the scope is the
/// thread's. No task (`None`), or one the redactor was not told of, is masked with every
/// secret.
pub(crate) fn as_task<R>(task: Option<&str>, f: impl FnOnce() -> R) -> R {
    let Some(task) = task else { return f() };
    let before = TASK.with(|t| t.replace(Some(task.to_string())));
    // Restored however `f` ends.
    struct Restore(Option<String>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            TASK.with(|t| *t.borrow_mut() = before);
        }
    }
    let _restore = Restore(before);
    f()
}

/// A string someone outside the daemon chose (a requested secret name, a refused peer's
/// executable), as it may appear in the log: `sha256:` and 16 hex digits of its SHA-256.
/// Written out, it would pass through the redactor, and a `***` in the log would tell the
/// one who chose it that it equals a secret; escaping does not help (they can choose what
/// the escaped form will be), finding a string whose digest is a given value does.
pub(crate) fn digest(chosen: &[u8]) -> String {
    format!("sha256:{}", crate::digest::hex(&crate::digest::sha256(chosen)[..8]))
}

/// Redacts a line of text with the registered secrets: within [`as_task`], that task's own.
pub(crate) fn redact(text: &str) -> Cow<'_, str> {
    let guard = SECRETS.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(secrets) = guard.as_deref() else { return redact_needles(text, std::iter::empty()) };
    TASK.with(|task| {
        // The scopes are looked at only for a task's output: the daemon's own lines (one
        // per redemption) take no second lock.
        if let Some(task) = task.borrow().as_deref() {
            let scopes = SCOPES.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(names) = scopes.as_deref().and_then(|s| s.get(task)) {
                return redact_needles(text, secrets.needles_of(names));
            }
        }
        redact_needles(text, secrets.needles())
    })
}

/// A line of a task's output as the log, the history, the output file and followers get
/// it: terminal escapes removed, then what no reader sees ([`visible`]), then masked
/// ([`redact`]). Matching what a reader would see is what catches a secret printed with a
/// NUL, a zero-width space or a colour change in the middle.
pub(crate) fn output_line(text: &str) -> String {
    let plain = crate::restic::strip_escapes(text);
    let seen = visible::visible(&plain);
    redact(&seen).into_owned()
}

/// Redacts with an explicit set of secrets (for tests and for the loader).
pub(crate) fn redact_with<'a>(text: &'a str, secrets: Option<&dyn Needles>) -> Cow<'a, str> {
    match secrets {
        Some(secrets) => redact_needles(text, secrets.needles()),
        None => redact_needles(text, std::iter::empty()),
    }
}

fn redact_needles<'a, 'n>(text: &'a str, needles: impl Iterator<Item = &'n [u8]>) -> Cow<'a, str> {
    let mut out: Cow<'a, str> = Cow::Borrowed(text);
    for value in needles {
        if value.is_empty() || memchr::memmem::find(out.as_bytes(), value).is_none() {
            continue;
        }
        out = Cow::Owned(replace_bytes(out.as_bytes(), value));
    }
    if out.contains(TOKEN_PREFIX) {
        out = Cow::Owned(mask_tokens(&out));
    }
    if out.contains("://")
        && let Cow::Owned(s) = mask_url_passwords(&out)
    {
        out = Cow::Owned(s);
    }
    out
}

/// The ways a formatter may write `text` that differ from `text` itself, distinct: JSON as
/// serde_json and `JSON.stringify` write it (`\"`, `\\`, `\n`, `\t`, `\u001b`), JSON with
/// every non-ASCII character as `\uXXXX` (Python's `json.dumps`), JSON as Go writes it (also
/// `<`, `>`, `&`, U+2028 and U+2029 as `\uXXXX`: restic and rclone are Go), and Rust's
/// `{:?}` (the text log's `field=?value`). Each is built in a buffer reserved up front, so no
/// reallocation leaves an unzeroed copy behind.
pub(crate) fn escaped_forms(text: &str) -> Vec<Zeroizing<String>> {
    let candidates = [
        escape_json(text, Json::Plain),
        escape_json(text, Json::Ascii),
        escape_json(text, Json::Go),
        escape_debug(text),
    ];
    let mut forms: Vec<Zeroizing<String>> = Vec::with_capacity(candidates.len());
    for form in candidates {
        if form.as_str() != text && !forms.iter().any(|f| f.as_str() == form.as_str()) {
            forms.push(form);
        }
    }
    forms
}

/// What a JSON writer escapes beyond `"`, `\\` and control characters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Json {
    Plain,
    Ascii,
    Go,
}

/// The most bytes one input byte becomes: a control byte as `\u001b` is 6; a 4-byte
/// character as a surrogate pair (12) or `\u{10ffff}` (10) is less per byte.
const MAX_ESCAPE_PER_BYTE: usize = 6;

fn reserved(text: &str) -> Zeroizing<String> {
    Zeroizing::new(String::with_capacity(text.len() * MAX_ESCAPE_PER_BYTE))
}

fn escape_json(text: &str, style: Json) -> Zeroizing<String> {
    use std::fmt::Write as _;
    let mut out = reserved(text);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if style == Json::Go => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if !c.is_ascii() && style == Json::Ascii => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// As `format!("{text:?}")` without the quotes: `str`'s `Debug` escapes like
/// `char::escape_debug` except that it leaves `'` alone.
fn escape_debug(text: &str) -> Zeroizing<String> {
    let mut out = reserved(text);
    for c in text.chars() {
        if c == '\'' {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
    }
    out
}

fn replace_bytes(haystack: &[u8], needle: &[u8]) -> String {
    let mut result = Vec::with_capacity(haystack.len());
    let mut last = 0;
    for at in memchr::memmem::find_iter(haystack, needle) {
        if at < last {
            continue;
        }
        result.extend_from_slice(&haystack[last..at]);
        result.extend_from_slice(MASK.as_bytes());
        last = at + needle.len();
    }
    result.extend_from_slice(&haystack[last..]);
    String::from_utf8_lossy(&result).into_owned()
}

/// `bnz1_<64 hex>` becomes `bnz1_***`.
fn mask_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(TOKEN_PREFIX) {
        let after = &rest[i + TOKEN_PREFIX.len()..];
        let hex = after.bytes().take_while(u8::is_ascii_hexdigit).count();
        out.push_str(&rest[..i + TOKEN_PREFIX.len()]);
        if hex >= 16 {
            out.push_str(MASK);
        } else {
            out.push_str(&after[..hex]);
        }
        rest = &after[hex..];
    }
    out.push_str(rest);
    out
}

/// `scheme://user:password@host` becomes `scheme://user:***@host` (also inside
/// `rest:https://...`). Userinfo without a password is left alone.
pub(crate) fn mask_url_passwords(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find("://") {
        let start = i + 3;
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        // The authority ends at the first '/', '?', '#' or whitespace.
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => match authority[..at].find(':') {
                Some(colon) => {
                    out.push_str(&authority[..=colon]);
                    out.push_str(MASK);
                    out.push_str(&authority[at..]);
                    changed = true;
                }
                None => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    if !changed {
        return Cow::Borrowed(text);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A secret with everything a formatter escapes: quotes, a backslash, a tab, a newline,
    /// an escape character, `<&>`, non-ASCII (one and two UTF-16 units) and a line separator.
    pub(crate) const AWKWARD: &str =
        "pre\"quo'te\\back\ttab\u{1b}esc <&> é🔑\u{2028}\nsecond-line-of-it";

    #[test]
    fn escaped_forms_are_what_serde_json_python_go_and_debug_write() {
        let forms = escaped_forms(AWKWARD);
        let json = serde_json::to_string(AWKWARD).unwrap();
        let debug = format!("{AWKWARD:?}");
        let expected = [
            &json[1..json.len() - 1],
            r#"pre\"quo'te\\back\ttab\u001besc <&> \u00e9\ud83d\udd11\u2028\nsecond-line-of-it"#,
            r#"pre\"quo'te\\back\ttab\u001besc \u003c\u0026\u003e é🔑\u2028\nsecond-line-of-it"#,
            &debug[1..debug.len() - 1],
        ];
        let got: Vec<&str> = forms.iter().map(|f| f.as_str()).collect();
        assert_eq!(got, expected);
        assert!(escaped_forms("plain-ascii-password").is_empty(), "a plain value has no forms");
    }

    /// A plain list of values, longest first, as the redactor sees the broker's store.
    struct Plain(Vec<&'static [u8]>);

    impl Needles for Plain {
        fn needles(&self) -> Box<dyn Iterator<Item = &[u8]> + '_> {
            Box::new(self.0.iter().copied())
        }
    }

    #[test]
    fn values_tokens_and_url_passwords_are_masked() {
        let values = Plain(vec![b"hunter2"]);
        let line = format!(
            "pw=hunter2 x hunter2hunter2 token {TOKEN_PREFIX}{} rest:https://u:p%40ss@host:8000/x s3://k@h/",
            "ab".repeat(32)
        );
        let got = redact_with(&line, Some(&values));
        assert_eq!(
            got,
            format!(
                "pw=*** x ****** token {TOKEN_PREFIX}*** rest:https://u:***@host:8000/x s3://k@h/"
            )
        );
    }

    #[test]
    fn clean_lines_are_borrowed() {
        assert!(matches!(redact_with("nothing to see http://host/x", None), Cow::Borrowed(_)));
    }
}
