//! Redaction: every loaded secret value, every token, and the password part of any URL with
//! credentials are replaced by `***` in log lines, captured child output and run history.
//!
//! The redactor reads secret values from the locked store itself (it holds no copies). It is
//! process-global because the log writer, created before secrets load, needs it.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use crate::broker::Secrets;
use crate::broker::vault::TOKEN_PREFIX;

pub(crate) const MASK: &str = "***";

static SECRETS: RwLock<Option<Arc<Secrets>>> = RwLock::new(None);

/// Makes `secrets` known to the redactor (replacing any earlier set).
pub(crate) fn register(secrets: Arc<Secrets>) {
    *SECRETS.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(secrets);
}

/// Forgets the secrets (at shutdown, before they are wiped).
pub(crate) fn unregister() {
    *SECRETS.write().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
}

/// A string someone outside the daemon chose (a requested secret name, a refused peer's
/// executable), as it may appear in the log: `sha256:` and 16 hex digits of its SHA-256.
/// Written out, it would pass through the redactor, and a `***` in the log would tell the
/// one who chose it that it equals a secret; escaping does not help (they can choose what
/// the escaped form will be), finding a string whose digest is a given value does.
pub(crate) fn digest(chosen: &[u8]) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(chosen);
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Redacts a line of text with the registered secrets.
pub(crate) fn redact(text: &str) -> Cow<'_, str> {
    let guard = SECRETS.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    redact_with(text, guard.as_deref())
}

/// Redacts with an explicit set of secrets (for tests and for the loader).
pub(crate) fn redact_with<'a>(text: &'a str, secrets: Option<&Secrets>) -> Cow<'a, str> {
    let mut out: Cow<'a, str> = Cow::Borrowed(text);
    if let Some(secrets) = secrets {
        for value in secrets.needles() {
            if value.is_empty() || memchr::memmem::find(out.as_bytes(), value).is_none() {
                continue;
            }
            out = Cow::Owned(replace_bytes(out.as_bytes(), value));
        }
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
mod tests {
    use super::*;

    #[test]
    fn secrets_tokens_and_url_passwords_are_masked() {
        let mut s = Secrets::empty();
        s.insert("a", b"hunter2").unwrap();
        s.insert("b", "pässwörd".as_bytes()).unwrap();
        let line = format!(
            "pw=hunter2 again hunter2hunter2 ü pässwörd token {TOKEN_PREFIX}{} repo rest:https://u:p%40ss@host:8000/x s3://k@h/ sftp://me@h",
            "ab".repeat(32)
        );
        let got = redact_with(&line, Some(&s));
        assert!(
            !got.contains("hunter2") && !got.contains("pässwörd") && !got.contains("p%40ss"),
            "{got}"
        );
        assert!(got.contains("pw=*** again ****** ü ***"), "{got}");
        assert!(got.contains(&format!("{TOKEN_PREFIX}***")), "{got}");
        assert!(got.contains("rest:https://u:***@host:8000/x"), "{got}");
        assert!(got.contains("s3://k@h/") && got.contains("sftp://me@h"), "{got}");
    }

    #[test]
    fn longer_secrets_win_and_multi_line_secrets_are_masked_line_by_line() {
        let mut s = Secrets::empty();
        s.insert("short", b"abc").unwrap();
        s.insert("long", b"xabcyz").unwrap();
        s.insert("pem", b"-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n-----END KEY-----\n").unwrap();
        let got = redact_with("a xabcyz b abc c MIIEvQIBADANBgkq d", Some(&s));
        assert_eq!(got, "a *** b *** c *** d");
    }

    #[test]
    fn clean_lines_are_borrowed() {
        assert!(matches!(redact_with("nothing to see http://host/x", None), Cow::Borrowed(_)));
    }
}
