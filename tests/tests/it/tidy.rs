//! Tidy checks on the source tree: habits the style guide asks for, kept by a test.

use std::path::{Path, PathBuf};

use mcpfier_tests::workspace;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | ".venv") {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_says_what_it_is_for() {
    let mut files = Vec::new();
    rust_files(&workspace(), &mut files);
    assert!(files.len() > 10);
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! header: {missing:?}"
    );
}

#[test]
fn every_crate_uses_the_workspace_lints() {
    let root = workspace();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find(|l| l.starts_with("members"))
        .expect("a members line");
    for member in members.split('"').skip(1).step_by(2) {
        let text = std::fs::read_to_string(root.join(member).join("Cargo.toml")).unwrap();
        assert!(
            text.contains("[lints]\nworkspace = true"),
            "{member}/Cargo.toml lacks `[lints] workspace = true`"
        );
        assert!(
            root.join("ARCHITECTURE.md").exists()
                && std::fs::read_to_string(root.join("ARCHITECTURE.md"))
                    .unwrap()
                    .contains(&format!("`{member}`")),
            "ARCHITECTURE.md does not mention `{member}`"
        );
    }
}

#[test]
fn no_test_is_ignored_and_no_code_shells_out_to_docker() {
    let mut files = Vec::new();
    rust_files(&workspace(), &mut files);
    let ignore = ["#[", "ignore]"].concat();
    let docker_cli = ["Command::new(\"", "docker\")"].concat();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains(&ignore),
            "{} has an ignored test",
            f.display()
        );
        assert!(
            !text.contains(&docker_cli),
            "{} runs the docker CLI",
            f.display()
        );
    }
}
