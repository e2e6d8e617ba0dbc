//! Every class of config error, and what a good config turns into.

use std::collections::HashMap;
use std::path::Path;

use serde_json::json;

use super::*;
use crate::config::{Problem, json_schema};

fn env() -> HashMap<String, String> {
    HashMap::from([("LOG_TOKEN".to_owned(), "s3cret-token".to_owned())])
}

fn problems(yaml: &str) -> Vec<Problem> {
    match parse(yaml, Path::new("mcpfier.yaml"), &env()) {
        Ok(_) => panic!("config was accepted:\n{yaml}"),
        Err(e) => e.problems,
    }
}

fn one_problem(yaml: &str) -> Problem {
    let mut p = problems(yaml);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.remove(0)
}

const GOOD: &str = r#"
server:
  listen: 127.0.0.1:9000
tools:
  - name: grep-logs
    title: Search logs
    description: Search a log file for a pattern
    command: ["/usr/bin/grep", "-n", "-C", "{{context}}", "--", "{{pattern}}", "/var/log/{{file}}"]
    params:
      pattern: {type: string, description: "regular expression", max_length: 200}
      file:    {type: string, enum: [syslog, auth.log]}
      context: {type: integer, minimum: 0, maximum: 10, default: 2}
    env: {LANG: C.UTF-8, API_TOKEN: "Bearer ${env:LOG_TOKEN}"}
    workdir: /tmp
    timeout: 30s
    max_output: 1MiB
    ok_exit_codes: [0, 1]
    annotations: {read_only: true, destructive: false, idempotent: true, open_world: false}
    concurrency: 4
"#;

#[test]
fn the_issue_example_loads() {
    let catalog = parse(GOOD, Path::new("x.yaml"), &env()).unwrap();
    let tool = catalog.tool("grep-logs").unwrap();
    assert_eq!(tool.timeout, std::time::Duration::from_secs(30));
    assert_eq!(tool.max_output, 1 << 20);
    assert_eq!(tool.concurrency, Some(4));
    let token = tool.env.iter().find(|v| v.name == "API_TOKEN").unwrap();
    assert_eq!(token.value, "Bearer s3cret-token");
    assert!(token.secret);
    assert!(!tool.env.iter().find(|v| v.name == "LANG").unwrap().secret);
    let schema = serde_json::Value::Object((*tool.input_schema).clone());
    assert_eq!(
        schema,
        json!({
            "type": "object",
            "properties": {
                "pattern": {"type": "string", "description": "regular expression", "maxLength": 200},
                "file": {"type": "string", "enum": ["syslog", "auth.log"]},
                "context": {"type": "integer", "minimum": 0.0, "maximum": 10.0, "default": 2}
            },
            "required": ["pattern", "file"],
            "additionalProperties": false
        })
    );
    let exec = tool
        .prepare(json!({"pattern": "x; $(id)", "file": "syslog"}).as_object())
        .unwrap();
    assert_eq!(
        exec.argv,
        [
            "/usr/bin/grep",
            "-n",
            "-C",
            "2",
            "--",
            "x; $(id)",
            "/var/log/syslog"
        ]
    );
}

#[test]
fn defaults_apply_when_sections_are_left_out() {
    let c = parse(
        "tools:\n  - name: t\n    command: [/bin/true]\n",
        Path::new("x"),
        &env(),
    )
    .unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    let t = c.tool("t").unwrap();
    assert_eq!(t.timeout, std::time::Duration::from_secs(60));
    assert_eq!(t.max_output, 1 << 20);
    assert_eq!(t.ok_exit_codes, [0]);
}

#[test]
fn malformed_yaml_names_its_line() {
    let p = one_problem("tools:\n  - name: a\n    command: [/bin/true\n");
    assert!(p.line.is_some(), "{p:?}");
}

#[test]
fn unknown_keys_are_refused_with_their_path() {
    let p = one_problem("tools:\n  - name: a\n    comand: [/bin/true]\n");
    assert!(
        p.message
            .contains("unknown key `comand`: did you mean `command`?"),
        "{p:?}"
    );
    assert_eq!(p.path, "tools[0].comand");
    assert_eq!(p.line, Some(3));
    let p = one_problem("srever: {}\n");
    assert!(
        p.message
            .contains("unknown key `srever`: did you mean `server`?"),
        "{p:?}"
    );
}

#[test]
fn duplicate_and_illegal_tool_names_are_refused() {
    let p = problems(
        "tools:\n  - {name: a, command: [/bin/true]}\n  - {name: a, command: [/bin/true]}\n  - {name: 'no spaces', command: [/bin/true]}\n",
    );
    assert_eq!(p.len(), 2, "{p:#?}");
    assert_eq!(p[0].path, "tools[1].name");
    assert!(p[0].message.contains("already defined"));
    assert_eq!(p[0].line, Some(3));
    assert_eq!(p[1].path, "tools[2].name");
    assert!(p[1].message.contains("not a valid tool name"));
}

#[test]
fn a_typo_reports_both_the_placeholder_and_the_unused_parameter() {
    let p = problems(
        "tools:\n  - name: a\n    command: [/bin/echo, '{{patern}}']\n    params:\n      pattern: {type: string}\n",
    );
    assert_eq!(p.len(), 2, "{p:#?}");
    assert_eq!(p[0].path, "tools[0].command[1]");
    assert!(
        p[0].message
            .contains("`{{patern}}` names no parameter; parameters are: pattern")
    );
    assert_eq!(p[1].path, "tools[0].params.pattern");
    assert!(p[1].message.contains("is not used"));
    assert_eq!(p[1].line, Some(5));
}

#[test]
fn the_program_takes_no_placeholder() {
    let p = one_problem(
        "tools:\n  - name: a\n    command: ['{{prog}}']\n    params: {prog: {type: string}}\n",
    );
    assert!(p.message.contains("command[0]"), "{p:?}");
}

#[test]
fn a_bad_regex_is_refused_with_its_path() {
    let p = one_problem(
        "tools:\n  - name: a\n    command: [/bin/echo, '{{p}}']\n    params:\n      p: {type: string, pattern: '(unclosed'}\n",
    );
    assert_eq!(p.path, "tools[0].params.p.pattern");
    assert!(p.message.starts_with("invalid regex `(unclosed`"), "{p:?}");
    assert_eq!(p.line, Some(5));
}

#[test]
fn a_bad_duration_or_size_is_refused() {
    let p = one_problem("tools:\n  - name: a\n    command: [/bin/true]\n    timeout: soon\n");
    assert!(p.message.contains("`soon` is not a duration"), "{p:?}");
    assert_eq!(p.line, Some(4));
    let p =
        one_problem("tools:\n  - name: a\n    command: [/bin/true]\n    max_output: 1 parsec\n");
    assert!(p.message.contains("not a byte size"), "{p:?}");
}

#[test]
fn missing_secrets_are_each_reported() {
    let p = problems(
        "tools:\n  - name: a\n    command: [/bin/true]\n    env:\n      A: '${env:NOPE}'\n      B: '${file:/nonexistent/x}'\n      C: '${env:LOG_TOKEN'\n",
    );
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_eq!(p[0].path, "tools[0].env.A");
    assert!(p[0].message.contains("NOPE is not set"));
    assert_eq!(p[0].line, Some(5));
    assert!(p[1].message.contains("cannot read the file"));
    assert!(p[2].message.contains("not closed"));
    for problem in &p {
        assert!(!problem.message.contains("s3cret"), "{problem:?}");
    }
}

#[test]
fn parameter_rules_must_fit_their_type_and_default() {
    let p = problems(
        r#"tools:
  - name: a
    command: [/bin/echo, "{{n}}", "{{s}}", "{{r}}"]
    params:
      n: {type: integer, pattern: x, minimum: 5, maximum: 1}
      s: {type: string, enum: [a, 3], default: z}
      r: {type: string, required: true, default: a}
"#,
    );
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "tools[0].params.n.pattern",
            "tools[0].params.n.maximum",
            "tools[0].params.s.enum[1]",
            "tools[0].params.s.default",
            "tools[0].params.r.required",
        ],
        "{p:#?}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let p = problems(
        "server: {listen: nowhere, max_concurrency: 0}\ntools:\n  - {name: a, command: [], timeout: 0s, ok_exit_codes: [300], concurrency: 0, workdir: rel}\n",
    );
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "server.listen",
            "server.max_concurrency",
            "tools[0].command",
            "tools[0].workdir",
            "tools[0].timeout",
            "tools[0].ok_exit_codes[0]",
            "tools[0].concurrency",
        ],
        "{p:#?}"
    );
}

#[test]
fn an_array_placeholder_must_be_a_whole_element() {
    let p = one_problem(
        "tools:\n  - name: a\n    command: [/bin/echo, '--files={{f}}']\n    params: {f: {type: array}}\n",
    );
    assert!(p.message.contains("must be a whole element"), "{p:?}");
}

#[test]
fn the_error_text_names_file_line_and_path() {
    let err = parse(
        "tools:\n  - name: a\n    command: [/bin/true]\n    timeout: soon\n",
        Path::new("conf/mcpfier.yaml"),
        &env(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("conf/mcpfier.yaml:4: tools[0].timeout: `soon` is not a duration"),
        "{err}"
    );
}

#[test]
fn the_schema_is_generated_from_the_types() {
    let schema = json_schema();
    let tool = &schema["$defs"]["ToolSection"];
    assert_eq!(tool["additionalProperties"], json!(false));
    for key in [
        "name",
        "command",
        "params",
        "env",
        "timeout",
        "max_output",
        "ok_exit_codes",
        "annotations",
        "concurrency",
    ] {
        assert!(
            tool["properties"].get(key).is_some(),
            "{key} missing from {tool}"
        );
    }
}

fn object(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// A JSON value exactly as serde_json reads it off the wire (`1.0` is a float).
fn wire(text: &str) -> Value {
    serde_json::from_str(text).expect("valid JSON")
}

#[test]
fn a_configured_tool_checks_arguments_before_building_its_command() {
    let catalog = parse(
        "tools:\n  - name: t\n    command: [/bin/echo, '{{n}}']\n    params:\n      n: {type: integer, maximum: 100}\n",
        Path::new("t.yaml"),
        &env(),
    )
    .unwrap();
    let tool = catalog.tool("t").unwrap();
    let exec = tool
        .prepare(Some(&object(json!({"n": wire("1.0")}))))
        .unwrap();
    assert_eq!(exec.argv, ["/bin/echo", "1"]);
    let errors = tool
        .prepare(Some(&object(json!({"n": wire("9223372036854775808")}))))
        .unwrap_err();
    assert!(
        errors[0].rule.ends_with("which is outside that range"),
        "{errors:?}"
    );
    let errors = tool.prepare(Some(&object(json!({"n": 101})))).unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "parameter `n`: must be at most 100 (got 101)"
    );
}

#[test]
fn a_default_outside_the_64_bit_range_is_a_config_error_that_says_so() {
    let err = parse(
        "tools:\n  - name: t\n    command: [/bin/echo, '{{n}}']\n    params:\n      n: {type: integer, default: 9223372036854775808}\n",
        Path::new("t.yaml"),
        &env(),
    )
    .unwrap_err();
    assert_eq!(err.problems.len(), 1, "{:#?}", err.problems);
    let p = &err.problems[0];
    assert_eq!(p.path, "tools[0].params.n.default");
    assert!(p.message.contains("which is outside that range"), "{p:?}");
}
