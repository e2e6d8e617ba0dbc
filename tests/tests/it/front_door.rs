//! The front door of a shared coordinator: where it may listen, HTTPS with a certificate
//! that reloads, API keys, roles on `tools/list` and `tools/call`, sessions bound to their
//! principal. Real binaries, real HTTPS, the official Python client with a bearer token, and
//! raw HTTP for the bad cases.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcpfier_tests::{
    Coordinator, EtcdCerts, Reply, Scratch, drive_http_as, drive_http_ok_as, http_exchange,
    mcpfier_cli, new_key, read_lines, result_stdout, result_text, wait_for,
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

/// The tool names of a `list_tools` result.
fn tool_names(listed: &Value) -> Vec<&str> {
    listed["tools"]
        .as_array()
        .expect("a list_tools result")
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
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
    let names = tool_names(&results[0]);
    assert_eq!(names, ["echo-a", "echo-b"], "{}", results[0]);
    assert_eq!(result_stdout(&results[1]), "a hi\n", "{}", results[1]);
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
    // A principal with no tools sees none; its client closes its session cleanly (204).
    let (code, _, err) = drive_http_as(
        &c.url(),
        Some(&k.watch),
        Some(&ca),
        json!([{"op": "list_tools"}]),
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("Session termination failed"), "{err}");
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
    // The same Host and Origin checks as /mcp: a page on another origin, or a rebound DNS
    // name, can't read the topology even with a credential in hand.
    let watch_bearer = format!("Bearer {}", k.watch);
    let fleet_with = |name: &str, value: &str| {
        http_exchange(
            addr,
            "GET",
            "/fleet",
            &[("Authorization", &watch_bearer), (name, value)],
            "",
        )
        .unwrap()
    };
    let r = fleet_with("Origin", "https://evil.example");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("server.allowed_origins"), "{r:?}");
    assert_eq!(fleet_with("Origin", "http://localhost:5173").status, 200);
    let r = fleet_with("Host", "evil.example:80");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("server.allowed_hosts"), "{r:?}");

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
    // Closing: another principal can't, the owner can, and gets 204.
    let close = |auth: &str| {
        http_exchange(
            addr,
            "DELETE",
            "/mcp",
            &[("Authorization", auth), ("Mcp-Session-Id", &session)],
            "",
        )
        .unwrap()
    };
    assert_eq!(close(&watch_auth).status, 403);
    assert_eq!(close(&ops_auth).status, 204);
    let r = post(
        addr,
        &[("Authorization", &ops_auth), ("Mcp-Session-Id", &session)],
        list,
    );
    assert_eq!(r.status, 404, "a closed session is gone: {r:?}");
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

/// Signing keys made by the test, their JWKS, and tokens signed with them
/// (`tests/py/jwt_tool.py`).
struct Issuer {
    dir: PathBuf,
}

const ISSUER: &str = "https://auth.test";
const AUDIENCE: &str = "https://mcp.test/mcp";

impl Issuer {
    /// Keys `rsa-N`, `ec-N` and `ed-N` (N = `suffix`) in `dir`, and their JWKS.
    fn new(dir: &Path, suffix: &str) -> (Issuer, String) {
        let out = std::process::Command::new(mcpfier_tests::python())
            .arg(mcpfier_tests::workspace().join("tests/py/jwt_tool.py"))
            .arg("keys")
            .arg(dir)
            .arg(suffix)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            Issuer {
                dir: dir.to_owned(),
            },
            String::from_utf8(out.stdout).unwrap(),
        )
    }

    fn sign(&self, kid: &str, alg: &str, claims: Value) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new(mcpfier_tests::python())
            .arg(mcpfier_tests::workspace().join("tests/py/jwt_tool.py"))
            .args(["sign", self.dir.to_str().unwrap(), kid, alg])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(claims.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles,
        "scope": "mcp:tools other", "exp": now() + 600, "iat": now(),
    })
}

#[test]
fn oauth_tokens_are_verified_as_a_resource_server_must_and_every_forgery_gets_401() {
    let scratch = Scratch::new();
    let (issuer, jwks) = Issuer::new(&scratch.path().join("issuer"), "1");
    let jwks_file = scratch.write("jwks.json", &jwks);
    // Each run of echo-deploy appends a line.
    let ledger = scratch.path().join("ledger");
    let runs = || {
        std::fs::read_to_string(&ledger)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let config = scratch.write(
        "oauth.yaml",
        &format!(
            "server:\n  auth:\n    oauth:\n      issuer: {ISSUER}\n      audience: {AUDIENCE}\n      jwks_file: {}\n      required_scopes: [\"mcp:tools\"]\n{ROLES}{TOOLS}  - name: echo-deploy\n    command: [/bin/sh, -c, \"echo ran >> {}; echo deployed\"]\n    scopes: [\"deploy:write\"]\n",
            jwks_file.display(),
            ledger.display()
        ),
    );
    let c = Coordinator::start(&config, &[], &[]);
    let addr = &c.addr;
    let with = |token: &str| post(addr, &[("Authorization", &format!("Bearer {token}"))], INIT);

    // Each accepted algorithm, with a key of its own kind.
    for (kid, alg) in [("rsa-1", "RS256"), ("ec-1", "ES256"), ("ed-1", "EdDSA")] {
        let r = with(&issuer.sign(kid, alg, claims("alice", &["ops"])));
        assert_eq!(r.status, 200, "{alg}: {r:?}");
    }
    // The official client with a token sees and calls what its roles allow.
    let token = issuer.sign("ed-1", "EdDSA", claims("alice", &["ops"]));
    let results = drive_http_ok_as(
        &c.url(),
        Some(&token),
        None,
        json!([
            {"op": "list_tools"},
            {"op": "call", "name": "echo-a", "arguments": {"m": "tok"}},
        ]),
    );
    let names = tool_names(&results[0]);
    assert_eq!(names, ["echo-a", "echo-b", "echo-deploy"]);
    assert_eq!(result_stdout(&results[1]), "a tok\n");

    let metadata =
        "resource_metadata=\"https://mcp.test/.well-known/oauth-protected-resource/mcp\"";
    // One character in the middle of the signature changed.
    let signed = issuer.sign("rsa-1", "RS256", claims("alice", &["ops"]));
    let at = signed.len() - 20;
    let flipped = if &signed[at..at + 1] == "A" { "B" } else { "A" };
    let tamper = format!("{}{flipped}{}", &signed[..at], &signed[at + 1..]);
    let mut wrong_aud = claims("alice", &["ops"]);
    wrong_aud["aud"] = json!("https://other.test/mcp");
    let mut wrong_iss = claims("alice", &["ops"]);
    wrong_iss["iss"] = json!("https://evil.test");
    let mut expired = claims("alice", &["ops"]);
    expired["exp"] = json!(now() - 3600);
    let mut early = claims("alice", &["ops"]);
    early["nbf"] = json!(now() + 3600);
    let mut no_sub = claims("alice", &["ops"]);
    no_sub.as_object_mut().unwrap().remove("sub");
    for (what, token, want) in [
        ("tampered signature", tamper, "signature does not verify"),
        (
            "wrong audience",
            issuer.sign("rsa-1", "RS256", wrong_aud),
            "audience does not include https://mcp.test/mcp",
        ),
        (
            "wrong issuer",
            issuer.sign("rsa-1", "RS256", wrong_iss),
            "issuer is not https://auth.test",
        ),
        ("expired", issuer.sign("ec-1", "ES256", expired), "expired"),
        (
            "not yet valid",
            issuer.sign("ec-1", "ES256", early),
            "not valid yet",
        ),
        ("no subject", issuer.sign("ed-1", "EdDSA", no_sub), "`sub`"),
        (
            "alg none",
            issuer.sign("rsa-1", "none", claims("alice", &["ops"])),
            "not valid",
        ),
        (
            "HMAC keyed with the public key",
            issuer.sign("rsa-1", "HS256", claims("alice", &["ops"])),
            "HS256 is not accepted",
        ),
        ("not a JWT", "eyJhbGciOi.garbage".to_owned(), "not valid"),
    ] {
        let r = with(&token);
        assert_eq!(r.status, 401, "{what}: {r:?}");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.contains("error=\"invalid_token\"") && challenge.contains(metadata),
            "{what}: {challenge}"
        );
        assert!(r.body.contains(want), "{what}: {r:?}");
    }
    // No token: 401 naming where to learn how to get one; the metadata is open.
    let r = post(addr, &[], INIT);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer {metadata}").as_str())
    );
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let r = get(addr, path, None);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let doc: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(doc["resource"], AUDIENCE);
        assert_eq!(doc["authorization_servers"], json!([ISSUER]));
    }
    // A token without a required scope: 403 insufficient_scope, naming it.
    let mut narrow = claims("alice", &["ops"]);
    narrow["scope"] = json!("other");
    let r = with(&issuer.sign("rsa-1", "RS256", narrow));
    assert_eq!(r.status, 403, "{r:?}");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"mcp:tools\""),
        "{challenge}"
    );
    // A tool that names a scope: a token without it gets 403 naming it (step-up), and the
    // tool does not run; with it, the call runs.
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo-deploy","arguments":{}}}"#;
    let session_call = |token: &str| {
        let auth = format!("Bearer {token}");
        let r = post(addr, &[("Authorization", &auth)], INIT);
        assert_eq!(r.status, 200, "{r:?}");
        let session = r.header("mcp-session-id").unwrap().to_owned();
        let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        post(
            addr,
            &[("Authorization", &auth), ("Mcp-Session-Id", &session)],
            initialized,
        );
        post(
            addr,
            &[("Authorization", &auth), ("Mcp-Session-Id", &session)],
            call,
        )
    };
    let r = session_call(&issuer.sign("ec-1", "ES256", claims("alice", &["ops"])));
    assert_eq!(r.status, 403, "{r:?}");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"deploy:write\"")
            && challenge.contains(metadata),
        "{challenge}"
    );
    assert_eq!(runs(), 0, "a refused call ran");
    let mut wider = claims("alice", &["ops"]);
    wider["scope"] = json!("mcp:tools deploy:write");
    let r = session_call(&issuer.sign("ec-1", "ES256", wider));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("deployed"), "{r:?}");
    assert_eq!(runs(), 1);
    // A principal whose roles don't allow the tool gets the unknown-tool answer, not a
    // step-up that would say it exists.
    let r = session_call(&issuer.sign("ec-1", "ES256", claims("carol", &["watch"])));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("unknown tool `echo-deploy`"), "{r:?}");
    assert_eq!(runs(), 1);

    // A token in the URL.
    let token = issuer.sign("rsa-1", "RS256", claims("alice", &["ops"]));
    let r = http_exchange(
        addr,
        "POST",
        &format!("/mcp?access_token={token}"),
        &[("Content-Type", "application/json")],
        INIT,
    )
    .unwrap();
    assert_eq!(r.status, 400, "{r:?}");

    // A new signing key: the first token naming it reads the JWKS again; the next unknown
    // key within the floor does not.
    let (_, new_jwks) = Issuer::new(&scratch.path().join("issuer"), "2");
    let mut both: Value = serde_json::from_str(&jwks).unwrap();
    let new: Value = serde_json::from_str(&new_jwks).unwrap();
    both["keys"]
        .as_array_mut()
        .unwrap()
        .extend(new["keys"].as_array().unwrap().iter().cloned());
    std::fs::write(&jwks_file, both.to_string()).unwrap();
    let r = with(&issuer.sign("ed-2", "EdDSA", claims("bob", &["ops"])));
    assert_eq!(r.status, 200, "the re-read JWKS holds the new ed-2: {r:?}");
    let r = with(&issuer.sign("rsa-1", "RS256", claims("bob", &["ops"])));
    assert_eq!(r.status, 200, "{r:?}");
    let log = c.log_text();
    assert_eq!(log.matches("JWKS read again").count(), 1, "{log}");
    let r = post(
        addr,
        &[(
            "Authorization",
            "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6Im5vcGUifQ.e30.AA",
        )],
        INIT,
    );
    assert_eq!(r.status, 401);
    assert_eq!(c.log_text().matches("JWKS read again").count(), 1);
    assert!(!c.log_text().contains(&token), "a token reached the log");
}

#[test]
fn a_value_that_would_be_read_as_an_option_or_hides_its_order_is_refused_before_anything_runs() {
    let scratch = Scratch::new();
    let ledger = scratch.path().join("ledger");
    let config = scratch.write(
        "args.yaml",
        &format!(
            r#"tools:
  - name: fetch
    command: [/bin/sh, -c, "echo \"$1\" >> {ledger}", sh, "{{{{repo}}}}"]
    params: {{repo: {{type: string}}}}
  - name: fetch-safely
    command: [/bin/sh, -c, "echo \"$2\" >> {ledger}", sh, --, "{{{{repo}}}}"]
    params: {{repo: {{type: string}}}}
"#,
            ledger = ledger.display()
        ),
    );
    let (code, _, err) = mcpfier_cli(&["--config", config.to_str().unwrap(), "validate"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("tools[0].command: `{{repo}}` begins an argument with no `--` before it"),
        "{err}"
    );
    assert!(!err.contains("tools[1]"), "{err}");
    let run = mcpfier_tests::drive_stdio(
        &config,
        &[],
        &[],
        json!([
            {"op": "call", "name": "fetch", "arguments": {"repo": "--upload-pack=touch /tmp/x; echo"}},
            {"op": "call", "name": "fetch", "arguments": {"repo": "origin\u{202E}gpj.exe"}},
            {"op": "call", "name": "fetch", "arguments": {"repo": "origin"}},
            {"op": "call", "name": "fetch-safely", "arguments": {"repo": "--not-an-option"}},
        ]),
    );
    let text = |i: usize| result_text(&run.results[i]);
    assert_eq!(run.results[0]["is_error"], true);
    assert!(
        text(0).contains("invalid arguments, nothing was run")
            && text(0).contains("must not start with `-`"),
        "{}",
        text(0)
    );
    assert!(text(1).contains("U+202E"), "{}", text(1));
    assert_eq!(run.results[2]["is_error"], false, "{}", run.results[2]);
    assert_eq!(run.results[3]["is_error"], false, "{}", run.results[3]);
    // The ledger: only the two allowed calls ran.
    assert_eq!(
        std::fs::read_to_string(&ledger).unwrap(),
        "origin\n--not-an-option\n"
    );
}

#[test]
fn the_audit_file_records_calls_and_refusals_as_a_chain_that_verify_checks() {
    let scratch = Scratch::new();
    let k = keys();
    let audit = scratch.path().join("audit.jsonl");
    let config = scratch.write(
        "audit.yaml",
        &format!(
            "server:\n{}  audit: {{path: {}}}\n{ROLES}{TOOLS}  - name: echo-token\n    command: [/bin/sh, -c, \"echo ok\", sh, \"x{{{{token}}}}\"]\n    params: {{token: {{type: string, secret: true}}}}\n",
            k.yaml,
            audit.display()
        ),
    );
    let c = Coordinator::start(&config, &[], &[]);
    let results = drive_http_ok_as(
        &c.url(),
        Some(&k.ops),
        None,
        json!([
            {"op": "call", "name": "echo-a", "arguments": {"m": "audited"}},
            {"op": "call", "name": "echo-token", "arguments": {"token": "hunter2-secret"}},
            {"op": "call", "name": "wipe", "arguments": {}},
            {"op": "call", "name": "echo-a", "arguments": {"m": 7}},
        ]),
    );
    assert_eq!(result_stdout(&results[0]), "a audited\n");
    let r = post(&c.addr, &[("Authorization", "Bearer mcpf_wrong")], INIT);
    assert_eq!(r.status, 401);
    let verify = |file: &Path| mcpfier_cli(&["audit", "verify", file.to_str().unwrap()], &[]);
    let (code, out, err) = verify(&audit);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("intact, 5 lines"), "{out}");
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["event"].as_str().unwrap().to_owned(),
                l["tool"].as_str().unwrap_or("-").to_owned(),
                l["outcome"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    let want = [
        ("call", "echo-a", "ran"),
        ("call", "echo-token", "ran"),
        ("call", "wipe", "forbidden"),
        ("call", "echo-a", "invalid_arguments"),
        ("auth_refused", "-", "-"),
    ];
    assert_eq!(
        summary,
        want.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned())),
        "{text}"
    );
    assert_eq!(lines[0]["principal"], "ci-bot");
    assert_eq!(lines[0]["exit_code"], 0);
    assert_eq!(lines[0]["agent"], "local");
    assert_eq!(lines[0]["arguments"]["m"], "audited");
    assert!(lines[0]["session"].is_string(), "{}", lines[0]);
    assert!(
        lines[1]["arguments"]["token"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(
        !text.contains("hunter2-secret"),
        "a secret reached the audit file"
    );
    assert!(!text.contains(&k.ops) && !text.contains("mcpf_wrong"));
    // A restarted server continues the chain.
    drop(c);
    let c = Coordinator::start(&config, &[], &[]);
    assert_eq!(post(&c.addr, &[], INIT).status, 401);
    drop(c);
    let (code, out, _) = verify(&audit);
    assert_eq!(code, 0);
    assert!(out.contains("intact, 6 lines"), "{out}");

    // Every edit is caught, naming the line.
    let good: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let edited = scratch.path().join("edited.jsonl");
    let check = |lines: &[String], want: &str| {
        std::fs::write(&edited, lines.join("\n") + "\n").unwrap();
        let (code, _, err) = verify(&edited);
        assert_eq!(code, 1, "{want}");
        assert!(err.contains(want), "want {want:?}: {err}");
    };
    let mut changed = good.clone();
    changed[2] = changed[2].replace("forbidden", "ran");
    check(&changed, "line 3 was changed");
    let mut removed = good.clone();
    removed.remove(1);
    check(&removed, "line 2 has seq 3 where 2 was next");
    let mut swapped = good.clone();
    swapped.swap(3, 4);
    check(&swapped, "line 4 has seq 5 where 4 was next");
}

/// A config with per-role limits and a narrowed tool, its ledger and audit file in `scratch`.
fn limits_config(scratch: &Scratch) -> (PathBuf, Vec<String>) {
    let dir = scratch.path().display().to_string();
    let mut keys = Vec::new();
    let mut lines = String::new();
    for (id, role) in [
        ("flooder", "flood"),
        ("steady", "calm"),
        ("burster", "burst"),
        ("deployer", "deployer"),
    ] {
        let (key, line) = new_key(id, role);
        keys.push(key);
        lines.push_str(&format!("      {line}\n"));
    }
    let config = scratch.write(
        "limits.yaml",
        &format!(
            r#"server:
  audit: {{path: {dir}/audit.jsonl}}
  auth:
    api_keys:
{lines}roles:
  flood:
    tools: [work]
    limits: {{calls_per_minute: 600, concurrent: 2}}
  calm:
    tools: [work]
  burst:
    tools: [work]
    limits: {{calls_per_minute: 3}}
  deployer:
    tools: [deploy]
    args:
      deploy: {{env: {{enum: [staging]}}}}
tools:
  - name: work
    command: ["/bin/sh", "-c", "echo \"$1\" >> {dir}/ledger; sleep 0.5", "sh", "{{{{tag}}}}"]
    params: {{tag: {{type: string}}}}
  - name: deploy
    command: ["/bin/sh", "-c", "echo \"deploy $1\" >> {dir}/ledger", "sh", "{{{{env}}}}"]
    params: {{env: {{type: string, enum: [staging, prod]}}}}
"#
        ),
    );
    (config, keys)
}

fn ledger(scratch: &Scratch) -> Vec<String> {
    std::fs::read_to_string(scratch.path().join("ledger"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_flooding_principal_is_held_to_its_limits_while_another_is_unaffected() {
    let scratch = Scratch::new();
    let (config, keys) = limits_config(&scratch);
    let c = Coordinator::start(&config, &[], &[]);
    let url = c.url();
    // The flood: 12 calls at once from a principal that may run 2 at a time, beside a
    // principal without limits making 4 calls at once.
    let (flood, calm) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            drive_http_ok_as(
                &url,
                Some(&keys[0]),
                None,
                json!([{"op": "call_many", "name": "work", "count": 12, "arguments": {"tag": "flood"}}]),
            )
        });
        let calm = s.spawn(|| {
            drive_http_ok_as(
                &url,
                Some(&keys[1]),
                None,
                json!([{"op": "call_many", "name": "work", "count": 4, "arguments": {"tag": "calm"}}]),
            )
        });
        (flood.join().unwrap(), calm.join().unwrap())
    });
    let flood = flood[0]["results"].as_array().unwrap();
    let calm = calm[0]["results"].as_array().unwrap();
    assert!(
        calm.iter().all(|r| r["is_error"] == false),
        "the well-behaved principal was refused: {calm:?}"
    );
    let ran = flood.iter().filter(|r| r["is_error"] == false).count();
    let refused: Vec<&Value> = flood.iter().filter(|r| r["is_error"] == true).collect();
    assert!(
        (1..=2).contains(&ran),
        "{ran} of the flood ran at once: {flood:?}"
    );
    assert_eq!(ran + refused.len(), 12);
    for r in &refused {
        let text = result_text(r);
        assert!(
            text.contains("rate limited") && text.contains("`flooder` already has 2 calls running"),
            "{text}"
        );
        assert_eq!(r["structured_content"]["error"]["kind"], "rate_limited");
        assert_eq!(r["structured_content"]["error"]["outcome"], "not_run");
    }
    // The ledger shows what really ran: exactly what the callers were told ran.
    let lines = ledger(&scratch);
    assert_eq!(
        lines.iter().filter(|l| *l == "flood").count(),
        ran,
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| *l == "calm").count(),
        4,
        "{lines:?}"
    );

    // A rate: 3 calls per minute, then "retry after" the time the next one is due.
    let results = drive_http_ok_as(
        &url,
        Some(&keys[2]),
        None,
        json!(
            (0..5)
                .map(|_| json!({"op": "call", "name": "work", "arguments": {"tag": "burst"}}))
                .collect::<Vec<_>>()
        ),
    );
    let outcomes: Vec<bool> = results.iter().map(|r| r["is_error"] == true).collect();
    assert_eq!(outcomes, [false, false, false, true, true], "{results:?}");
    let retry = results[3]["structured_content"]["error"]["retry_after_s"]
        .as_u64()
        .unwrap();
    assert!((15..=20).contains(&retry), "retry after {retry} s");
    assert!(
        result_text(&results[3]).contains(&format!("retry after {retry} s")),
        "{}",
        result_text(&results[3])
    );
    assert_eq!(ledger(&scratch).iter().filter(|l| *l == "burst").count(), 3);
    // Refusals are audited with their reason.
    let audit = std::fs::read_to_string(scratch.path().join("audit.jsonl")).unwrap();
    let limited = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["outcome"] == "rate_limited")
        .count();
    assert_eq!(limited, refused.len() + 2, "{audit}");
}

#[test]
fn a_role_narrows_a_tools_arguments_and_validate_checks_the_narrowing() {
    let scratch = Scratch::new();
    let (config, keys) = limits_config(&scratch);
    let c = Coordinator::start(&config, &[], &[]);
    let results = drive_http_ok_as(
        &c.url(),
        Some(&keys[3]),
        None,
        json!([
            {"op": "call", "name": "deploy", "arguments": {"env": "prod"}},
            {"op": "call", "name": "deploy", "arguments": {"env": "staging"}},
        ]),
    );
    assert_eq!(results[0]["is_error"], true);
    let text = result_text(&results[0]);
    assert!(
        text.contains("not allowed for your roles")
            && text.contains("role `deployer`")
            && text.contains("`env` must be one of"),
        "{text}"
    );
    assert_eq!(results[1]["is_error"], false, "{}", results[1]);
    assert_eq!(ledger(&scratch), ["deploy staging"]);
    let dry = |env: &str| {
        mcpfier_cli(
            &[
                "--config",
                config.to_str().unwrap(),
                "dry-run",
                "deploy",
                "--arg",
                &format!("env={env}"),
                "--as",
                "deployer",
            ],
            &[],
        )
    };
    let (code, _, err) = dry("prod");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not allowed for its roles") && err.contains("nothing would run"),
        "{err}"
    );
    let (code, out, err) = dry("staging");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"allowed\": true"), "{out}");
    let (_, out, _) = mcpfier_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "dry-run",
            "work",
            "--arg",
            "tag=x",
            "--as",
            "burster",
        ],
        &[],
    );
    assert!(out.contains("\"calls_per_minute\": 3"), "{out}");
    assert_eq!(
        ledger(&scratch),
        ["deploy staging"],
        "dry-run ran something"
    );
    // validate checks the narrowing against the tools.
    let yaml = std::fs::read_to_string(&config).unwrap();
    for (from, to, want) in [
        (
            "deploy: {env: {enum: [staging]}}",
            "deploy: {env: {enum: [qa]}}",
            "roles.deployer.args.deploy.env.enum[0]: \"qa\" is not one of the tool's own values",
        ),
        (
            "deploy: {env: {enum: [staging]}}",
            "deploy: {region: {enum: [eu]}}",
            "roles.deployer.args.deploy.region: `deploy` has no parameter `region` (it has: env)",
        ),
        (
            "deploy: {env: {enum: [staging]}}",
            "deploy: {env: {minimum: 1}}",
            "roles.deployer.args.deploy.env.minimum: only integer and number parameters take `minimum`",
        ),
        (
            "deploy: {env: {enum: [staging]}}",
            "nothing: {env: {enum: [staging]}}",
            "roles.deployer.args.nothing: no tool named `nothing`",
        ),
        (
            "calls_per_minute: 3}",
            "calls_per_minute: 0}",
            "roles.burst.limits.calls_per_minute: must be at least 1",
        ),
    ] {
        let bad = scratch.write("bad.yaml", &yaml.replace(from, to));
        let (code, out, err) = mcpfier_cli(&["--config", bad.to_str().unwrap(), "validate"], &[]);
        assert_ne!(code, 0, "{out}");
        assert!(err.contains(want), "want {want:?}: {err}");
    }
}

#[test]
fn the_audit_chain_rotates_and_its_head_in_etcd_catches_cut_newest_lines() {
    let scratch = Scratch::new();
    let k = keys();
    let etcd = mcpfier_tests::EtcdServer::start(scratch.path());
    let certs = mcpfier_tests::Certs::init(&scratch.path().join("certs"));
    certs.issue("coordinator", "coord");
    let audit = scratch.path().join("audit.jsonl");
    let config = scratch.write(
        "audit-etcd.yaml",
        &format!(
            "server:\n{}  audit: {{path: {}, rotate_size: 1KiB, chain: coord-1}}\nfleet:\n  tls: {}\n  etcd: {}\n{ROLES}{TOOLS}",
            k.yaml,
            audit.display(),
            certs.tls_yaml("coord"),
            etcd.yaml("/mcpfier/audit-test"),
        ),
    );
    let c = Coordinator::start(&config, &[], &[]);
    for i in 0..7 {
        let r = post(
            &c.addr,
            &[("Authorization", &format!("Bearer mcpf_wrong{i}"))],
            INIT,
        );
        assert_eq!(r.status, 401);
    }
    let verify = |extra: &[&str]| {
        let mut args = vec!["--config", config.to_str().unwrap(), "audit", "verify"];
        args.extend_from_slice(extra);
        args.push(audit.to_str().unwrap());
        mcpfier_cli(&args, &[])
    };
    // The head reaches etcd shortly after the last line.
    let reached = wait_for(Duration::from_secs(10), || {
        let (code, out, _) = verify(&["--etcd"]);
        (code == 0 && out.contains("the head etcd holds, seq 7")).then_some(out)
    });
    let out = reached.expect("etcd got the head of 7 lines");
    assert!(out.contains("intact, 7 lines (seq 1 to 7"), "{out}");
    let files = mcpfier_coordinator::audit::chain_files(&audit).unwrap();
    assert!(
        files.len() >= 2,
        "1 KiB files: the chain was rotated: {files:?}"
    );
    drop(c);

    // Cut the newest line: the files alone still make a valid chain; etcd's head doesn't.
    let newest = files
        .iter()
        .rev()
        .find(|f| std::fs::metadata(f).unwrap().len() > 0)
        .unwrap();
    let mut lines = read_lines(newest);
    lines.pop();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(newest, text).unwrap();
    let (code, out, err) = verify(&[]);
    assert_eq!(code, 0, "without etcd the cut is not visible: {out}{err}");
    assert!(out.contains("intact, 6 lines"), "{out}");
    let (code, _, err) = verify(&["--etcd"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "the newest lines were cut: the files end at seq 6, and etcd holds the head at seq 7"
        ),
        "{err}"
    );
    // A restart neither hides the cut nor overwrites the evidence.
    let c = Coordinator::start(&config, &[], &[]);
    c.process
        .wait_for_log("its newest lines were cut", Duration::from_secs(10));
    assert_eq!(post(&c.addr, &[], INIT).status, 401);
    drop(c);
    let (code, _, err) = verify(&["--etcd"]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn a_jwks_fetched_over_https_follows_key_rotation_and_unknown_key_ids_cannot_flood_it() {
    let scratch = Scratch::new();
    let (issuer, jwks) = Issuer::new(&scratch.path().join("issuer"), "1");
    let (next, next_jwks) = Issuer::new(&scratch.path().join("issuer-2"), "2");
    let (stranger, _) = Issuer::new(&scratch.path().join("stranger"), "x");
    let served = scratch.write("served-jwks.json", &jwks);
    let certs = EtcdCerts::new(&scratch.path().join("jwks-tls"));
    let mut cmd = std::process::Command::new(mcpfier_tests::python());
    cmd.arg(mcpfier_tests::workspace().join("tests/py/jwks_server.py"))
        .arg(certs.dir.join("server.pem"))
        .arg(certs.dir.join("server.key"))
        .arg(&served);
    let server = mcpfier_tests::Process::start(cmd, &served, "jwks-server");
    let port = server.wait_for_log("port ", Duration::from_secs(10));
    let url = format!("https://127.0.0.1:{}/jwks.json", port.trim());
    let fetches = || server.log_text().matches("GET /jwks.json").count();
    let oauth = |url: &str, ca: &Path| {
        format!(
            "server:\n  auth:\n    oauth:\n      issuer: {ISSUER}\n      audience: {AUDIENCE}\n      jwks_url: \"{url}\"\n      jwks_ca: {}\n{ROLES}{TOOLS}",
            ca.display()
        )
    };
    let config = scratch.write("jwks-url.yaml", &oauth(&url, &certs.dir.join("ca.pem")));
    let c = Coordinator::start(&config, &[], &[]);
    let with = |token: &str| {
        post(
            &c.addr,
            &[("Authorization", &format!("Bearer {token}"))],
            INIT,
        )
    };
    // The first request is answered with the fetched keys (waiting for the first fetch if
    // it is not done yet).
    let r = with(&issuer.sign("ed-1", "EdDSA", claims("alice", &["ops"])));
    assert_eq!(r.status, 200, "{r:?}");
    let r = with(&issuer.sign("ec-1", "ES256", claims("alice", &["ops"])));
    assert_eq!(r.status, 200, "{r:?}");
    let before = fetches();
    assert!(before >= 1);

    // The issuer rotates: a token with the new key id works on its first request.
    let both: Value = {
        let mut a: Value = serde_json::from_str(&jwks).unwrap();
        let b: Value = serde_json::from_str(&next_jwks).unwrap();
        a["keys"]
            .as_array_mut()
            .unwrap()
            .extend(b["keys"].as_array().unwrap().iter().cloned());
        a
    };
    std::fs::write(&served, both.to_string()).unwrap();
    let r = with(&next.sign("ed-2", "EdDSA", claims("bob", &["ops"])));
    assert_eq!(
        r.status, 200,
        "a rotated-in key on its first request: {r:?}"
    );
    assert_eq!(fetches(), before + 1, "one fetch for the new key id");

    // Made-up key ids, many of them, right after: no fetch each (the 30 s floor), all 401.
    for _ in 0..10 {
        let r = with(&stranger.sign("ed-x", "EdDSA", claims("eve", &["ops"])));
        assert_eq!(r.status, 401, "{r:?}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.contains("invalid_token")),
            "{r:?}"
        );
    }
    assert_eq!(
        fetches(),
        before + 1,
        "a flood of unknown key ids fetched nothing"
    );
    drop(c);

    // validate: https only, and the CA must hold a certificate.
    let plain = scratch.write(
        "jwks-http.yaml",
        &oauth("http://127.0.0.1:1/jwks.json", &certs.dir.join("ca.pem")),
    );
    let (code, _, err) = mcpfier_cli(&["--config", plain.to_str().unwrap(), "validate"], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("server.auth.oauth.jwks_url") && err.contains("is not https"),
        "{err}"
    );
    let empty_ca = scratch.write("empty-ca.pem", "");
    let bad = scratch.write("jwks-ca.yaml", &oauth(&url, &empty_ca));
    let (code, _, err) = mcpfier_cli(&["--config", bad.to_str().unwrap(), "validate"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("holds no CA certificate"), "{err}");
}
