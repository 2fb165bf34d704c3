//! Printing: kubectl-like tables, JSON/YAML in the API's camelCase mapping, errors.

use std::time::SystemTime;

use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Yaml,
    Wide,
}

/// Prints a message (or any serializable value) as JSON or YAML.
pub fn print_structured<T: Serialize>(value: &T, format: Format) -> Result<()> {
    match format {
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
        _ => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

/// A table with left-aligned columns separated by three spaces.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Rows without the header, for watch output.
    pub fn render_body(&self) -> String {
        self.render()
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

/// "5s", "3m", "2h", "4d" since an RFC 3339 time; "<unknown>" when it does not parse.
pub fn age(rfc3339: &str) -> String {
    let Ok(t) = humantime::parse_rfc3339(rfc3339) else {
        return "<unknown>".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .map_or(0, |d| d.as_secs());
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// Error text for the terminal: the server's code and message, or the local cause chain.
pub fn error_text(e: &anyhow::Error) -> String {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        return format!("Error from server ({:?}): {}", s.code(), s.message());
    }
    format!("error: {e:#}")
}

/// Byte counts for tables: "2Gi", "1.5Gi".
pub fn bytes(b: u64) -> String {
    eci_agent::quantity::human_memory(b)
}

/// Millicores for tables: "2", "1500m".
pub fn cpu(millis: u64) -> String {
    eci_agent::quantity::format_cpu(millis)
}
