//! etcd with TLS, client certificates and auth, as docs/membership.md says to run it: an
//! agent that may write only its own key (its certificate's CN is its etcd user), a
//! coordinator that may only read (a user name and a password from its environment), and a
//! CA of etcd's own.

use std::time::Duration;

use mcpfier_common::membership::{Etcd, agent_key, agents_prefix};
use mcpfier_tests::{
    Agent, Certs, Coordinator, EtcdCerts, EtcdServer, Scratch, drive_http, mcpfier_cli, wait_for,
};
use serde_json::json;

const PREFIX: &str = "/mcpfier/secure";
const COORD_PASSWORD: &str = "c00rd-pa55word";

/// Creates the users and roles of docs/membership.md and enables auth.
fn enable_auth(rt: &tokio::runtime::Runtime, etcd: &EtcdServer, certs: &EtcdCerts) {
    rt.block_on(async {
        let admin = Etcd::connect_with(
            std::slice::from_ref(&etcd.endpoint),
            &certs.access("setup", None),
        )
        .await
        .unwrap();
        let mut c = admin.client.clone();
        c.user_add("root", "r00t-pa55word", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        // An agent writes only its own key.
        c.role_add("mcpfier-agent-a").await.unwrap();
        c.role_grant_permission(
            "mcpfier-agent-a",
            etcd_permission_read_write(agent_key(PREFIX, "a")),
        )
        .await
        .unwrap();
        c.user_add("agent-a", "unused-cert-auth", None)
            .await
            .unwrap();
        c.user_grant_role("agent-a", "mcpfier-agent-a")
            .await
            .unwrap();
        // A coordinator reads the agents' keys.
        c.role_add("mcpfier-coordinator").await.unwrap();
        c.role_grant_permission(
            "mcpfier-coordinator",
            etcd_permission_read_prefix(agents_prefix(PREFIX)),
        )
        .await
        .unwrap();
        c.user_add("coord", COORD_PASSWORD, None).await.unwrap();
        c.user_grant_role("coord", "mcpfier-coordinator")
            .await
            .unwrap();
        c.auth_enable().await.unwrap();
    });
}

fn etcd_permission_read_write(key: String) -> mcpfier_common::membership::Permission {
    mcpfier_common::membership::Permission::read_write(key)
}

fn etcd_permission_read_prefix(prefix: String) -> mcpfier_common::membership::Permission {
    mcpfier_common::membership::Permission::read(prefix).with_prefix()
}

#[test]
fn agents_and_coordinators_use_etcd_over_tls_with_auth_and_least_privilege() {
    let scratch = Scratch::new();
    let fleet = Certs::init(&scratch.path().join("fleet"));
    fleet.issue("coordinator", "coord");
    fleet.issue("agent", "a");
    let etcd_certs = EtcdCerts::new(&scratch.path().join("etcd-certs"));
    for cn in ["setup", "agent-a", "coordinator-host", "nobody"] {
        etcd_certs.issue(cn, &[]);
    }
    let etcd = EtcdServer::start_tls(scratch.path(), &etcd_certs);
    let rt = tokio::runtime::Runtime::new().unwrap();
    enable_auth(&rt, &etcd, &etcd_certs);

    let agent = Agent::start(
        scratch.path(),
        &fleet,
        "a",
        &format!(
            "etcd: {{endpoints: [\"{}\"], prefix: {PREFIX}, tls: {}}}",
            etcd.endpoint,
            etcd_certs.tls_yaml("agent-a")
        ),
    );
    agent
        .process
        .wait_for_log("registered in etcd", Duration::from_secs(15));
    let config = scratch.write(
        "coordinator.yaml",
        &format!(
            "fleet:\n  tls: {}\n  etcd: {{endpoints: [\"{}\"], prefix: {PREFIX}, tls: {}, username: coord, password: \"${{env:ETCD_PASSWORD}}\"}}\ntools:\n  - {{name: hi, command: [/bin/echo, hi]}}\n",
            fleet.tls_yaml("coord"),
            etcd.endpoint,
            etcd_certs.tls_yaml("coordinator-host")
        ),
    );
    let c = Coordinator::start(&config, &[("ETCD_PASSWORD", COORD_PASSWORD)], &[]);
    let r = wait_for(Duration::from_secs(15), || {
        let r = drive_http(
            &c.url(),
            json!([{"op": "call", "name": "hi", "arguments": {}}]),
        )
        .remove(0);
        (r["is_error"] == false).then_some(r)
    })
    .expect("the coordinator never routed to the agent through secure etcd");
    assert_eq!(r["structured_content"]["agent"], "a", "{r}");
    assert!(
        !c.log_text().contains(COORD_PASSWORD),
        "the password is in the log"
    );

    rt.block_on(async {
        // The agent's etcd identity can't touch another agent's key...
        let as_agent = Etcd::connect_with(
            std::slice::from_ref(&etcd.endpoint),
            &etcd_certs.access("agent-a", None),
        )
        .await
        .unwrap();
        let denied = as_agent
            .client
            .clone()
            .put(agent_key(PREFIX, "b"), "{}", None)
            .await
            .unwrap_err();
        assert!(denied.to_string().contains("permission denied"), "{denied}");
        // ...the coordinator's can't write at all...
        let as_coord = Etcd::connect_with(
            std::slice::from_ref(&etcd.endpoint),
            &etcd_certs.access("coordinator-host", Some(("coord", COORD_PASSWORD))),
        )
        .await
        .unwrap();
        let denied = as_coord
            .client
            .clone()
            .put(agent_key(PREFIX, "a"), "{}", None)
            .await
            .unwrap_err();
        assert!(denied.to_string().contains("permission denied"), "{denied}");
        assert_eq!(as_coord.list(PREFIX).await.unwrap().0.len(), 1);
        // ...and a certificate without a user reads nothing.
        let stranger = Etcd::connect_with(
            std::slice::from_ref(&etcd.endpoint),
            &etcd_certs.access("nobody", None),
        )
        .await;
        let read = match stranger {
            Ok(s) => s.list(PREFIX).await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(read.is_err(), "a stranger read the agents");
    });
}

#[test]
fn a_config_whose_etcd_trusts_the_fleet_ca_is_refused() {
    let scratch = Scratch::new();
    let fleet = Certs::init(&scratch.path().join("fleet"));
    fleet.issue("coordinator", "coord");
    let config = scratch.write(
        "coordinator.yaml",
        &format!(
            "fleet:\n  tls: {tls}\n  etcd: {{endpoints: [\"https://127.0.0.1:1\"], prefix: /x, tls: {tls}, password: \"${{env:P}}\"}}\ntools:\n  - {{name: hi, command: [/bin/echo, hi]}}\n",
            tls = fleet.tls_yaml("coord"),
        ),
    );
    let (code, out, err) = mcpfier_cli(
        &["--config", config.to_str().unwrap(), "validate"],
        &[("P", "s3cret-value")],
    );
    assert_ne!(code, 0, "{out}{err}");
    let text = format!("{out}{err}");
    assert!(text.contains("fleet.etcd.tls.ca"), "{text}");
    assert!(text.contains("also the CA of the fleet"), "{text}");
    assert!(
        text.contains("fleet.etcd.password: set username too"),
        "{text}"
    );
    assert!(!text.contains("s3cret-value"), "{text}");
}
