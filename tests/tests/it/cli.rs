//! The `mcpfier` command line, run as a user would.

use mcpfier_tests::{Scratch, mcpfier_cli};
use serde_json::Value;

const CONFIG: &str = r#"
tools:
  - name: grep-logs
    description: Search a log file for a pattern
    command: ["/bin/grep", "-n", "-C", "{{context}}", "--", "{{pattern}}", "@DIR@/{{file}}"]
    params:
      pattern: {type: string, max_length: 200}
      file: {type: string, enum: [app.log]}
      context: {type: integer, minimum: 0, maximum: 10, default: 0}
    env: {LANG: C.UTF-8, API_TOKEN: "${env:LOG_TOKEN}", CA: "${file:@DIR@/ca.pem}"}
    ok_exit_codes: [0, 1]
  - name: exit-with
    command: ["/bin/sh", "-c", "echo out; echo err >&2; exit \"$1\"", "sh", "{{code}}"]
    params:
      code: {type: integer, minimum: 0, maximum: 255}
  - name: slow
    command: ["/bin/sleep", "30"]
    timeout: 300ms
"#;

const TOKEN: &str = "tok-3141592653";
const CA: &str = "-----BEGIN CERTIFICATE-----secret-ca";

fn setup() -> (Scratch, String) {
    let s = Scratch::new();
    s.write("app.log", "alpha\nbeta\ngamma\n");
    s.write("ca.pem", &format!("{CA}\n"));
    let config = s.config(CONFIG).display().to_string();
    (s, config)
}

fn run(config: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", config];
    all.extend_from_slice(args);
    mcpfier_cli(&all, &[("LOG_TOKEN", TOKEN)])
}

#[test]
fn call_streams_output_and_exits_with_the_command_code() {
    let (_s, config) = setup();
    let (code, out, err) = run(&config, &["call", "exit-with", "--arg", "code=7"]);
    assert_eq!((code, out.as_str(), err.as_str()), (7, "out\n", "err\n"));
    let (code, out, _) = run(
        &config,
        &[
            "call",
            "grep-logs",
            "-a",
            "pattern=beta",
            "-a",
            "file=app.log",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "2:beta\n"));
}

#[test]
fn call_exits_124_on_timeout_and_2_on_invalid_arguments() {
    let (_s, config) = setup();
    let (code, _, err) = run(&config, &["call", "slow"]);
    assert_eq!(code, 124, "{err}");
    assert!(err.contains("timed out after 300ms"), "{err}");
    let (code, _, err) = run(&config, &["call", "exit-with", "--arg", "code=300"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("parameter `code`: must be at most 255 (got 300)"),
        "{err}"
    );
}

#[test]
fn dry_run_shows_the_plan_with_secrets_masked() {
    let (s, config) = setup();
    let (code, out, err) = run(
        &config,
        &[
            "dry-run",
            "grep-logs",
            "-a",
            "pattern=$(id)",
            "-a",
            "file=app.log",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    let log = format!("{}/app.log", s.path().display());
    assert_eq!(
        plan["argv"],
        serde_json::json!(["/bin/grep", "-n", "-C", "0", "--", "$(id)", log])
    );
    assert_eq!(plan["env"]["API_TOKEN"], "***");
    assert_eq!(plan["env"]["CA"], "***");
    assert_eq!(plan["env"]["LANG"], "C.UTF-8");
    assert_eq!(plan["timeout"], "1m");
    assert!(!out.contains(TOKEN) && !err.contains(TOKEN));
    assert!(!out.contains("secret-ca") && !err.contains("secret-ca"));
}

#[test]
fn validate_reports_every_problem_with_path_and_line() {
    let s = Scratch::new();
    let config = s.config(
        "tools:\n  - name: a\n    command: [/bin/echo, '{{x}}']\n    params:\n      x: {type: string, pattern: '['}\n  - name: a\n    command: [/bin/true]\n    env: {T: '${env:MISSING_TOKEN}'}\n",
    );
    let config = config.display().to_string();
    let (code, out, err) = mcpfier_cli(&["--config", &config, "validate"], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("has 3 problems"), "{err}");
    assert!(
        err.contains(&format!(
            "{config}:5: tools[0].params.x.pattern: invalid regex `[`"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{config}:6: tools[1].name: a tool named `a` is already defined"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{config}:8: tools[1].env.T: `${{env:MISSING_TOKEN}}`: MISSING_TOKEN is not set"
        )),
        "{err}"
    );

    let (code, out, _) = mcpfier_cli(
        &[
            "--config",
            &s.write("ok.yaml", "tools: []\n").display().to_string(),
            "validate",
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(out.contains("ok, 0 tools"));

    let (code, _, err) = mcpfier_cli(
        &[
            "--config",
            &s.write("bad.yaml", "tools: [\n").display().to_string(),
            "validate",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("bad.yaml:"), "{err}");
}

#[test]
fn the_config_is_found_through_mcpfier_config() {
    let (_s, config) = setup();
    let (code, out, err) = mcpfier_cli(
        &["tools"],
        &[("MCPFIER_CONFIG", &config), ("LOG_TOKEN", TOKEN)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("grep-logs  Search a log file"), "{out}");
    let (code, _, err) = mcpfier_cli(&["tools"], &[("HOME", "/nonexistent")]);
    assert_eq!(code, 1);
    assert!(err.contains("no config file found"), "{err}");
    assert!(err.contains("MCPFIER_CONFIG"), "{err}");
}

#[test]
fn setup_prints_client_json_with_absolute_paths() {
    let (_s, config) = setup();
    for (client, key) in [
        ("claude-desktop", "/mcpServers/mcpfier"),
        ("cursor", "/mcpServers/mcpfier"),
        ("vscode", "/servers/mcpfier"),
        ("claude-code", ""),
    ] {
        let (code, out, err) = run(&config, &["setup", "--client", client]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let server = v.pointer(key).unwrap_or_else(|| panic!("{client}: {out}"));
        let command = server["command"].as_str().unwrap();
        assert!(
            command.starts_with('/') && command.ends_with("/mcpfier"),
            "{command}"
        );
        assert_eq!(
            server["args"],
            serde_json::json!(["--config", config, "stdio"])
        );
    }
}

#[test]
fn schema_completion_and_help_work() {
    let (code, out, _) = mcpfier_cli(&["schema"], &[]);
    assert_eq!(code, 0);
    let schema: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(schema["title"], "mcpfier.yaml");
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, _) = mcpfier_cli(&["completion", shell], &[]);
        assert_eq!(code, 0);
        assert!(out.contains("dry-run"), "{shell}");
    }
    for sub in [
        "serve",
        "stdio",
        "validate",
        "schema",
        "tools",
        "dry-run",
        "call",
        "setup",
        "completion",
        "agents",
        "status",
        "certs",
    ] {
        let (code, out, _) = mcpfier_cli(&[sub, "--help"], &[]);
        assert_eq!(code, 0);
        assert!(out.contains("Example:"), "{sub} --help has no example");
    }
}

#[test]
fn a_bad_log_filter_is_an_error_not_a_silent_default() {
    let (code, _, err) = mcpfier_cli(&["--log", "info,x=nope", "schema"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("log filter `info,x=nope` is not valid"),
        "{err}"
    );
}

/// The first-hour mistakes `validate` used to pass or word as parser text (issue 14).
#[test]
fn validate_says_what_to_fix_and_warns_of_what_would_fail_later() {
    let s = Scratch::new();
    let check = |name: &str, yaml: &str, strict: bool| {
        let config = s.write(name, yaml).display().to_string();
        let mut args = vec!["--config", config.as_str(), "validate"];
        if strict {
            args.push("--strict");
        }
        let (code, out, err) = mcpfier_cli(&args, &[]);
        (code, format!("{out}{err}"))
    };
    // Errors, each with what to do.
    for (name, yaml, expected) in [
        ("empty.yaml", "# nothing yet\n", "the file is empty"),
        (
            "typo.yaml",
            "tools:\n  - name: a\n    command: [/bin/true]\n    timout: 10s\n",
            "typo.yaml:4: tools[0].timout: unknown key `timout`: did you mean `timeout`?",
        ),
        (
            "string.yaml",
            "tools:\n  - name: a\n    command: /bin/df -h\n",
            r#"`/bin/df -h` is one string: write the command as a list, one element per argument, e.g. command: ["/bin/df", "-h"]"#,
        ),
        (
            "indent.yaml",
            "tools:\n  - name: a\n    command: [/bin/true]\n    description: a: b\n",
            "indent.yaml:4: tools[0]: this is not valid YAML here (mapping values are not allowed in this context): check the indentation",
        ),
        (
            "relative.yaml",
            "tools:\n  - name: a\n    command: [./scripts/check.sh]\n",
            "tools[0].command[0]: `./scripts/check.sh` is a relative path",
        ),
        (
            "long.yaml",
            "tools:\n  - name: a\n    command: [/bin/true]\n    timeout: 99999999h\n",
            "tools[0].timeout: 99999999h is longer than a call may run (at most 24h)",
        ),
    ] {
        let (code, text) = check(name, yaml, false);
        assert_eq!(code, 1, "{name}: {text}");
        assert!(text.contains(expected), "{name}: {text}");
        assert!(!text.contains(".?"), "{name}: a `?` in the path: {text}");
    }
    // Warnings: they pass, unless --strict.
    let missing = "tools:\n  - name: a\n    command: [no-such-program-4711]\n  - {name: b, command: [/opt/none/here]}\n";
    let (code, text) = check("missing.yaml", missing, false);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(
            "tools[0].command[0]: `no-such-program-4711` is not on the tool's PATH on this host"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "tools[1].command[0]: `/opt/none/here` is not an executable file on this host"
        ),
        "{text}"
    );
    let (code, text) = check("missing.yaml", missing, true);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("--strict fails on warnings"), "{text}");
    let (code, text) = check("none.yaml", "tools: []\n", true);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no tools are defined"), "{text}");
}

/// `mcpfier init` writes a starter that validates with no warning and whose tools run; it
/// keeps an existing file; the "no config file" error points to it.
#[test]
fn init_writes_a_starter_config_that_validates_and_runs() {
    let s = Scratch::new();
    let file = s.path().join("mcpfier.yaml").display().to_string();
    let (code, out, err) = mcpfier_cli(&["init", &file], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("mcpfier --config {file} validate")),
        "{out}"
    );
    let (code, out, err) = mcpfier_cli(&["--config", &file, "validate", "--strict"], &[]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}{err}");
    assert!(out.contains("ok, 3 tools"), "{out}");
    let (code, out, err) = mcpfier_cli(
        &["--config", &file, "call", "free-space", "--arg", "path=/"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Filesystem"), "{out}");

    std::fs::write(&file, "# mine\n").unwrap();
    let (code, _, err) = mcpfier_cli(&["init", &file], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists; pass --force"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "# mine\n");
    let (code, _, _) = mcpfier_cli(&["init", &file, "--force"], &[]);
    assert_eq!(code, 0);
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("free-space")
    );

    // A typo'd tool name gets the nearest one.
    for command in ["call", "dry-run"] {
        let (code, _, err) = mcpfier_cli(&["--config", &file, command, "free-spcae"], &[]);
        assert_ne!(code, 0);
        assert!(
            err.contains("no tool named `free-spcae`: did you mean `free-space`?"),
            "{command}: {err}"
        );
    }
    let (code, _, err) = mcpfier_cli(&["tools"], &[("HOME", &s.path().display().to_string())]);
    assert_eq!(code, 1);
    assert!(err.contains("`mcpfier init` writes a starter"), "{err}");
}
