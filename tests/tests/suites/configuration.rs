//! The configuration is declared once: every environment variable a binary
//! reads has one `#[arg(env = ...)]` in the workspace, and the README names
//! it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    Ok(())
}

/// Each `env = "NAME"` of a clap argument in the sources of the shipped
/// crates, with where it is declared.
fn declared_variables() -> std::io::Result<BTreeMap<String, Vec<String>>> {
    let root = repo_root();
    let mut files = Vec::new();
    rust_files(&root.join("shared/src"), &mut files)?;
    for entry in std::fs::read_dir(root.join("functions"))? {
        rust_files(&entry?.path().join("src"), &mut files)?;
    }
    let mut declared: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("env = \"") {
                rest = &rest[at + "env = \"".len()..];
                let name = rest.split('"').next().unwrap_or_default();
                let shown = file.strip_prefix(&root).unwrap_or(&file);
                let place = format!("{}:{}", shown.display(), n + 1);
                declared.entry(name.to_string()).or_default().push(place);
            }
        }
    }
    Ok(declared)
}

#[test]
fn every_environment_variable_is_declared_once() {
    let declared = declared_variables().unwrap();
    assert!(
        declared.len() >= 30,
        "the scan found only {} variables: is it reading the sources?",
        declared.len()
    );
    let twice: Vec<_> = declared
        .iter()
        .filter(|(_, places)| places.len() > 1)
        .collect();
    assert!(twice.is_empty(), "declared more than once: {twice:#?}");
}

#[test]
fn the_readme_names_every_environment_variable() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let missing: Vec<_> = declared_variables()
        .unwrap()
        .into_keys()
        .filter(|name| !readme.contains(&format!("`{name}`")))
        .collect();
    assert!(missing.is_empty(), "not in the README: {missing:?}");
}

#[test]
fn every_hand_kept_benchmark_row_says_when_and_at_which_commit_it_was_recorded() {
    let text = std::fs::read_to_string(repo_root().join("BENCHMARKS.md")).unwrap();
    let kept = text
        .split("\n## Measured by the fault suite")
        .nth(1)
        .expect("the hand-kept section of BENCHMARKS.md");
    let rows: Vec<&str> = kept
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| fault |"))
        .filter(|l| !l.starts_with("| ---"))
        .collect();
    assert!(rows.len() >= 5, "{} rows", rows.len());
    let shallow = std::process::Command::new("git")
        .args(["rev-parse", "--is-shallow-repository"])
        .current_dir(repo_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
        .unwrap_or(false);
    for row in rows {
        let recorded = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
        let (date, commit) = recorded
            .split_once(", ")
            .unwrap_or_else(|| panic!("no \"DATE, COMMIT\" in {row}"));
        assert!(
            chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
            "{date} in {row}"
        );
        assert!(
            commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "{commit} in {row}"
        );
        if shallow {
            eprintln!("a shallow clone: commit {commit} is not looked up");
            continue;
        }
        let known = std::process::Command::new("git")
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .current_dir(repo_root())
            .status()
            .unwrap();
        assert!(
            known.success(),
            "{commit} is no commit of this repository: {row}"
        );
    }
}
