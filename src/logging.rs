//! Logging: `tracing` to stderr, one line per event, text or JSON, every line redacted.
//!
//! Redaction happens twice: each field's raw value is masked before it is quoted or
//! JSON-encoded ([`fields`]), and the finished line is masked again, for the escaped forms
//! of each secret, by the writer ([`RedactingStderr`]).
//!
//! The level comes from `BACKUPNIZZA_LOG` when set, else the task file. ANSI colours only on
//! a terminal: under systemd or launchd stderr is a pipe or the journal and gets plain lines.

use std::io::{IsTerminal, Write};

use tracing::level_filters::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogFormat, LogLevel, LogSettings};

mod fields;

/// Installs the global subscriber. Later calls do nothing (tests start several daemons).
pub(crate) fn init(settings: LogSettings) {
    let level = std::env::var("BACKUPNIZZA_LOG")
        .ok()
        .and_then(|l| LogLevel::from_name(&l))
        .unwrap_or(settings.level);
    let filter = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_writer(RedactingStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match settings.format {
        LogFormat::Text => builder.fmt_fields(fields::Fields::Text).try_init(),
        LogFormat::Json => {
            builder.fmt_fields(fields::Fields::Json).event_format(fields::JsonLine).try_init()
        }
    };
}

/// Hands out one buffer per event; the buffer is redacted (the second net: raw values and
/// their escaped forms) and written in one piece on drop, so lines from concurrent tasks
/// never interleave.
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer(Vec::with_capacity(256))
    }
}

struct LineBuffer(Vec<u8>);

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.0);
        let clean = crate::redact::redact(&text);
        let _ = std::io::stderr().lock().write_all(clean.as_bytes());
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}
