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
    // Every public item is documented: the build fails otherwise (proto's generated code
    // alone is exempt, in proto/src/lib.rs).
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("missing_docs = \"deny\""),
        "the workspace lints must deny missing_docs"
    );
    for member in members() {
        let member = member.as_str();
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

/// The crates a workspace member depends on directly (`[dependencies]`, normal ones only).
fn dependencies(member: &str) -> Vec<String> {
    let text = std::fs::read_to_string(workspace().join(member).join("Cargo.toml")).unwrap();
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['.', '=', ' ']).next().unwrap_or_default();
            deps.push(name.to_owned());
        }
    }
    deps
}

fn members() -> Vec<String> {
    let manifest = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find(|l| l.starts_with("members"))
        .expect("a members line");
    members
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn each_outside_dependency_is_reached_through_one_crate() {
    // (dependency, the only member that may depend on it directly)
    let rules = [
        ("rmcp", "coordinator"),
        ("bollard", "exec"),
        ("etcd-client", "common"),
        ("prost", "proto"),
    ];
    let members = members();
    assert!(members.contains(&"exec".to_owned()));
    for member in &members {
        let deps = dependencies(member);
        for (dep, owner) in rules {
            assert!(
                member == owner || !deps.iter().any(|d| d == dep),
                "{member}/Cargo.toml depends on {dep}; only {owner} may (reach it through mcpfier-{owner})"
            );
        }
    }
    assert!(dependencies("exec").iter().any(|d| d == "bollard"));
}

#[test]
fn the_agent_and_the_coordinator_never_depend_on_each_other() {
    assert!(
        !dependencies("coordinator")
            .iter()
            .any(|d| d == "mcpfier-agent"),
        "coordinator depends on mcpfier-agent: shared code belongs in mcpfier-exec or mcpfier-common"
    );
    assert!(
        !dependencies("agent")
            .iter()
            .any(|d| d == "mcpfier-coordinator"),
        "agent depends on mcpfier-coordinator"
    );
    for member in ["exec", "common", "proto"] {
        let deps = dependencies(member);
        for inner in ["mcpfier-agent", "mcpfier-coordinator"] {
            assert!(
                !deps.iter().any(|d| d == inner),
                "{member} depends on {inner}"
            );
        }
    }
}

/// Product code of a file: everything before its `#[cfg(test)]` module.
fn product_code(text: &str) -> &str {
    match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    }
}

#[test]
fn no_task_is_spawned_without_an_owner() {
    // Long-running tasks run in a TaskTracker (or JoinSet) of the component that owns them,
    // which stops them and waits for them; a bare spawn has no owner.
    let bare = [
        ["tokio::", "spawn("].concat(),
        ["Handle::current()", ".spawn("].concat(),
        ["handle", ".spawn("].concat(),
        ["task::", "spawn("].concat(),
    ];
    let mut offenders = Vec::new();
    for crate_dir in ["coordinator", "agent", "exec", "common", "proto"] {
        let mut files = Vec::new();
        rust_files(&workspace().join(crate_dir).join("src"), &mut files);
        // `tests.rs` files are the `#[cfg(test)] mod tests;` of their parent module.
        files.retain(|f| f.file_name().is_some_and(|n| n != "tests.rs"));
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, line) in product_code(&text).lines().enumerate() {
                if bare.iter().any(|b| line.contains(b.as_str())) {
                    offenders.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "bare spawns (spawn through the owner's TaskTracker instead):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_tidy_checks_see_what_they_look_for() {
    // The checks above would pass on nothing: make sure they read real text.
    assert!(product_code("a\n#[cfg(test)]\nb").ends_with("a\n"));
    assert!(dependencies("coordinator").iter().any(|d| d == "rmcp"));
    assert!(dependencies("common").iter().any(|d| d == "etcd-client"));
}

#[test]
fn unsafe_code_lives_in_two_audited_modules() {
    // The workspace denies unsafe code and every crate but the engine forbids it; the engine
    // allows it in two modules: `spawn`, which starts a child straight into its cgroup, and
    // `heap`, one call to glibc's malloc_trim.
    let mut files = Vec::new();
    rust_files(&workspace(), &mut files);
    let block = ["unsafe", " {"].concat();
    let allow = ["allow(", "unsafe_code)]"].concat();
    let module_allow = ["#![", &allow].concat();
    let mut audited = [0, 0];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let module = ["exec/src/spawn.rs", "exec/src/heap.rs"]
            .iter()
            .position(|m| f.ends_with(m));
        if let Some(i) = module {
            assert_eq!(text.matches(&allow).count(), 1, "{}", f.display());
            assert!(text.contains(&module_allow), "{}", f.display());
            audited[i] += text.matches(&block).count();
            continue;
        }
        let blocks = text.matches(&block).count() + text.matches(&allow).count();
        assert_eq!(
            blocks,
            0,
            "{}: unsafe code outside exec/src/spawn.rs and exec/src/heap.rs",
            f.display()
        );
    }
    assert!(audited[0] > 0, "exec/src/spawn.rs was not read");
    assert_eq!(audited[1], 1, "exec/src/heap.rs has one unsafe call");
    let lib = std::fs::read_to_string(workspace().join("exec/src/lib.rs")).unwrap();
    assert!(lib.contains("#![deny(unsafe_code)]"));
}
