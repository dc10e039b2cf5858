//! Plain-text tables for the terminal: columns sized to their widest cell,
//! numbers right-aligned. Rendering only; what goes in the cells is each
//! subcommand's choice.

/// A table under construction.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table with a rule under the header; columns of numbers (or `-`)
    /// are right-aligned.
    pub fn render(&self) -> String {
        let cols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; cols];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        // A column is right-aligned, header included, when its cells are numbers.
        let right: Vec<bool> = (0..cols)
            .map(|i| {
                self.rows
                    .iter()
                    .any(|r| r.get(i).is_some_and(|c| !c.is_empty()))
                    && self
                        .rows
                        .iter()
                        .all(|r| r.get(i).is_none_or(|c| c.is_empty() || is_numeric(c)))
            })
            .collect();
        let mut out = String::new();
        let line = |out: &mut String, row: &[String]| {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                let pad = width - cell.chars().count();
                if i > 0 {
                    text.push_str("  ");
                }
                if right[i] {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut out, &self.header);
        let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for row in &self.rows {
            line(&mut out, row);
        }
        out
    }
}

fn is_numeric(cell: &str) -> bool {
    let t = cell
        .trim_start_matches(['+', '-', '$'])
        .trim_end_matches(['%', 'x']);
    cell == "-" || (!t.is_empty() && t.replace(',', "").parse::<f64>().is_ok())
}

/// Error counts as `code n, code n`.
pub fn code_list<N: std::fmt::Display>(counts: &std::collections::BTreeMap<String, N>) -> String {
    counts
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A number with `decimals` digits, or `-` when absent or not finite.
pub fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new(&["name", "ms"]);
        t.row(vec!["a".into(), "1.5".into()]);
        t.row(vec!["longer".into(), "100.25".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "name        ms");
        assert_eq!(lines[2], "a          1.5");
        assert_eq!(lines[3], "longer  100.25");
        assert_eq!(num(None, 1), "-");
        assert_eq!(num(Some(f64::NAN), 1), "-");
        assert_eq!(num(Some(2.346), 2), "2.35");
    }
}
