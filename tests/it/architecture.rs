//! Keeps DESIGN.md's dependency table true: imports only go down the layers, and the two
//! request-path siblings (`proxy`, `endpoints`) never import each other.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Layer of each top-level module; leaves (`None`) may be used by anyone and use only leaves.
fn layer(module: &str) -> Option<u8> {
    match module {
        "main" | "cli" => Some(6),
        "server" => Some(5),
        "proxy" | "endpoints" => Some(4),
        "state" | "problem" | "accounts" => Some(3),
        "auth" | "oauth" | "mail" => Some(2),
        "cache" | "ratelimit" | "router" => Some(1),
        "store" => Some(0),
        _ => None,
    }
}

/// `echo` stands apart: it imports nothing of the gateway and nothing but `cli` imports it.
const APART: &str = "echo";

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level modules named after `crate::`, including `use crate::{a, b::c}` groups.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = 0usize;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(group[start..j].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(group[start..j].trim()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty() && m != "self");
    found
}

#[test]
fn imports_only_go_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for used in crate_imports(&text) {
            if used == module {
                continue;
            }
            let ok = if module == APART {
                false
            } else if used == APART {
                module == "cli"
            } else {
                match (layer(&module), layer(&used)) {
                    (_, None) => true,
                    (None, Some(_)) => false,
                    (Some(a), Some(b)) => a > b,
                }
            };
            if !ok {
                violations.push(format!("{} imports crate::{used}", rel.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_import_scanner_sees_groups() {
    let found =
        crate_imports("use crate::{config::X, proxy::{a, b}, state};\nlet x = crate::router::f();");
    let want: BTreeSet<String> = ["config", "proxy", "state", "router"]
        .map(String::from)
        .into();
    assert_eq!(found, want);
}
