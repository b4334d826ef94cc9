//! Log formatting that masks secrets before it escapes anything: each field's raw value (the
//! message, a `%display` or `?debug` field, a `&str`) is redacted first, then quoted or
//! JSON-encoded. `tracing-subscriber`'s own formatters escape first, and a secret holding a
//! `"`, a `\` or a control character no longer matched once it was `\"`, `\\` or `\u001b`.
//!
//! [`Fields`] formats event and span fields for both formats (the text log keeps
//! `tracing-subscriber`'s `Full` layout around it); [`JsonLine`] writes a JSON event in the
//! shape of `tracing-subscriber`'s `json().flatten_event(true)` (timestamp, level, the event's
//! fields at the top, `span` and `spans`), from the redacted values.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use zeroize::Zeroizing;

use crate::redact::redact;

/// One field's value, already redacted.
enum Value {
    /// The message, or a field given as `%display` or `?debug`: written bare in text.
    Bare(String),
    /// A `&str` field: quoted in text, as `tracing-subscriber` does.
    Str(String),
    /// Numbers and booleans: no secret is a field of these types, and a formatter writes them
    /// without escapes, so the log writer's last pass masks them like any text.
    Plain(String, bool),
}

/// Collects an event's or a span's fields, redacting each raw value as it is recorded.
#[derive(Default)]
struct Collect(Vec<(&'static str, Value)>);

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        let clean = redact(value).into_owned();
        let v = if field.name() == "message" { Value::Bare(clean) } else { Value::Str(clean) };
        self.0.push((field.name(), v));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // The unmasked text may hold a secret: wiped once masked (a buffer the formatter
        // outgrew is freed unwiped, as with any formatted text).
        let mut raw = Zeroizing::new(String::new());
        let _ = write!(raw, "{value:?}");
        self.0.push((field.name(), Value::Bare(redact(&raw).into_owned())));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.push((field.name(), Value::Plain(value.to_string(), true)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.push((field.name(), Value::Plain(value.to_string(), true)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; those become strings, as serde_json would refuse them.
        self.0.push((field.name(), Value::Plain(value.to_string(), value.is_finite())));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.push((field.name(), Value::Plain(value.to_string(), true)));
    }
}

impl Collect {
    fn of(fields: impl RecordFields) -> Collect {
        let mut collect = Collect::default();
        fields.record(&mut collect);
        collect
    }

    /// `message k=v k="text"`, as `tracing-subscriber`'s default field formatter writes it
    /// (without colours), ANSI escapes in the message defused after masking.
    fn write_text(&self, w: &mut impl fmt::Write) -> fmt::Result {
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                w.write_char(' ')?;
            }
            let name = name.strip_prefix("r#").unwrap_or(name);
            match value {
                Value::Bare(text) if name == "message" => write_defused(w, text)?,
                Value::Bare(text) | Value::Plain(text, _) => write!(w, "{name}={text}")?,
                Value::Str(text) => write!(w, "{name}={text:?}")?,
            }
        }
        Ok(())
    }

    /// `"k":v,...` (no braces), each value JSON-encoded after masking.
    fn write_json_members(&self, w: &mut impl fmt::Write, mut first: bool) -> fmt::Result {
        for (name, value) in &self.0 {
            if !first {
                w.write_char(',')?;
            }
            first = false;
            write_json_str(w, name.strip_prefix("r#").unwrap_or(name))?;
            w.write_char(':')?;
            match value {
                Value::Bare(text) | Value::Str(text) | Value::Plain(text, false) => {
                    write_json_str(w, text)?;
                }
                Value::Plain(text, true) => w.write_str(text)?,
            }
        }
        Ok(())
    }
}

/// Writes `text` as a JSON string.
fn write_json_str(w: &mut impl fmt::Write, text: &str) -> fmt::Result {
    match serde_json::to_string(text) {
        Ok(json) => w.write_str(&json),
        Err(_) => Err(fmt::Error),
    }
}

/// Writes `text` with the control characters a terminal acts on shown as escapes (as
/// `tracing-subscriber` does for messages), so a task's output cannot drive the terminal.
fn write_defused(w: &mut impl fmt::Write, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => write!(w, "\\x{:02x}", c as u32)?,
            c if ('\u{80}'..='\u{9f}').contains(&c) => write!(w, "\\u{{{:x}}}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    Ok(())
}

/// The field formatter for events and spans: text (`k=v`) or a JSON object.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fields {
    Text,
    Json,
}

impl<'writer> FormatFields<'writer> for Fields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let collected = Collect::of(fields);
        match self {
            Fields::Text => collected.write_text(&mut writer),
            Fields::Json => {
                writer.write_char('{')?;
                collected.write_json_members(&mut writer, true)?;
                writer.write_char('}')
            }
        }
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let collected = Collect::of(fields);
        match self {
            Fields::Text => {
                if !current.fields.is_empty() {
                    current.fields.push(' ');
                }
                collected.write_text(&mut current.fields)
            }
            Fields::Json => {
                // `{...}` becomes `{...,new}`: the object is ours, so its last byte is `}`.
                let first = current.fields.len() <= 2;
                if current.fields.ends_with('}') {
                    current.fields.pop();
                } else {
                    current.fields.push('{');
                }
                collected.write_json_members(&mut current.fields, first)?;
                current.fields.push('}');
                Ok(())
            }
        }
    }
}

/// A JSON event line from redacted values: `timestamp`, `level`, the event's fields, then
/// the current `span` and the `spans` from the root, each with its `name`.
pub(super) struct JsonLine;

impl<S> FormatEvent<S, Fields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, Fields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        writer.write_str("{\"timestamp\":")?;
        write_json_str(&mut writer, &timestamp)?;
        write!(writer, ",\"level\":\"{}\"", event.metadata().level())?;
        Collect::of(event).write_json_members(&mut writer, false)?;
        let spans: Vec<String> = ctx
            .event_scope()
            .into_iter()
            .flat_map(tracing_subscriber::registry::Scope::from_root)
            .map(|span| {
                let extensions = span.extensions();
                // Our field formatter wrote these: a JSON object, redacted.
                let fields = extensions
                    .get::<FormattedFields<Fields>>()
                    .map_or("{}", |f| f.fields.as_str())
                    .trim_end_matches('}');
                let comma = if fields.len() > 1 { "," } else { "" };
                let fields = if fields.is_empty() { "{" } else { fields };
                let mut name = String::new();
                let _ = write_json_str(&mut name, span.name());
                format!("{fields}{comma}\"name\":{name}}}")
            })
            .collect();
        if let Some(current) = spans.last() {
            write!(writer, ",\"span\":{current},\"spans\":[{}]", spans.join(","))?;
        }
        writer.write_str("}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_members_and_text_fields_are_written_like_tracing_subscriber() {
        let c = Collect(vec![
            ("message", Value::Bare("a \"b\"\n".into())),
            ("stream", Value::Str("stdout".into())),
            ("n", Value::Plain("3".into(), true)),
            ("x", Value::Plain("NaN".into(), false)),
        ]);
        let mut json = String::new();
        c.write_json_members(&mut json, true).unwrap();
        assert_eq!(json, r#""message":"a \"b\"\n","stream":"stdout","n":3,"x":"NaN""#);
        let mut text = String::new();
        c.write_text(&mut text).unwrap();
        assert_eq!(text, "a \"b\"\n stream=\"stdout\" n=3 x=NaN");
        let mut defused = String::new();
        write_defused(&mut defused, "red \x1b[31m").unwrap();
        assert_eq!(defused, "red \\x1b[31m");
    }
}
