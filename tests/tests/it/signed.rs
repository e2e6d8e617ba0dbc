//! Signed tools end to end: `mcpfier catalog keygen` and `sign`, an agent with
//! `policy.tool_signers`, the coordinator sending each call's signed definition, and the
//! attacks a stolen coordinator key allows once signatures are required. The tool appends to
//! a ledger, so every refusal is also checked to have run nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use mcpfier_exec::{ErrorKind, Execution, wire};
use mcpfier_proto::v1::{Finished, agent_client::AgentClient, execute_event::Event};
use mcpfier_tests::{Agent, Certs, Coordinator, Scratch, drive_http, mcpfier_cli, result_text};
use serde_json::json;

const TOKEN: &str = "t0ken-value";

struct Signed {
    scratch: Scratch,
    certs: Certs,
    agent: Agent,
    ledger: PathBuf,
    key: PathBuf,
}

impl Signed {
    fn start() -> Signed {
        let scratch = Scratch::new();
        let ledger = scratch.write("ledger", "");
        let certs = Certs::init(&scratch.path().join("certs"));
        certs.issue("coordinator", "coord");
        certs.issue("agent", "s1");
        let out = scratch.path().join("signing");
        let (code, stdout, stderr) =
            mcpfier_cli(&["catalog", "keygen", "--out", out.to_str().unwrap()], &[]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.starts_with("signing key "), "{stdout}");
        let key = scratch.path().join("signing.key");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the private key is readable by others");
        let agent = Agent::start(
            scratch.path(),
            &certs,
            "s1",
            "policy:\n  tool_signers: [signing.pub]",
        );
        agent
            .process
            .wait_for_log("runs only signed tools", Duration::from_secs(5));
        Signed {
            scratch,
            certs,
            agent,
            ledger,
            key,
        }
    }

    /// The config: one tool, `note`, which appends its word to the ledger and says how long
    /// the secret it got was; `pattern` is the word's rule.
    fn config(&self, pattern: &str) -> PathBuf {
        self.scratch.config(&format!(
            r#"
fleet:
  tls: {tls}
  agents:
    - {{id: s1, address: "{addr}"}}
tools:
  - name: note
    command: ["/bin/sh", "-c", "echo \"$1\" >> \"$2\"; echo noted $1 with a ${{#TOKEN}}-byte token", "sh", "{{{{word}}}}", "{ledger}"]
    params: {{word: {{type: string, pattern: "{pattern}"}}}}
    env: {{LANG: C, TOKEN: "${{env:NOTE_TOKEN}}"}}
"#,
            tls = self.certs.tls_yaml("coord"),
            addr = self.agent.addr,
            ledger = self.ledger.display(),
        ))
    }

    fn sign(&self, config: &Path) -> String {
        let (code, stdout, stderr) = mcpfier_cli(
            &[
                "catalog",
                "sign",
                "--key",
                self.key.to_str().unwrap(),
                config.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, 0, "{stderr}");
        stdout
    }

    fn ledger(&self) -> String {
        std::fs::read_to_string(&self.ledger).unwrap()
    }
}

fn call(coordinator: &Coordinator, word: &str) -> serde_json::Value {
    drive_http(
        &coordinator.url(),
        json!([{"op": "call", "name": "note", "arguments": {"word": word}}]),
    )
    .remove(0)
}

#[test]
fn only_signed_tools_with_valid_arguments_run_on_an_agent_that_requires_signatures() {
    let s = Signed::start();
    let config = s.config("^[a-z]+$");
    let env = [("NOTE_TOKEN", TOKEN)];

    // Unsigned: the agent refuses, and says what to do.
    let mut coordinator = Coordinator::start(&config, &env, &[]);
    let r = call(&coordinator, "hello");
    assert_eq!(r["is_error"], true, "{r}");
    let text = result_text(&r);
    assert!(
        text.contains("tool `note` comes without a signature")
            && text.contains("mcpfier catalog sign"),
        "{text}"
    );
    assert_eq!(s.ledger(), "", "an unsigned call ran");
    coordinator.stop();

    // Signed: the call runs, with its secret.
    let said = s.sign(&config);
    assert!(said.starts_with("signed 1 tools of "), "{said}");
    assert!(PathBuf::from(format!("{}.sig", config.display())).exists());
    let mut coordinator = Coordinator::start(&config, &env, &[]);
    let r = call(&coordinator, "hello");
    assert_eq!(r["is_error"], false, "{r}");
    let expected = format!("noted hello with a {}-byte token", TOKEN.len());
    assert!(result_text(&r).contains(&expected), "{r}");
    assert_eq!(s.ledger(), "hello\n");
    coordinator.stop();
    assert!(
        !coordinator.log_text().contains(TOKEN),
        "the secret was logged"
    );

    // A tool edited after signing: the coordinator refuses to load the config, naming it.
    let edited = s.config("^[a-z ;]+$");
    let (code, _, stderr) = mcpfier_cli(&["--config", edited.to_str().unwrap(), "validate"], &env);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("tool `note` was changed after it was signed"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");
}

/// A raw client holding the coordinator's certificate: what a thief of that key can send.
/// What a stolen coordinator key allows: Execute requests of its own making, straight to an
/// agent.
pub(crate) struct Thief {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) client: AgentClient<tonic::transport::Channel>,
}

impl Thief {
    /// Sends `exec` as a call of `tool`; its output, or the agent's refusal.
    pub(crate) fn send(
        &self,
        tool: &str,
        exec: &Execution,
        call_id: &str,
    ) -> Result<String, tonic::Status> {
        self.send_finished(tool, exec, call_id).map(|(out, _)| out)
    }

    /// Like [`Thief::send`], with the call's `Finished` event (which carries an error that
    /// came after the agent accepted the call).
    pub(crate) fn send_finished(
        &self,
        tool: &str,
        exec: &Execution,
        call_id: &str,
    ) -> Result<(String, Finished), tonic::Status> {
        let mut client = self.client.clone();
        let req = wire::request(exec, call_id, "r", tool);
        self.rt.block_on(async move {
            let mut stream = tokio::time::timeout(Duration::from_secs(20), client.execute(req))
                .await
                .expect("an answer within 20 s")?
                .into_inner();
            let mut out = Vec::new();
            while let Some(event) = stream.next().await {
                match event?.event {
                    Some(Event::Output(o)) => out.extend_from_slice(&o.data),
                    Some(Event::Finished(f)) => {
                        return Ok((String::from_utf8_lossy(&out).into(), f));
                    }
                    _ => {}
                }
            }
            panic!("the stream ended without Finished")
        })
    }
}

#[test]
fn a_stolen_coordinator_key_runs_only_signed_definitions_with_valid_arguments() {
    let s = Signed::start();
    let config = s.config("^[a-z]+$");
    s.sign(&config);
    let env: std::collections::HashMap<_, _> = [("NOTE_TOKEN".to_owned(), TOKEN.to_owned())].into();
    let catalog = mcpfier_coordinator::catalog::load(&config, &env).unwrap();
    let tool = catalog.tool("note").unwrap();
    let good = tool.prepare(json!({"word": "fine"}).as_object()).unwrap();
    assert!(
        good.signed.is_some(),
        "the loaded tool carries its signature"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let thief = Thief {
        client: s.agent.raw_client(&rt, &s.certs),
        rt,
    };

    // The control: the signed call as the coordinator makes it runs.
    let out = thief.send("note", &good, "control").unwrap();
    assert!(out.contains("noted fine"), "{out}");
    assert_eq!(s.ledger(), "fine\n");

    let mut attacks: Vec<(&str, &str, Execution)> = Vec::new();
    attacks.push((
        "another program",
        "differs from its signed definition in argv",
        Execution {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("id >> {}", s.ledger.display()),
            ],
            ..good.clone()
        },
    ));
    let mut bad_args = tool.prepare(json!({"word": "fine"}).as_object()).unwrap();
    let injected = format!("x; id >> {}", s.ledger.display());
    bad_args.argv[3] = injected.clone();
    bad_args.signed.as_mut().unwrap().arguments = json!({"word": injected}).to_string();
    attacks.push((
        "arguments outside the signed rules",
        "the arguments of tool `note` break its signed rules: parameter `word`",
        bad_args,
    ));
    let mut rewritten = good.clone();
    let signed = rewritten.signed.as_mut().unwrap();
    let definition = String::from_utf8(signed.definition.to_vec())
        .unwrap()
        .replace("^[a-z]+$", ".*");
    signed.definition = definition.into_bytes().into();
    attacks.push((
        "a rewritten definition",
        "tool `note` is not signed by a key this agent trusts",
        rewritten,
    ));
    attacks.push((
        "no signature",
        "tool `note` comes without a signature",
        Execution {
            signed: None,
            ..good.clone()
        },
    ));
    let mut extra_env = good.clone();
    extra_env.env.push(mcpfier_exec::EnvVar {
        name: "BASH_ENV".into(),
        value: "/tmp/x".into(),
        secret: true,
    });
    attacks.push((
        "an undeclared variable passed as a secret",
        "differs from its signed definition in env.BASH_ENV",
        extra_env,
    ));
    attacks.push((
        "a longer timeout",
        "differs from its signed definition in timeout",
        Execution {
            timeout: Duration::from_secs(600),
            ..good.clone()
        },
    ));
    for (i, (what, says, exec)) in attacks.into_iter().enumerate() {
        let status = thief
            .send("note", &exec, &format!("attack-{i}"))
            .expect_err(what);
        assert_eq!(
            wire::refusal_kind(&status),
            Some(ErrorKind::Policy),
            "{what}: {status:?}"
        );
        assert!(
            status.message().contains(says),
            "{what}: {}",
            status.message()
        );
        assert!(
            !status.message().contains(TOKEN),
            "{what}: {}",
            status.message()
        );
        assert_eq!(s.ledger(), "fine\n", "{what}: something ran");
    }

    // The signed definition of `note`, sent as another tool's.
    let status = thief.send("other", &good, "attack-name").unwrap_err();
    assert!(
        status
            .message()
            .contains("the signed definition sent for tool `other` is the definition of `note`"),
        "{}",
        status.message()
    );
    assert_eq!(s.ledger(), "fine\n");
}
