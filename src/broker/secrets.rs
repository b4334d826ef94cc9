//! The loaded secrets: the locked, in-memory store the daemon serves from. Each value sits
//! on locked pages ([`LockedBytes`]) wrapped in `secrecy::SecretBox` (no `Debug`, `Clone` or
//! `Serialize`), with the escaped forms a formatter would give it, so that the redactor
//! ([`crate::redact::Needles`]) finds it however it is written. Loading them is
//! [`super::sources`]'s.

use std::collections::HashMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

use crate::sys::hardening::Weakness;
use crate::sys::locked::LockedBytes;

/// The loaded secrets, immutable once loaded.
pub struct Secrets {
    by_name: HashMap<String, SecretBox<LockedBytes>>,
    /// The escaped forms of each value and of each of its lines (see
    /// [`crate::redact::escaped_forms`]), concatenated on locked pages of their own: they are
    /// copies of the secret. A value with no special characters has none.
    forms: HashMap<String, SecretBox<LockedBytes>>,
    /// What the redactor looks for, longest first (so a secret containing another is masked
    /// whole): each value, each line of a multi-line value (PEM keys, JSON credentials), and
    /// the escaped forms of both, as (name, where, start, end) ranges into the locked bytes.
    needles: Vec<(String, In, usize, usize)>,
}

/// Which locked bytes a needle's range points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum In {
    Value,
    Forms,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("Secrets").field("names", &names).finish_non_exhaustive()
    }
}

impl crate::redact::Needles for Secrets {
    fn needles(&self) -> Box<dyn Iterator<Item = &[u8]> + '_> {
        Box::new(Secrets::needles(self))
    }

    fn needles_of<'a>(&'a self, names: &'a [String]) -> Box<dyn Iterator<Item = &'a [u8]> + 'a> {
        Box::new(self.needles_where(move |name| names.iter().any(|n| n == name)))
    }
}

impl Secrets {
    pub fn empty() -> Secrets {
        Secrets { by_name: HashMap::new(), forms: HashMap::new(), needles: Vec::new() }
    }

    pub fn get(&self, name: &str) -> Option<&SecretBox<LockedBytes>> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// What the redactor masks, longest first: every value, and every line (8 bytes or more)
    /// of multi-line values, raw and in the escaped forms a log format or a task's JSON
    /// would give them. Callers must not log or copy what they get.
    pub fn needles(&self) -> impl Iterator<Item = &[u8]> {
        self.needles_where(|_| true)
    }

    /// [`Secrets::needles`] of the secrets whose name `keep` accepts.
    fn needles_where<'a>(
        &'a self,
        keep: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.needles.iter().filter(move |(name, ..)| keep(name)).filter_map(
            |(name, source, start, end)| {
                let bytes = match source {
                    In::Value => self.by_name.get(name)?,
                    In::Forms => self.forms.get(name)?,
                };
                bytes.expose_secret().as_bytes().get(*start..*end)
            },
        )
    }

    /// Adds a value, copying it (and its escaped forms) onto locked pages.
    pub fn insert(&mut self, name: &str, value: &[u8]) -> std::io::Result<Vec<Weakness>> {
        let (locked, mut weak) = LockedBytes::new(value)?;
        self.by_name.insert(name.to_string(), SecretBox::new(Box::new(locked)));
        self.forms.remove(name);
        self.needles.retain(|(n, ..)| n != name);
        // The whole value, then each line long enough not to mask ordinary words.
        let mut pieces = vec![(0, value.len())];
        if value.contains(&b'\n') {
            let mut start = 0;
            for line in value.split(|b| *b == b'\n') {
                let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
                if trimmed.len() >= 8 && trimmed.len() < value.len() {
                    pieces.push((start, start + trimmed.len()));
                }
                start += line.len() + 1;
            }
        }
        let mut forms: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
        let mut form_ranges = Vec::new();
        for &(start, end) in &pieces {
            self.needles.push((name.to_string(), In::Value, start, end));
            // A value that is not UTF-8 is never escaped by a formatter as text.
            let Ok(text) = std::str::from_utf8(&value[start..end]) else { continue };
            // Output is matched as a reader sees it ([`crate::redact::visible`]): a value
            // holding an invisible character is looked for without it too.
            let seen = crate::redact::visible::visible(text);
            let seen = (seen != text).then(|| Zeroizing::new(seen.into_owned()));
            for form in crate::redact::escaped_forms(text).into_iter().chain(seen) {
                if form.as_bytes() == text.as_bytes() {
                    continue;
                }
                // Grown by hand, never by a reallocation that would leave an unzeroed copy.
                if forms.capacity() - forms.len() < form.len() {
                    let mut bigger = Zeroizing::new(Vec::with_capacity(
                        (forms.len() + form.len()).max(2 * forms.capacity()),
                    ));
                    bigger.extend_from_slice(&forms);
                    forms = bigger;
                }
                form_ranges.push((forms.len(), forms.len() + form.len()));
                forms.extend_from_slice(form.as_bytes());
            }
        }
        if !forms.is_empty() {
            let (locked, more) = LockedBytes::new(&forms)?;
            weak.extend(more);
            self.forms.insert(name.to_string(), SecretBox::new(Box::new(locked)));
            for (start, end) in form_ranges {
                self.needles.push((name.to_string(), In::Forms, start, end));
            }
        }
        self.needles.sort_by_key(|(_, _, start, end)| std::cmp::Reverse(end - start));
        Ok(weak)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_masks_its_own_secrets_and_a_value_with_an_invisible_character_as_seen() {
        use crate::redact::Needles as _;
        let mut s = Secrets::empty();
        s.insert("mine", b"mine-0123456789").unwrap();
        s.insert("theirs", b"theirs-0123456789").unwrap();
        s.insert("zw", "zero\u{200b}width-0123".as_bytes()).unwrap();
        let scope = ["mine".to_string(), "zw".to_string()];
        let masked = |text: &str| {
            let needles: Vec<&[u8]> = s.needles_of(&scope).collect();
            let mut out = text.to_string();
            for n in needles {
                out = out.replace(std::str::from_utf8(n).unwrap(), "***");
            }
            out
        };
        assert_eq!(masked("a mine-0123456789 b theirs-0123456789"), "a *** b theirs-0123456789");
        // As a reader sees it, the zero-width space is gone; both spellings are masked.
        assert_eq!(masked("zerowidth-0123 zero\u{200b}width-0123"), "*** ***");
        assert_eq!(
            s.needles().count(),
            s.needles_of(&["mine".into(), "theirs".into(), "zw".into()]).count()
        );
    }

    #[test]
    fn secrets_debug_shows_names_only() {
        let mut s = Secrets::empty();
        s.insert("repo", b"value-that-must-not-print").unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("repo") && !shown.contains("value-that"), "{shown}");
        assert_eq!(s.get("repo").unwrap().expose_secret().as_bytes(), b"value-that-must-not-print");
    }

    #[test]
    fn secrets_tokens_and_url_passwords_are_masked() {
        use crate::protocol::TOKEN_PREFIX;
        let mut s = Secrets::empty();
        s.insert("a", b"hunter2").unwrap();
        s.insert("b", "pässwörd".as_bytes()).unwrap();
        let line = format!(
            "pw=hunter2 again hunter2hunter2 ü pässwörd token {TOKEN_PREFIX}{} repo rest:https://u:p%40ss@host:8000/x s3://k@h/ sftp://me@h",
            "ab".repeat(32)
        );
        let got = crate::redact::redact_with(&line, Some(&s));
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
        let got = crate::redact::redact_with("a xabcyz b abc c MIIEvQIBADANBgkq d", Some(&s));
        assert_eq!(got, "a *** b *** c *** d");
    }

    #[test]
    fn every_escaped_form_of_a_value_and_of_its_lines_is_masked() {
        let mut s = Secrets::empty();
        s.insert("awkward", crate::redact::tests::AWKWARD.as_bytes()).unwrap();
        let first = crate::redact::tests::AWKWARD.lines().next().unwrap();
        let mut shown = vec![crate::redact::tests::AWKWARD.to_string(), first.to_string()];
        for text in [crate::redact::tests::AWKWARD, first] {
            shown.extend(crate::redact::escaped_forms(text).iter().map(|f| f.to_string()));
        }
        for text in shown {
            let got = crate::redact::redact_with(&text, Some(&s));
            assert_eq!(
                got.replace('\n', ""),
                crate::redact::MASK.repeat(got.matches(crate::redact::MASK).count()),
                "{text:?}"
            );
            assert!(!got.contains("second-line") && !got.contains("quo'te"), "{got:?}");
        }
    }
}
