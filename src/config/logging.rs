//! `[logging]`: the log format, the filter, whether bodies are logged, and the
//! CloudWatch Embedded Metric Format lines written beside the log.

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
    /// One CloudWatch Embedded Metric Format line per request on stdout.
    pub cloudwatch_emf: bool,
    /// The CloudWatch namespace of those metrics.
    pub cloudwatch_namespace: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::default(),
            level: "info".into(),
            log_bodies: false,
            cloudwatch_emf: false,
            cloudwatch_namespace: "BedrockProxy".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogging {
    format: Option<String>,
    level: Option<String>,
    log_bodies: Option<bool>,
    cloudwatch_emf: Option<bool>,
    cloudwatch_namespace: Option<String>,
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
        cloudwatch_emf: raw.cloudwatch_emf.unwrap_or(d.cloudwatch_emf),
        cloudwatch_namespace: raw
            .cloudwatch_namespace
            .filter(|n| check_namespace(n, e))
            .unwrap_or(d.cloudwatch_namespace),
    }
}

/// CloudWatch's rules for a custom namespace: 1 to 255 of letters, digits and
/// `. - _ / # : ` and space, not starting with `AWS/` (reserved for AWS's own).
fn check_namespace(namespace: &str, e: &mut Vec<String>) -> bool {
    let valid = !namespace.is_empty()
        && namespace.len() <= 255
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c))
        && !namespace.starts_with("AWS/");
    if !valid {
        e.push(format!(
            "logging.cloudwatch_namespace: `{namespace}` must be 1 to 255 letters, digits, . - _ / # : or spaces, not starting with AWS/"
        ));
    }
    valid
}
