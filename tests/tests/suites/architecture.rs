//! The shape of the `shared` crate, read from its source: every module
//! imports only modules below it, no modules import each other in a
//! circle, no production file grows past a few hundred lines of code, and
//! nothing outside the store pages through a listing by hand.
//!
//! What counts as an import is every path the code names: `use` lines and
//! paths written inline (`crate::store::Store`, `super::settle::x`), with
//! comments, string literals and test modules left out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers of `shared`, lowest first. A module may name modules of the
/// layers below its own only. A new top-level module must be placed here.
const LAYERS: &[&[&str]] = &[
    // Leaves: values and helpers that know nothing of the rest.
    &["time", "crc", "redact", "gax", "beneath"],
    // The domain: jobs, downloads, their values and state machines.
    &["domain"],
    // The model port and its client; prices.
    &["vertex"],
    &["cost", "error"],
    // Ports and edges that only carry values.
    &[
        "objects",
        "push",
        "ack",
        "requests",
        "identity",
        "stage",
        "placeholder",
    ],
    &["bus"],
    &["job_events"],
    &["store"],
    &["events", "server", "manifest", "report"],
    &["config", "telemetry"],
    // `asmr doctor`: a deployment checked against what terraform makes.
    &["doctor"],
    // The live page, which intake and `asmr serve` both serve.
    &["live"],
    // The stages.
    &["generate", "deliver", "intake", "janitor", "webhooks"],
    // Every stage in one process.
    &["local_run"],
];

/// The largest production file, in lines of code (not blank, not a
/// comment, not a test module).
const MAX_CODE_LINES: usize = 600;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One module of `shared` (one file) and the modules it names.
struct Module {
    path: Vec<String>,

    code: String,
}

/// The source without comments, string literals and `#[cfg(test)]`
/// modules at the end of a file.
fn production_code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                out.push('"');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        '\n' => out.push('\n'),
                        _ => {}
                    }
                }
                out.push('"');
            }
            // A char literal such as '"' or '{' (lifetimes pass through).
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                let mut it = rest.chars();
                match (it.next(), it.next(), it.next()) {
                    (Some('\\'), Some(_), Some('\'')) => {
                        chars.nth(2);
                    }
                    (Some(_), Some('\''), _) => {
                        chars.nth(1);
                    }
                    _ => out.push('\''),
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether a file holds tests only (declared under `#[cfg(test)]`).
fn is_test_file(file: &Path) -> bool {
    let name = file.file_name().unwrap().to_str().unwrap();
    name == "tests.rs" || name == "testing.rs" || name.ends_with("_tests.rs")
}

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

fn modules() -> Vec<Module> {
    let src = repo().join("shared/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|file| !is_test_file(file))
        .map(|file| {
            let relative = file.strip_prefix(&src).unwrap().with_extension("");
            let mut path: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_str().unwrap().to_string())
                .collect();
            if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
                path.pop();
            }
            let code = production_code(&std::fs::read_to_string(&file).unwrap());
            Module { path, code }
        })
        .collect()
}

/// An identifier starting at `at`, if any.
fn ident_at(text: &str, at: usize) -> Option<&str> {
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// The paths named after `prefix` (`crate::` or `super::`) in `code`: the
/// segments of each (`["store", "Store"]`), a brace group giving one path
/// per member.
fn named_paths(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find(prefix) {
        let start = from + found;
        from = start + prefix.len();
        let before = code[..start].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut segments = Vec::new();
        let mut at = from;
        loop {
            if code[at..].starts_with('{') {
                let close = code[at..].find('}').map_or(code.len(), |i| at + i);
                for member in code[at + 1..close].split(',') {
                    let member = member.trim();
                    let first = member.split("::").next().unwrap_or_default().trim();
                    let mut path = segments.clone();
                    if !first.is_empty() && first != "self" {
                        path.push(first.to_string());
                    }
                    paths.push(path);
                }
                break;
            }
            match ident_at(code, at) {
                Some(ident) => {
                    segments.push(ident.to_string());
                    at += ident.len();
                    if code[at..].starts_with("::") {
                        at += 2;
                        continue;
                    }
                    paths.push(segments);
                    break;
                }
                None => {
                    paths.push(segments);
                    break;
                }
            }
        }
    }
    paths
}

/// The file module a path names: its longest prefix that is a module.
fn resolve(path: &[String], known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| known.contains(prefix))
}

/// Every module to the modules it names (itself left out).
fn imports(modules: &[Module]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    let mut edges = BTreeMap::new();
    for module in modules {
        let mut named = BTreeSet::new();
        for path in named_paths(&module.code, "crate::") {
            let path = match path.first().map(String::as_str) {
                // `crate::Error` and the like: the crate root's items.
                Some(_) => path,
                None => continue,
            };
            if let Some(target) = resolve(&path, &known) {
                named.insert(target);
            }
        }
        for path in named_paths(&module.code, "super::") {
            let mut base = module.path.clone();
            base.pop();
            let mut full = base.clone();
            full.extend(path);
            match resolve(&full, &known) {
                Some(target) => named.insert(target),
                None => named.insert(base),
            };
        }
        named.remove(&module.path);
        named.remove(&Vec::new());
        edges.insert(module.path.clone(), named);
    }
    edges
}

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&top))
}

fn name(path: &[String]) -> String {
    path.join("::")
}

#[test]
fn every_module_imports_only_modules_below_it() {
    let modules = modules();
    let edges = imports(&modules);
    let mut wrong = Vec::new();
    for (from, targets) in &edges {
        let Some(top) = from.first() else { continue };
        let Some(layer) = layer_of(top) else {
            wrong.push(format!("{} is in no layer: place it in LAYERS", name(from)));
            continue;
        };
        for to in targets {
            let Some(to_top) = to.first() else { continue };
            if to_top == top {
                continue;
            }
            match layer_of(to_top) {
                Some(to_layer) if to_layer < layer => {}
                _ => wrong.push(format!(
                    "{} imports {}, which is not below it",
                    name(from),
                    name(to)
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that run up the layers:\n{}",
        wrong.join("\n")
    );
    // The check reads what it should: the store is named by the stages.
    let generate = &edges[&vec!["generate".to_string()]];
    assert!(
        generate.contains(&vec!["store".to_string()]),
        "{generate:?}"
    );
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let modules = modules();
    let edges = imports(&modules);
    // Depth-first search for a back edge, file by file.
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
        circles: &mut Vec<String>,
    ) {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                0 => visit(next, edges, state, stack, circles),
                1 => {
                    let at = stack.iter().position(|n| n == next).unwrap();
                    let circle: Vec<String> = stack[at..].iter().map(|n| name(n)).collect();
                    circles.push(format!("{} -> {}", circle.join(" -> "), name(next)));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
    }
    let mut state = BTreeMap::new();
    let mut circles = Vec::new();
    for node in edges.keys() {
        if !state.contains_key(node) {
            visit(node, &edges, &mut state, &mut Vec::new(), &mut circles);
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_import_reader_sees_paths_groups_and_parents() {
    let code = production_code(
        "use crate::store::{Store, budget::Budget};\n// crate::report::x\nlet s = \"crate::config\";\nuse super::{settle, Intake};\nlet q = '\"'; crate::domain::job::Job::new();",
    );
    let crate_paths = named_paths(&code, "crate::");
    assert_eq!(
        crate_paths,
        [
            vec!["store".to_string(), "Store".to_string()],
            vec!["store".to_string(), "budget".to_string()],
            vec![
                "domain".to_string(),
                "job".to_string(),
                "Job".to_string(),
                "new".to_string()
            ],
        ]
    );
    let super_paths = named_paths(&code, "super::");
    assert_eq!(
        super_paths,
        [vec!["settle".to_string()], vec!["Intake".to_string()]]
    );
}

/// Lines of code of `text`: not blank, not a comment, before its tests.
fn code_lines(text: &str) -> usize {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .count()
}

#[test]
fn no_production_file_is_over_six_hundred_lines_of_code() {
    let mut files = Vec::new();
    rust_files(&repo().join("shared/src"), &mut files);
    for function in std::fs::read_dir(repo().join("functions")).unwrap() {
        rust_files(&function.unwrap().path().join("src"), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter(|file| !is_test_file(file))
        .filter_map(|file| {
            let lines = code_lines(&std::fs::read_to_string(file).unwrap());
            (lines > MAX_CODE_LINES).then(|| format!("{}: {lines}", file.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_CODE_LINES} lines of code:\n{}",
        long.join("\n")
    );
    assert!(files.len() > 50, "the walk found the sources");
}

#[test]
fn nothing_outside_the_store_pages_through_a_listing_by_hand() {
    let mut files = Vec::new();
    rust_files(&repo().join("shared/src"), &mut files);
    for function in std::fs::read_dir(repo().join("functions")).unwrap() {
        rust_files(&function.unwrap().path().join("src"), &mut files);
    }
    let store = repo().join("shared/src/store");
    let by_hand: Vec<String> = files
        .iter()
        .filter(|file| !is_test_file(file) && !file.starts_with(&store))
        .filter_map(|file| {
            let code = production_code(&std::fs::read_to_string(file).unwrap());
            ["list_jobs(", "list_downloads(", "list_rejected("]
                .iter()
                .find(|call| code.contains(*call))
                .map(|call| format!("{} calls {call}", file.display()))
        })
        .collect();
    assert!(
        by_hand.is_empty(),
        "use the store's walkers:\n{}",
        by_hand.join("\n")
    );
}
