//! `path` parameters against the attack of the issue (`cat /data/{{file}}` with
//! `../../../proc/<pid>/environ` returned the coordinator's secrets), and its cousins: a
//! symbolic link out of the directory, an absolute path elsewhere, a missing file. In this
//! process over HTTP with the official client; on an agent, which resolves the value on its
//! own host; and sent straight to the agent with a stolen coordinator key, so the check is
//! the agent's and not only the coordinator's. The tool appends each path it gets to a
//! ledger before reading it, so every refusal is also checked to have run nothing.

use std::path::PathBuf;

use mcpfier_exec::ErrorKind;
use mcpfier_tests::{
    Agent, Certs, Coordinator, Scratch, drive_http, mcpfier_cli, read_lines, result_stdout,
    result_text,
};
use serde_json::{Value, json};

use super::signed::Thief;

const SECRET: &str = "db-password-never-shown";

struct Files {
    scratch: Scratch,
    data: PathBuf,
    ledger: PathBuf,
}

/// `data/report.txt`, `data/sub/notes.txt`, and `data/env`, a link to this host's
/// `/proc/self/environ`.
fn files() -> Files {
    let scratch = Scratch::new();
    let data = scratch.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("report.txt"), "quarterly\n").unwrap();
    std::fs::write(data.join("sub/notes.txt"), "notes\n").unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", data.join("env")).unwrap();
    let ledger = scratch.write("ledger", "");
    Files {
        data: data.canonicalize().unwrap(),
        ledger,
        scratch,
    }
}

impl Files {
    fn tools(&self) -> String {
        format!(
            r#"
tools:
  - name: read
    command: ["/bin/sh", "-c", "echo \"$1\" >> \"$2\"; cat \"$1\"", "sh", "{{{{file}}}}", "{ledger}"]
    params:
      file: {{type: path, within: "{data}", must_exist: true}}
"#,
            ledger = self.ledger.display(),
            data = self.data.display(),
        )
    }

    fn ledger(&self) -> Vec<String> {
        read_lines(&self.ledger)
    }
}

/// The attacks, for a coordinator or agent with process id `pid`, and what the refusal says.
fn attacks(pid: u32) -> Vec<(String, &'static str)> {
    vec![
        (
            format!("../../../../../../../../proc/{pid}/environ"),
            "leads outside",
        ),
        ("env".into(), "leads outside"),
        ("/etc/passwd".into(), "leads outside"),
        ("sub/../../ledger".into(), "leads outside"),
        ("missing.txt".into(), "does not exist"),
    ]
}

fn call(file: &str) -> Value {
    json!({"op": "call", "name": "read", "arguments": {"file": file}})
}

/// Runs the good calls and the attacks over HTTP; checks what each got and the ledger.
fn attack_over_http(f: &Files, url: &str, pid: u32) -> Vec<Value> {
    let absolute = f.data.join("sub/notes.txt");
    let mut ops = vec![call("report.txt"), call(absolute.to_str().unwrap())];
    let attacks = attacks(pid);
    ops.extend(attacks.iter().map(|(value, _)| call(value)));
    let results = drive_http(url, Value::Array(ops));
    assert_eq!(
        results[0]["is_error"],
        false,
        "{}",
        result_text(&results[0])
    );
    assert_eq!(result_stdout(&results[0]), "quarterly\n");
    assert_eq!(result_stdout(&results[1]), "notes\n");
    for ((value, says), r) in attacks.iter().zip(&results[2..]) {
        let text = result_text(r);
        assert_eq!(r["is_error"], true, "{value}: {text}");
        assert!(
            text.contains("parameter `file`") && text.contains(says),
            "{value}: {text}"
        );
        assert!(!text.contains(SECRET), "{value} read the secret: {text}");
    }
    assert_eq!(
        f.ledger(),
        [
            f.data.join("report.txt").display().to_string(),
            absolute.display().to_string()
        ],
        "the command got the resolved paths, and only the good calls ran"
    );
    results
}

#[test]
fn in_process_a_path_cannot_leave_its_directory_and_dry_run_says_so() {
    let f = files();
    let config = f.scratch.config(&f.tools());
    let c = Coordinator::start(&config, &[("DB_PASSWORD", SECRET)], &[]);
    let pid = c.process.pid() as u32;
    attack_over_http(&f, &c.url(), pid);

    // dry-run resolves here too, and refuses the same way.
    let config_arg = config.to_str().unwrap();
    let (code, out, err) = mcpfier_cli(
        &[
            "--config",
            config_arg,
            "dry-run",
            "read",
            "-a",
            "file=sub/../report.txt",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        plan["argv"][4],
        f.data.join("report.txt").display().to_string()
    );
    assert_eq!(plan["paths"], "resolved on this host");
    let (code, _, err) = mcpfier_cli(
        &["--config", config_arg, "dry-run", "read", "-a", "file=env"],
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("parameter `file`: `env` leads outside") && err.contains("nothing would run"),
        "{err}"
    );
    assert_eq!(f.ledger().len(), 2, "dry-run ran nothing");

    // validate: a path parameter needs an absolute `within`; containers can't take one.
    let bad = f.scratch.write(
        "bad.yaml",
        "tools:\n  - name: t\n    command: [/bin/cat, \"{{f}}\"]\n    params: {f: {type: path}}\n  - name: u\n    command: [/bin/cat, \"{{f}}\"]\n    params: {f: {type: path, within: data}}\n  - name: v\n    command: [/bin/cat, \"{{f}}\"]\n    params: {f: {type: path, within: /srv}}\n    container: {image: busybox}\n",
    );
    let (code, _, err) = mcpfier_cli(&["--config", bad.to_str().unwrap(), "validate"], &[]);
    assert_ne!(code, 0);
    for says in [
        "tools[0].params.f.within",
        "a path parameter needs `within`",
        "`data` is relative",
        "a container tool can't take a `path` parameter",
    ] {
        assert!(err.contains(says), "{says}: {err}");
    }
}

fn fleet(f: &Files) -> (Certs, Agent, Coordinator) {
    let certs = Certs::init(&f.scratch.path().join("certs"));
    certs.issue("coordinator", "coord");
    certs.issue("agent", "p1");
    let agent = Agent::start_with_env(
        f.scratch.path(),
        &certs,
        "p1",
        "",
        &[("DB_PASSWORD", SECRET)],
    );
    let config = f.scratch.config(&format!(
        "fleet:\n  tls: {}\n  agents:\n    - {{id: p1, address: \"{}\"}}\n{}",
        certs.tls_yaml("coord"),
        agent.addr,
        f.tools()
    ));
    let coordinator = Coordinator::start(&config, &[], &[]);
    (certs, agent, coordinator)
}

#[test]
fn on_an_agent_the_agent_resolves_the_path_and_a_stolen_key_cannot_skip_it() {
    let f = files();
    let (certs, agent, coordinator) = fleet(&f);
    let pid = agent.process.pid() as u32;
    let results = attack_over_http(&f, &coordinator.url(), pid);
    assert_eq!(results[0]["structured_content"]["agent"], "p1");
    let refused = &results[2]["structured_content"]["error"];
    assert_eq!(refused["kind"], "invalid_arguments", "{}", results[2]);
    assert_eq!(refused["outcome"], "not_run");

    // Straight to the agent: the coordinator's checks are skipped, the agent's are not.
    let catalog = mcpfier_coordinator::catalog::load(
        &f.scratch.path().join("mcpfier.yaml"),
        &Default::default(),
    )
    .unwrap();
    let good = catalog
        .tool("read")
        .unwrap()
        .prepare(json!({"file": "report.txt"}).as_object())
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let thief = Thief {
        client: agent.raw_client(&rt, &certs),
        rt,
    };
    let (out, _) = thief.send_finished("read", &good, "control").unwrap();
    assert_eq!(out, "quarterly\n");
    let mut escape = good.clone();
    escape.paths[0].value = format!("../../../../../../../proc/{pid}/environ");
    let mut unsent = good.clone();
    unsent.paths.clear();
    let mut literal = good.clone();
    literal.argv[4] = format!("/proc/{pid}/environ");
    literal.paths.clear();
    for (what, exec, says) in [
        ("an escaping value", &escape, "leads outside"),
        (
            "a marker without its value",
            &unsent,
            "was not sent with the call",
        ),
    ] {
        let (out, finished) = thief.send_finished("read", exec, what).unwrap();
        assert_eq!(
            finished.error_kind,
            ErrorKind::InvalidArguments.as_str(),
            "{what}: {finished:?}"
        );
        assert!(finished.error.contains(says), "{what}: {finished:?}");
        assert!(!out.contains(SECRET));
    }
    // What an unsigned tool on an agent without `tool_signers` can't stop: a thief who sends
    // the path as a literal argument. Signed tools close that door (`signed.rs`).
    let (out, _) = thief.send_finished("read", &literal, "literal").unwrap();
    assert!(out.contains(SECRET), "the control for the note above");
    assert_eq!(
        f.ledger().len(),
        4,
        "two good calls, the control and the literal"
    );
}
