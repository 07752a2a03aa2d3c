//! Generates the `klf:base` reference the Chef's code generator is prompted with, from the library's
//! own doc comments (`src/sandbox/base.js`, `src/sandbox/library/*.js`), so the prompt and the
//! library cannot drift apart: a class, method or option added to the library appears in the next
//! build's prompt.
//!
//! What it keeps: every exported class (with what it extends and its `static defaults`), every
//! exported function, and every public method (not `#private`, not starting with `_`, not
//! `constructor`), each with the doc comment above it, reduced to its text.

use std::fmt::Write as _;
use std::path::Path;

const SOURCES: [&str; 7] = [
    "src/sandbox/base.js",
    "src/sandbox/library/common.js",
    "src/sandbox/library/security.js",
    "src/sandbox/library/communication.js",
    "src/sandbox/library/data.js",
    "src/sandbox/library/intelligence.js",
    "src/sandbox/library/workflow.js",
];

fn main() -> Result<(), String> {
    let mut reference = String::new();
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
        let text = std::fs::read_to_string(source).map_err(|e| format!("{source}: {e}"))?;
        document(&text, &mut reference);
    }
    println!("cargo:rerun-if-changed=build.rs");
    let out = std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?;
    let path = Path::new(&out).join("base_reference.md");
    std::fs::write(&path, reference).map_err(|e| format!("{}: {e}", path.display()))
}

/// The text of a `/** … */` comment, one line.
fn comment_text(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| {
            l.trim()
                .trim_start_matches("/**")
                .trim_end_matches("*/")
                .trim_start_matches('*')
                .trim()
        })
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The part of a declaration line up to its opening brace.
fn signature(line: &str) -> &str {
    line.trim().trim_end_matches('{').trim()
}

fn document(text: &str, out: &mut String) {
    let lines: Vec<&str> = text.lines().collect();
    let mut doc: Option<String> = None;
    // Inside an exported class: only its methods are documented.
    let mut exported = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim();
        if trimmed.starts_with("/**") {
            let start = i;
            while !lines[i].contains("*/") && i + 1 < lines.len() {
                i += 1;
            }
            doc = Some(comment_text(&lines[start..=i]));
            i += 1;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0
            && !trimmed.is_empty()
            && !trimmed.starts_with('}')
            && !trimmed.starts_with("//")
        {
            exported = trimmed.starts_with("export class ");
        }
        if indent == 0 && trimmed.starts_with("export class ") {
            let _ = writeln!(
                out,
                "\n## {}",
                signature(trimmed).trim_start_matches("export ")
            );
            if let Some(doc) = doc.take() {
                let _ = writeln!(out, "{doc}");
            }
        } else if indent == 0 && trimmed.starts_with("export function ") {
            let _ = writeln!(
                out,
                "\n- function {}",
                signature(trimmed).trim_start_matches("export function ")
            );
            if let Some(doc) = doc.take() {
                let _ = writeln!(out, "  {doc}");
            }
        } else if exported && indent == 2 && trimmed.starts_with("static defaults = ") {
            // Options: the object literal, possibly over several lines.
            let mut literal = trimmed.trim_start_matches("static defaults = ").to_string();
            while !literal.trim_end().ends_with(';') && i + 1 < lines.len() {
                i += 1;
                literal.push(' ');
                literal.push_str(lines[i].trim());
            }
            let _ = writeln!(
                out,
                "- options (`this.settings`, from config): {}",
                literal.trim_end_matches(';')
            );
            doc = None;
        } else if exported && indent == 2 && is_public_method(trimmed) {
            let _ = write!(out, "- {}", signature(trimmed));
            match doc.take() {
                Some(doc) => {
                    let _ = writeln!(out, ": {doc}");
                }
                None => out.push('\n'),
            }
        } else if !trimmed.is_empty() && !trimmed.starts_with("//") {
            doc = None;
        }
        i += 1;
    }
}

fn is_public_method(line: &str) -> bool {
    let name = line
        .trim_start_matches("static ")
        .trim_start_matches("async ")
        .trim_start_matches("get ");
    let Some(open) = name.find('(') else {
        return false;
    };
    let ident = &name[..open];
    line.ends_with('{')
        && !ident.is_empty()
        && ident.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !ident.starts_with('_')
        && !matches!(
            ident,
            "constructor" | "if" | "for" | "while" | "switch" | "catch"
        )
}
