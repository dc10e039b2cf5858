//! `[catalog]`: a model catalog file replacing the embedded one.

use serde::Deserialize;
use std::path::PathBuf;

use super::values::expand_env;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCatalog {
    file: Option<String>,
}

/// The catalog file, if one replaces the embedded catalog.
pub(super) fn validate(raw: RawCatalog, e: &mut Vec<String>) -> Option<PathBuf> {
    raw.file
        .map(|f| PathBuf::from(expand_env("catalog.file", &f, e)))
}
