//! `mcpfier status` and the probes: the routing view read from a running coordinator (an
//! agent SIGKILLed is out of routing there, with why), its credential from $MCPFIER_TOKEN,
//! `/readyz` waiting for etcd on the coordinator and for registration on the agent.

use std::time::Duration;

use mcpfier_tests::{
    Agent, Certs, Coordinator, EtcdServer, Guarded, Scratch, http_request, mcpfier_cli, wait_for,
};
use serde_json::Value;

/// `mcpfier status --output json` against `base`: the view, or the failure's stderr.
fn status_json(base: &str, env: &[(&str, &str)]) -> Result<Value, String> {
    let (code, out, err) = mcpfier_cli(&["status", "--url", base, "--output", "json"], env);
    if code != 0 {
        return Err(err);
    }
    Ok(serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")))
}

fn agent_in<'v>(view: &'v Value, id: &str) -> &'v Value {
    find_agent(view, id).unwrap_or_else(|| panic!("no agent {id} in {view}"))
}

/// The agent `id` of the view; `None` while routing does not know it.
fn find_agent<'v>(view: &'v Value, id: &str) -> Option<&'v Value> {
    view["agents"].as_array()?.iter().find(|a| a["id"] == id)
}

/// The state `id` has in the view, if routing knows it.
fn state_of<'v>(view: &'v Value, id: &str) -> Option<&'v str> {
    find_agent(view, id)?["state"].as_str()
}

#[test]
fn status_shows_a_killed_static_agent_out_of_routing_with_its_last_error() {
    let scratch = Scratch::new();
    let certs = Certs::init(&scratch.path().join("certs"));
    for (role, name) in [("coordinator", "coord"), ("agent", "eu1"), ("agent", "us1")] {
        certs.issue(role, name);
    }
    let eu1 = Agent::start(
        scratch.path(),
        &certs,
        "eu1",
        "labels: {region: eu-west, pool: build}",
    );
    let mut us1 = Agent::start(
        scratch.path(),
        &certs,
        "us1",
        "labels: {region: us-east}\ncapacity: 3",
    );
    let config = scratch.config(&format!(
        "fleet:\n  tls: {}\n  health_interval: 500ms\n  agents:\n    - {{id: eu1, address: \"{}\"}}\n    - {{id: us1, address: \"{}\"}}\ntools:\n  - {{name: hi, command: [/bin/echo, hi]}}\n",
        certs.tls_yaml("coord"),
        eu1.addr,
        us1.addr
    ));
    let c = Coordinator::start(&config, &[], &[]);
    let base = format!("http://{}", c.addr);

    let view = wait_for(Duration::from_secs(15), || {
        let v = status_json(&base, &[]).ok()?;
        (state_of(&v, "eu1")? == "healthy" && state_of(&v, "us1")? == "healthy").then_some(v)
    })
    .expect("both agents healthy in status");
    assert_eq!(view["mode"], "fleet");
    assert_eq!(view["coordinator"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(agent_in(&view, "us1")["capacity"], 3);
    assert_eq!(agent_in(&view, "eu1")["labels"]["region"], "eu-west");

    // The text table, read without --url: the address comes from the config.
    let port = c.addr.rsplit_once(':').unwrap().1;
    let status_config = scratch.write(
        "status.yaml",
        &format!("server: {{listen: \"127.0.0.1:{port}\"}}\ntools: []\n"),
    );
    let (code, text, err) = mcpfier_cli(
        &["--config", status_config.to_str().unwrap(), "status"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("coordinator "), "{text}");
    assert!(lines[1].starts_with("ID "), "{text}");
    // By region: eu-west before us-east.
    assert!(
        lines[2].starts_with("eu1 ") && lines[2].contains("eu-west"),
        "{text}"
    );
    assert!(
        lines[2].contains("healthy") && lines[2].contains("pool=build"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("us1 ") && lines[3].contains("0/3"),
        "{text}"
    );
    assert_eq!(lines[4], "2 agents: 2 healthy", "{text}");

    // SIGKILL: out of routing within a few health checks, with why.
    us1.process.kill9();
    let view = wait_for(Duration::from_secs(15), || {
        let v = status_json(&base, &[]).ok()?;
        (state_of(&v, "us1")? == "unhealthy").then_some(v)
    })
    .expect("the killed agent out of routing in status");
    let last_error = agent_in(&view, "us1")["last_error"]
        .as_str()
        .expect("a last error for the killed agent");
    assert!(!last_error.is_empty());
    assert_eq!(agent_in(&view, "eu1")["state"], "healthy");
    let (code, text, _) = mcpfier_cli(&["status", "--url", &base], &[]);
    assert_eq!(code, 0);
    let row = text.lines().find(|l| l.starts_with("us1 ")).unwrap();
    assert!(row.contains("unhealthy"), "{text}");
    assert!(row.ends_with(last_error), "{text}");
    assert!(
        text.ends_with("2 agents: 1 healthy, 1 unhealthy\n"),
        "{text}"
    );
    // A static fleet is ready: it has no etcd to wait for.
    assert_eq!(
        http_request(&c.addr, "GET", "/readyz", &[], "").unwrap(),
        (200, "ready\n".to_owned())
    );
}

#[test]
fn status_takes_its_credential_from_the_environment_and_needs_fleet_read() {
    let scratch = Scratch::new();
    let g = Guarded::start(&scratch);
    let (c, reader, caller) = (&g.coordinator, &g.reader, &g.caller);
    let base = format!("http://{}", c.addr);

    let err = status_json(&base, &[]).expect_err("status without a credential");
    assert!(err.contains("set MCPFIER_TOKEN"), "{err}");
    assert!(err.contains("fleet: read"), "{err}");
    let err = status_json(&base, &[("MCPFIER_TOKEN", "mcpk_not-a-key")])
        .expect_err("status with a made-up key");
    assert!(
        err.contains("refused the credential in MCPFIER_TOKEN"),
        "{err}"
    );
    let err = status_json(&base, &[("MCPFIER_TOKEN", caller)])
        .expect_err("status as a caller without fleet: read");
    assert!(err.contains("`caller` may not read the fleet"), "{err}");
    let view = status_json(&base, &[("MCPFIER_TOKEN", reader)]).expect("status as the reader");
    assert_eq!(view["mode"], "embedded");
    let (code, text, _) = mcpfier_cli(&["status", "--url", &base], &[("MCPFIER_TOKEN", reader)]);
    assert_eq!(code, 0);
    assert!(
        text.contains("embedded: tools run on the coordinator itself"),
        "{text}"
    );
    // The key never shows in what status prints, nor in the coordinator's log.
    assert!(!text.contains(reader.as_str()));
    assert!(!c.log_text().contains(reader.as_str()));
    // A port nothing listens on: the error says what to check.
    let err = status_json("http://127.0.0.1:1", &[]).expect_err("status against nothing");
    assert!(err.contains("is `mcpfier serve` running there?"), "{err}");
    // Probes need no credential and pass any Host.
    for path in ["/healthz", "/readyz"] {
        let (status, _) = http_request(
            &c.addr,
            "GET",
            path,
            &[("host", "pod-10-1-2-3.internal")],
            "",
        )
        .unwrap();
        assert_eq!(status, 200, "{path}");
    }
    let (status, _) = http_request(&c.addr, "GET", "/fleet", &[], "").unwrap();
    assert_eq!(status, 401);
}

#[test]
fn readyz_waits_for_etcd_on_the_coordinator_and_for_registration_on_the_agent() {
    let scratch = Scratch::new();
    let certs = Certs::init(&scratch.path().join("certs"));
    for (role, name) in [("coordinator", "coord"), ("agent", "a")] {
        certs.issue(role, name);
    }
    let mut etcd = EtcdServer::start(scratch.path());
    etcd.stop();
    let config = scratch.config(&format!(
        "fleet:\n  tls: {}\n  etcd: {}\ntools:\n  - {{name: hi, command: [/bin/echo, hi]}}\n",
        certs.tls_yaml("coord"),
        etcd.yaml("/mcpfier/ready")
    ));
    let c = Coordinator::start(&config, &[], &[]);
    // Alive, but etcd was never reached: not ready, and it says why.
    assert_eq!(
        http_request(&c.addr, "GET", "/healthz", &[], "").unwrap().0,
        200
    );
    let (status, body) = http_request(&c.addr, "GET", "/readyz", &[], "").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("etcd has not been reached"), "{body}");

    // An agent with etcd down serves its probes but is not ready until it registers.
    let agent = Agent::start(
        scratch.path(),
        &certs,
        "a",
        &format!(
            "metrics_listen: 127.0.0.1:0\netcd: {{endpoints: [\"{}\"], prefix: /mcpfier/ready, lease_ttl: 3s}}",
            etcd.endpoint
        ),
    );
    let rest = agent
        .process
        .wait_for_log("serving metrics at http://", Duration::from_secs(10));
    let probes = rest[..rest.find("/metrics").unwrap()].to_owned();
    assert_eq!(
        http_request(&probes, "GET", "/healthz", &[], "").unwrap().0,
        200
    );
    let (status, body) = http_request(&probes, "GET", "/readyz", &[], "").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not registered in etcd"), "{body}");

    etcd.restart();
    let ready = |addr: &str| {
        let addr = addr.to_owned();
        wait_for(Duration::from_secs(20), move || {
            (http_request(&addr, "GET", "/readyz", &[], "").ok()? == (200, "ready\n".to_owned()))
                .then_some(())
        })
    };
    assert!(
        ready(&c.addr).is_some(),
        "the coordinator never became ready"
    );
    assert!(ready(&probes).is_some(), "the agent never became ready");
    let base = format!("http://{}", c.addr);
    wait_for(Duration::from_secs(20), || {
        let v = status_json(&base, &[]).ok()?;
        (state_of(&v, "a")? == "healthy").then_some(())
    })
    .expect("the registered agent never became healthy in status");
    // Once reached, an etcd outage leaves the coordinator ready: it routes on what it knows.
    etcd.stop();
    wait_for(Duration::from_secs(20), || {
        let (_, body) = http_request(&c.addr, "GET", "/healthz", &[], "").ok()?;
        body.contains("etcd unreachable").then_some(())
    })
    .expect("the coordinator never noticed etcd went away");
    assert_eq!(
        http_request(&c.addr, "GET", "/readyz", &[], "").unwrap().0,
        200
    );
    // The agent's lease lapses without etcd: fenced, so not ready.
    let addr = probes.clone();
    let fenced = wait_for(Duration::from_secs(20), move || {
        let (status, body) = http_request(&addr, "GET", "/readyz", &[], "").ok()?;
        (status == 503).then_some(body)
    })
    .expect("the agent stayed ready with its lease lapsed");
    assert!(fenced.contains("fenced"), "{fenced}");
    // The coordinator, routing on the last known membership, sees it fenced too.
    wait_for(Duration::from_secs(20), || {
        let v = status_json(&base, &[]).ok()?;
        (state_of(&v, "a")? == "fenced").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the coordinator never showed the agent fenced: {:?}",
            status_json(&base, &[])
        )
    });
}
