//! The front door of a shared coordinator: where it may listen, HTTPS with a certificate
//! that reloads, API keys, roles on `tools/list` and `tools/call`, sessions bound to their
//! principal. Real binaries, real HTTPS, the official Python client with a bearer token, and
//! raw HTTP for the bad cases.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcpfier_tests::{
    Coordinator, EtcdCerts, Reply, Scratch, drive_http_as, drive_http_ok_as, http_exchange,
    mcpfier_cli, result_text, wait_for,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const TOOLS: &str = r#"
tools:
  - name: echo-a
    command: [/bin/echo, "a {{m}}"]
    params: {m: {type: string}}
  - name: echo-b
    command: [/bin/echo, b]
  - name: wipe
    command: [/bin/echo, wiped]
"#;

const ROLES: &str = r#"
roles:
  ops:
    tools: ["echo-*", wipe]
    deny: [wipe]
  watch:
    fleet: read
"#;

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

/// A key and its config line.
fn new_key(id: &str, roles: &str) -> (String, String) {
    let (code, key, line) = mcpfier_cli(&["keys", "new", "--id", id, "--roles", roles], &[]);
    assert_eq!(code, 0, "{line}");
    let key = key.trim().to_owned();
    let line = line
        .lines()
        .find(|l| l.trim_start().starts_with("- {"))
        .expect("keys new prints the config line")
        .trim()
        .to_owned();
    assert!(
        !line.contains(&key),
        "the config line holds the key itself: {line}"
    );
    (key, line)
}

struct Keys {
    ops: String,
    watch: String,
    yaml: String,
}

fn keys() -> Keys {
    let (ops, ops_line) = new_key("ci-bot", "ops");
    let (watch, watch_line) = new_key("viewer", "watch");
    Keys {
        ops,
        watch,
        yaml: format!("  auth:\n    api_keys:\n      {ops_line}\n      {watch_line}\n"),
    }
}

fn post(addr: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut all = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    all.extend_from_slice(headers);
    http_exchange(addr, "POST", "/mcp", &all, body).expect("POST /mcp")
}

fn get(addr: &str, path: &str, bearer: Option<&str>) -> Reply {
    let auth = bearer.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http_exchange(addr, "GET", path, &headers, "").expect("GET")
}

#[test]
fn a_listen_address_other_machines_reach_needs_auth_and_tls_and_the_refusal_says_which() {
    let scratch = Scratch::new();
    let pki = EtcdCerts::new(&scratch.path().join("pki"));
    let k = keys();
    let validate = |name: &str, server: &str| {
        let config = scratch.write(name, &format!("server:\n{server}{ROLES}{TOOLS}"));
        mcpfier_cli(&["--config", config.to_str().unwrap(), "validate"], &[])
    };
    let (code, _, err) = validate("bare.yaml", "  listen: 0.0.0.0:8080\n");
    assert_ne!(code, 0);
    assert!(
        err.contains("server.listen") && err.contains("server.auth") && err.contains("server.tls"),
        "{err}"
    );
    let (code, _, err) = validate(
        "auth-only.yaml",
        &format!("  listen: 0.0.0.0:8080\n{}", k.yaml),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("server.tls") && err.contains("behind_tls_proxy"),
        "{err}"
    );
    assert!(!err.contains("needs server.auth"), "{err}");
    let d = pki.dir.display();
    let (code, _, err) = validate(
        "tls-only.yaml",
        &format!("  listen: 0.0.0.0:8080\n  tls: {{cert: {d}/server.pem, key: {d}/server.key}}\n"),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("server.auth") && !err.contains("server.tls {cert"),
        "{err}"
    );
    for (name, server) in [
        (
            "proxied.yaml",
            format!(
                "  listen: 0.0.0.0:8080\n  behind_tls_proxy: true\n{}",
                k.yaml
            ),
        ),
        (
            "full.yaml",
            format!(
                "  listen: \"[::]:8443\"\n  tls: {{cert: {d}/server.pem, key: {d}/server.key}}\n{}",
                k.yaml
            ),
        ),
    ] {
        let (code, out, err) = validate(name, &server);
        assert_eq!(code, 0, "{name}: {out}{err}");
    }
    // `--listen` can't get around it.
    let config = scratch.write("loopback.yaml", TOOLS);
    let (code, _, err) = mcpfier_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "serve",
            "--listen",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("refusing to serve") && err.contains("server.auth"),
        "{err}"
    );
    // A key and certificate that don't fit are named.
    pki.issue("other", &["127.0.0.1"]);
    let (code, _, err) = validate(
        "mismatch.yaml",
        &format!("  tls: {{cert: {d}/server.pem, key: {d}/other.key}}\n"),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("server.tls") && err.contains("do not fit"),
        "{err}"
    );
}

fn https_config(scratch: &Scratch, dir: &Path, k: &Keys) -> PathBuf {
    let d = dir.display();
    scratch.write(
        "https.yaml",
        &format!(
            "server:\n  tls: {{cert: {d}/server.pem, key: {d}/server.key}}\n{}{ROLES}{TOOLS}",
            k.yaml
        ),
    )
}

#[test]
fn over_https_a_key_holder_sees_and_calls_only_what_its_roles_allow() {
    let scratch = Scratch::new();
    let pki = EtcdCerts::new(&scratch.path().join("pki"));
    let k = keys();
    let c = Coordinator::start(&https_config(&scratch, &pki.dir, &k), &[], &[]);
    assert!(c.url().starts_with("https://"), "{}", c.url());
    let ca = pki.dir.join("ca.pem");
    let results = drive_http_ok_as(
        &c.url(),
        Some(&k.ops),
        Some(&ca),
        json!([
            {"op": "list_tools"},
            {"op": "call", "name": "echo-a", "arguments": {"m": "hi"}},
            {"op": "call", "name": "wipe", "arguments": {}},
            {"op": "call", "name": "no-such-tool", "arguments": {}},
        ]),
    );
    let names: Vec<&str> = results[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo-a", "echo-b"], "{}", results[0]);
    assert_eq!(
        results[1]["structured_content"]["stdout"], "a hi\n",
        "{}",
        results[1]
    );
    // A denied tool and a tool that does not exist get the same answer, naming only what
    // the caller may call.
    let denied = serde_json::to_string(&results[2]).unwrap();
    let unknown = serde_json::to_string(&results[3])
        .unwrap()
        .replace("no-such-tool", "wipe");
    assert_eq!(denied, unknown);
    assert!(
        denied.contains("unknown tool `wipe`; tools are: echo-a, echo-b"),
        "{denied}"
    );
    assert!(!c.log_text().contains("wiped"));
    // A principal with no tools sees none.
    let results = drive_http_ok_as(
        &c.url(),
        Some(&k.watch),
        Some(&ca),
        json!([{"op": "list_tools"}]),
    );
    assert_eq!(results[0]["tools"], json!([]), "{}", results[0]);
    // No key, or a certificate from a CA the client does not trust: nothing gets through.
    let (code, _, err) = drive_http_as(&c.url(), None, Some(&ca), json!([{"op": "list_tools"}]));
    assert_ne!(code, 0, "{err}");
    assert!(
        c.log_text().contains("authentication required"),
        "{}",
        c.log_text()
    );
    let (code, _, err) = drive_http_as(&c.url(), Some(&k.ops), None, json!([{"op": "list_tools"}]));
    assert_ne!(code, 0, "{err}");
    assert!(err.to_ascii_lowercase().contains("certificate"), "{err}");
    let log = c.log_text();
    for key in [&k.ops, &k.watch] {
        assert!(!log.contains(key.as_str()), "a key reached the log:\n{log}");
    }
    assert!(log.contains("authentication refused"), "{log}");
    assert!(
        log.contains("principal=ci-bot") || log.contains("ci-bot"),
        "{log}"
    );
}

#[test]
fn bad_credentials_get_401_with_a_challenge_and_a_session_stays_with_its_principal() {
    let scratch = Scratch::new();
    let k = keys();
    let config = scratch.write("auth.yaml", &format!("server:\n{}{ROLES}{TOOLS}", k.yaml));
    let c = Coordinator::start(&config, &[], &[]);
    let addr = &c.addr;
    let ops_auth = format!("Bearer {}", k.ops);
    let watch_auth = format!("Bearer {}", k.watch);

    let r = post(addr, &[], INIT);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"mcpfier\"")
    );
    assert!(r.body.contains("Authorization: Bearer"), "{r:?}");
    let r = post(addr, &[("Authorization", "Bearer mcpf_00112233")], INIT);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.contains("error=\"invalid_token\"")),
        "{r:?}"
    );
    let r = post(addr, &[("Authorization", "Basic Y2k6Ym90")], INIT);
    assert_eq!(r.status, 401, "{r:?}");
    // A key in the URL is refused even beside a good header, and never logged.
    let path = format!("/mcp?access_token={}", k.ops);
    let r = http_exchange(
        addr,
        "POST",
        &path,
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Authorization", &ops_auth),
        ],
        INIT,
    )
    .unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("never in the URL"), "{r:?}");

    // The fleet view: only for a role with `fleet: read`; /healthz stays open for probes.
    assert_eq!(get(addr, "/fleet", None).status, 401);
    let r = get(addr, "/fleet", Some(&k.ops));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("`ci-bot` may not read the fleet"), "{r:?}");
    assert_eq!(get(addr, "/fleet", Some(&k.watch)).status, 200);
    assert_eq!(get(addr, "/fleet/agents/x", Some(&k.ops)).status, 403);
    assert_eq!(get(addr, "/healthz", None).status, 200);

    // A session opened by ci-bot can't be used with viewer's key.
    let r = post(addr, &[("Authorization", &ops_auth)], INIT);
    assert_eq!(r.status, 200, "{r:?}");
    let session = r
        .header("mcp-session-id")
        .expect("initialize opens a session")
        .to_owned();
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let r = post(
        addr,
        &[("Authorization", &ops_auth), ("Mcp-Session-Id", &session)],
        initialized,
    );
    assert!(r.status < 300, "{r:?}");
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let r = post(
        addr,
        &[("Authorization", &watch_auth), ("Mcp-Session-Id", &session)],
        list,
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("belongs to another principal"), "{r:?}");
    let r = post(
        addr,
        &[("Authorization", &ops_auth), ("Mcp-Session-Id", &session)],
        list,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("echo-a") && !r.body.contains("wipe"),
        "{r:?}"
    );
    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo-a","arguments":{"m":"x"}}}"#;
    let r = post(
        addr,
        &[("Authorization", &watch_auth), ("Mcp-Session-Id", &session)],
        call,
    );
    assert_eq!(r.status, 403, "{r:?}");
    let log = c.log_text();
    assert!(
        log.contains("refused a request on another principal's session"),
        "{log}"
    );
    for key in [&k.ops, &k.watch] {
        assert!(!log.contains(key.as_str()), "a key reached the log:\n{log}");
    }
}

#[test]
fn the_https_certificate_is_replaced_when_its_files_change_and_a_bad_pair_is_refused() {
    let scratch = Scratch::new();
    let first = EtcdCerts::new(&scratch.path().join("first"));
    let second = EtcdCerts::new(&scratch.path().join("second"));
    let live = scratch.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let install = |from: &Path, cert: &str, key: &str| {
        // Written beside, then renamed in, as deploy tools and Kubernetes do.
        for (name, to) in [(cert, "server.pem"), (key, "server.key")] {
            let tmp = live.join(format!("{to}.tmp"));
            std::fs::copy(from.join(name), &tmp).unwrap();
            std::fs::rename(&tmp, live.join(to)).unwrap();
        }
    };
    install(&first.dir, "server.pem", "server.key");
    let k = keys();
    let c = Coordinator::start(&https_config(&scratch, &live, &k), &[], &[]);
    let list = || json!([{"op": "list_tools"}]);
    let trusts = |pki: &EtcdCerts| {
        drive_http_as(
            &c.url(),
            Some(&k.ops),
            Some(&pki.dir.join("ca.pem")),
            list(),
        )
        .0 == 0
    };
    assert!(trusts(&first) && !trusts(&second));

    install(&second.dir, "server.pem", "server.key");
    let switched = wait_for(Duration::from_secs(15), || trusts(&second).then_some(()));
    assert!(
        switched.is_some(),
        "the new certificate was not served:\n{}",
        c.log_text()
    );
    assert!(!trusts(&first));
    assert!(c.log_text().contains("HTTPS certificate reloaded"));

    // A certificate with another key's file: refused, the current pair kept.
    first.issue("other", &["127.0.0.1"]);
    install(&first.dir, "server.pem", "other.key");
    c.process.wait_for_log(
        "kept the current HTTPS certificate",
        Duration::from_secs(15),
    );
    assert!(trusts(&second));

    // SIGHUP reloads at once (and does not stop the server).
    install(&second.dir, "server.pem", "server.key");
    let sighup_reloads = || {
        c.log_text()
            .lines()
            .filter(|l| l.contains("HTTPS certificate reloaded") && l.contains("SIGHUP"))
            .count()
    };
    let before = sighup_reloads();
    c.process.signal(Signal::SIGHUP);
    let seen = wait_for(Duration::from_secs(10), || {
        (sighup_reloads() > before).then_some(())
    });
    assert!(seen.is_some(), "{}", c.log_text());
    let results: Vec<Value> = drive_http_ok_as(
        &c.url(),
        Some(&k.ops),
        Some(&second.dir.join("ca.pem")),
        json!([{"op": "call", "name": "echo-b", "arguments": {}}]),
    );
    assert_eq!(result_text(&results[0]), "b\n", "{}", results[0]);
}

#[test]
fn dry_run_as_a_principal_says_whether_its_roles_allow_the_call_and_why() {
    let scratch = Scratch::new();
    let k = keys();
    let config = scratch.write("auth.yaml", &format!("server:\n{}{ROLES}{TOOLS}", k.yaml));
    let config = config.to_str().unwrap();
    let dry = |tool: &str, who: &str| {
        mcpfier_cli(
            &[
                "--config", config, "dry-run", tool, "--arg", "m=x", "--as", who,
            ],
            &[],
        )
    };
    let (code, out, err) = dry("echo-a", "ci-bot");
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["argv"], json!(["/bin/echo", "a x"]));
    assert_eq!(plan["authorization"]["allowed"], true, "{plan}");
    assert_eq!(
        plan["authorization"]["why"],
        "role `ops` allows `echo-a` (tools: echo-*, wipe)"
    );
    let (code, out, err) = dry("wipe", "ci-bot");
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("`ci-bot` may not call `wipe`: role `ops` denies `wipe` (deny: wipe)"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
    let (code, _, err) = dry("echo-a", "viewer");
    assert_eq!(code, 1);
    assert!(
        err.contains("none of its roles (watch) lists `echo-a`"),
        "{err}"
    );
    let (code, _, err) = dry("echo-a", "nobody");
    assert_eq!(code, 1);
    assert!(
        err.contains("no principal `nobody`") && err.contains("ci-bot, viewer"),
        "{err}"
    );
    for key in [&k.ops, &k.watch] {
        assert!(!err.contains(key.as_str()));
    }
}
