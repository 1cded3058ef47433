//! The daemon's own messages (health changes, reloads, errors) to the
//! syslog sinks, with their severity: a `tracing` layer beside the one
//! that prints them on standard error.

use std::fmt::{self, Write};

use tracing::{field::Field, Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

use super::{writer, Entry, Severity};

/// Sends each event that passed the subscriber's filter to the syslog
/// sinks, as `message key=value ...`.
pub struct DaemonLayer;

fn severity(level: &Level) -> Severity {
    match *level {
        Level::ERROR => Severity::Err,
        Level::WARN => Severity::Warning,
        Level::INFO => Severity::Info,
        _ => Severity::Debug,
    }
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
    /// A `syslog = "alert"` field: the severity for syslog when the
    /// tracing level cannot say it (alert, notice, emerg...).
    severity: Option<Severity>,
}

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else if field.name() == "syslog" {
            self.severity = value.parse().ok();
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for DaemonLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        let sev = text.severity.unwrap_or_else(|| severity(event.metadata().level()));
        if !writer::enabled(sev, true) {
            return;
        }
        text.message.push_str(&text.fields);
        // One message, one line.
        let line = text.message.replace('\n', " | ");
        writer::push(Entry::Daemon(sev, line));
    }
}
