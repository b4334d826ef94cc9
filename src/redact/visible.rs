//! What a reader of a line sees, for matching secrets against it and for showing lines on a
//! terminal.
//!
//! A secret printed with an invisible character in the middle (a NUL, a BEL, a backspace, a
//! shift-in, DEL, a zero-width space, a byte that is not UTF-8) no longer matches the
//! secret byte for byte, yet a terminal shows it whole. So a task's output is matched, and
//! kept, without those characters: C0 controls except TAB, DEL, the C1 controls (U+0080 to
//! U+009F: U+009B is a CSI on terminals that take 8-bit controls), Unicode's format
//! characters (category `Cf`: zero-width spaces and joiners, direction marks, the BOM) and
//! U+FFFD, which an invalid byte becomes when the line is read. None of them is printable,
//! so nothing a reader could see is lost.
//!
//! [`for_terminal`] escapes control characters instead (as `\x07` or `\u{9b}`), for a line
//! written to a terminal by `trigger --follow`: a line that did not come through
//! [`visible`] (an older daemon's) cannot move the cursor or hide what follows.

use std::borrow::Cow;

/// Unicode 15.1's format characters (`Cf`), as inclusive ranges.
const FORMAT: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

/// Whether a reader never sees `c`: a control character other than TAB, a format
/// character, or the replacement character an invalid byte became.
pub(crate) fn is_invisible(c: char) -> bool {
    (c.is_control() && c != '\t')
        || c == char::REPLACEMENT_CHARACTER
        || FORMAT.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// `text` without the characters no reader sees.
pub(crate) fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_invisible) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().filter(|&c| !is_invisible(c)).collect())
}

/// `text` with every control character but TAB written as an escape (`\x1b`, `\u{9b}`),
/// so that a terminal shows it instead of obeying it.
pub(crate) fn for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each separator the red team printed inside a secret, and the rest of the classes.
    const SEPARATORS: &[char] = &[
        '\0',
        '\u{7}',
        '\u{8}',
        '\u{f}',
        '\u{1b}',
        '\u{7f}',
        '\u{85}',
        '\u{9b}',
        '\u{ad}',
        '\u{200b}',
        '\u{200d}',
        '\u{202e}',
        '\u{2066}',
        '\u{feff}',
        '\u{fffd}',
        '\u{e0041}',
    ];

    #[test]
    fn every_invisible_separator_is_removed_and_the_text_around_it_kept() {
        for &c in SEPARATORS {
            let text = format!("new /data/hunter{c}2-secret\tdone");
            assert_eq!(visible(&text), "new /data/hunter2-secret\tdone", "{c:?}");
        }
        let bytes = b"hunter\xff2";
        assert_eq!(visible(&String::from_utf8_lossy(bytes)), "hunter2");
    }

    #[test]
    fn printable_text_is_borrowed_unchanged() {
        for text in ["plain ascii", "é🔑 日本語 ‐ dash", "tab\tkept", ""] {
            assert!(matches!(visible(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn a_terminal_gets_escapes_instead_of_controls() {
        assert_eq!(for_terminal("a\u{1b}[2Jb\u{9b}31mc\u{8}\td"), "a\\x1b[2Jb\\u{9b}31mc\\x08\td");
        assert!(matches!(for_terminal("plain\ttext é"), Cow::Borrowed(_)));
    }
}
