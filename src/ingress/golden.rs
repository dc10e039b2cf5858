//! Golden-file cases for the API translators (tests only): a folder of
//! `<case>.in.json` files, each with its expected output beside it, so a reader
//! learns a translation from data and a change to one shows as a diff.
//!
//! `UPDATE_GOLDEN=1` rewrites the expected files from what the code does now
//! (and writes the missing ones); review the diff before committing it.

use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The cases of one translator, checked folder by folder; every mismatch is
/// collected so one run shows them all.
pub(crate) struct Golden {
    root: PathBuf,
    update: bool,
    failures: Vec<String>,
    checked: usize,
}

impl Golden {
    /// The cases under `root` (a path from the crate's root).
    pub(crate) fn new(root: &str) -> Golden {
        Golden {
            root: Path::new(env!("CARGO_MANIFEST_DIR")).join(root),
            update: std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1"),
            failures: Vec::new(),
            checked: 0,
        }
    }

    /// Runs every `<folder>/<case>.in.json` through `run` and compares what it
    /// returns with `<folder>/<case>.out.<ext>`.
    pub(crate) fn folder(&mut self, folder: &str, ext: &str, run: impl Fn(&Value) -> String) {
        let dir = self.root.join(folder);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        let out_suffix = format!(".out.{ext}");
        let mut cases = 0;
        for path in &inputs {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if let Some(case) = name.strip_suffix(&out_suffix) {
                if !dir.join(format!("{case}.in.json")).exists() {
                    self.failures
                        .push(format!("{folder}/{name}: no {case}.in.json beside it"));
                }
                continue;
            }
            let Some(case) = name.strip_suffix(".in.json") else {
                self.failures.push(format!(
                    "{folder}/{name}: neither .in.json nor {out_suffix}"
                ));
                continue;
            };
            cases += 1;
            let text = std::fs::read_to_string(path).unwrap();
            let input: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{folder}/{name} is not JSON: {e}"));
            let actual = run(&input);
            let expected_path = dir.join(format!("{case}{out_suffix}"));
            let expected = std::fs::read_to_string(&expected_path).ok();
            if expected.as_deref() == Some(actual.as_str()) {
                continue;
            }
            if self.update {
                std::fs::write(&expected_path, &actual).unwrap();
                continue;
            }
            let label = format!("{folder}/{case}{out_suffix}");
            self.failures.push(match expected {
                None => format!("{label}: missing; the translator gives\n{actual}"),
                Some(expected) => format!("{label}:\n{}", diff(&expected, &actual)),
            });
        }
        assert!(cases > 0, "no cases in {}", dir.display());
        self.checked += cases;
    }

    /// Fails with every mismatch found, each with its diff.
    pub(crate) fn finish(self) {
        if self.failures.is_empty() {
            return;
        }
        let mut report = format!(
            "{} of {} golden cases under {} differ (UPDATE_GOLDEN=1 rewrites them):\n",
            self.failures.len(),
            self.checked,
            self.root.display()
        );
        for failure in &self.failures {
            let _ = writeln!(report, "\n{failure}");
        }
        panic!("{report}");
    }
}

/// A unified diff, expected (`-`) to actual (`+`).
fn diff(expected: &str, actual: &str) -> String {
    similar::TextDiff::from_lines(expected, actual)
        .unified_diff()
        .context_radius(3)
        .header("expected", "actual")
        .to_string()
}

/// JSON as the expected files hold it: pretty, with a final newline.
pub(crate) fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap();
    text.push('\n');
    text
}

/// A stream file's events (`[{"messageStart": {...}}, ...]`, the ConverseStream
/// union as the SDKs show it) as the proxy receives them.
pub(crate) fn events(list: &Value) -> Vec<bedrock_wire::converse::ConverseEvent> {
    use bedrock_wire::converse::{ConverseEvent, EventKind};
    list.as_array()
        .expect("`events` is a list")
        .iter()
        .map(|event| {
            let (name, payload) = event
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.iter().next())
                .unwrap_or_else(|| panic!("an event is {{\"<type>\": payload}}: {event}"));
            let kind = EventKind::from_name(name)
                .unwrap_or_else(|| panic!("`{name}` is not a ConverseStream event"));
            ConverseEvent::new(kind, payload)
        })
        .collect()
}
