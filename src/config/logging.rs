//! `[logging]`: the log format, the filter, and whether bodies are logged.

use serde::Deserialize;

use super::names::choose;

named_enum! {
    /// Log output.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum LogFormat {
        #[default]
        Text = "text",
        /// One JSON object per line.
        Json = "json",
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub level: String,
    /// Log prompts and completions (off by default: they are customer data).
    pub log_bodies: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::default(),
            level: "info".into(),
            log_bodies: false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogging {
    format: Option<String>,
    level: Option<String>,
    log_bodies: Option<bool>,
}

pub(super) fn validate(raw: RawLogging, e: &mut Vec<String>) -> LoggingConfig {
    let d = LoggingConfig::default();
    LoggingConfig {
        format: raw
            .format
            .and_then(|v| choose("logging.format", &v, LogFormat::NAMES, e))
            .unwrap_or(d.format),
        level: raw.level.unwrap_or(d.level),
        log_bodies: raw.log_bodies.unwrap_or(d.log_bodies),
    }
}
