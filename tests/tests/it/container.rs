//! Container tools through the Docker Engine API: isolation checked from inside, limits, and
//! nothing left behind — in the embedded coordinator and through an agent over mutual TLS.

use std::time::Duration;

use mcpfier_tests::{
    Agent, Certs, Coordinator, Scratch, containers_with_label, drive_http, result_stderr,
    result_stdout, result_text as text, test_image, test_image_without_tmp, wait_for,
};
use serde_json::{Value, json};

const SECRET: &str = "s3cr3t-container-token";

fn tools(image: &str) -> String {
    let notmp = test_image_without_tmp();
    format!(
        r#"
tools:
  - name: scratch-tmp
    description: An image with no /tmp of its own, run as nobody
    command: [/bin/sh, -c, "echo hi > /tmp/x && cat /tmp/x && stat -c %a /tmp"]
    container: {{image: "{notmp}", pull: never}}
  - name: whoami
    command: [/bin/id, -u]
    container: {{image: "{image}", pull: never}}
  - name: write-root
    command: [/bin/sh, -c, "touch /tmp/ok && echo tmp-ok; touch /probe"]
    container: {{image: "{image}", pull: never}}
  - name: interfaces
    command: [/bin/cat, /proc/net/dev]
    container: {{image: "{image}", pull: never}}
  - name: caps
    command: [/bin/grep, CapEff, /proc/self/status]
    container: {{image: "{image}", pull: never}}
  - name: forkbomb
    command: [/bin/sh, -c, "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done; echo spawned"]
    container: {{image: "{image}", pull: never, pids: 20}}
    timeout: 20s
  - name: memhog
    command: [/bin/sh, -c, "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived"]
    container: {{image: "{image}", pull: never, memory: 32MiB}}
    timeout: 30s
  - name: sleeper
    command: [/bin/sleep, "30"]
    container: {{image: "{image}", pull: never}}
    timeout: 1s
  - name: hang
    command: [/bin/sh, -c, "echo x > /work/started; sleep 60"]
    container: {{image: "{image}", pull: never, mounts: [{{source: "@DIR@", target: /work, rw: true}}]}}
    timeout: 60s
  - name: big-output
    command: [/bin/sh, -c, "head -c 100000 /dev/zero | tr '\\0' x"]
    container: {{image: "{image}", pull: never}}
    max_output: 1KiB
  - name: secret-env
    command: [/bin/sh, -c, "touch /work/secret-started; sleep 3; test -n \"$TOKEN\" && echo has-token"]
    env: {{TOKEN: "${{env:TEST_SECRET}}"}}
    container: {{image: "{image}", pull: never, mounts: [{{source: "@DIR@", target: /work, rw: true}}]}}
  - name: quick
    command: [/bin/echo, quick]
    container: {{image: "{image}", pull: never}}
  - name: missing-image
    command: [/bin/true]
    container: {{image: "localhost/no-such-image:0", pull: never}}
"#
    )
}

fn call(c: &Coordinator, name: &str) -> Value {
    drive_http(
        &c.url(),
        json!([{"op": "call", "name": name, "arguments": {}}]),
    )
    .remove(0)
}

fn stdout(r: &Value) -> String {
    result_stdout(r)
}

fn assert_no_containers(tool: &str) {
    let label = format!("mcpfier.tool={tool}");
    let gone = wait_for(Duration::from_secs(15), || {
        containers_with_label(&label).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "containers left for {tool}: {:?}",
        containers_with_label(&label)
    );
}

fn embedded() -> (Scratch, Coordinator) {
    let image = test_image();
    let scratch = Scratch::new();
    // Mounted at /work for the container's user, nobody.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = scratch.config(&tools(image));
    let c = Coordinator::start(&config, &[("TEST_SECRET", SECRET)], &[]);
    (scratch, c)
}

#[test]
fn inside_the_container_the_caller_is_nobody_without_capabilities_network_or_a_writable_root() {
    let (_s, c) = embedded();
    assert_eq!(stdout(&call(&c, "whoami")).trim(), "65534");
    let r = call(&c, "write-root");
    assert_eq!(r["is_error"], true, "{r}");
    assert_eq!(stdout(&r), "tmp-ok\n");
    assert!(result_stderr(&r).contains("Read-only file system"), "{r}");
    let devs = stdout(&call(&c, "interfaces"));
    let names: Vec<_> = devs
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim().to_owned())
        .collect();
    assert_eq!(names, ["lo"], "{devs}");
    assert_eq!(
        stdout(&call(&c, "caps")).trim(),
        "CapEff:\t0000000000000000"
    );
    for tool in ["whoami", "write-root", "interfaces", "caps"] {
        assert_no_containers(tool);
    }
}

#[test]
fn an_image_without_its_own_tmp_gets_a_tmp_everyone_can_write() {
    let (_s, c) = embedded();
    let r = call(&c, "scratch-tmp");
    assert_eq!(stdout(&r), "hi\n1777\n", "{r}");
    assert_no_containers("scratch-tmp");
}

#[test]
fn a_fork_bomb_hits_the_pids_limit_and_a_memory_hog_is_oom_killed() {
    let (_s, c) = embedded();
    let r = call(&c, "forkbomb");
    let err = result_stderr(&r);
    assert!(
        err.contains("can't fork") || err.contains("Resource temporarily unavailable"),
        "{r}"
    );
    let r = call(&c, "memhog");
    assert_eq!(r["is_error"], true, "{r}");
    assert_eq!(r["structured_content"]["oom_killed"], true, "{r}");
    assert!(text(&r).contains("out of memory"), "{r}");
    assert!(!stdout(&r).contains("survived"));
    assert_no_containers("forkbomb");
    assert_no_containers("memhog");
}

#[test]
fn timeout_and_cancellation_leave_no_container() {
    let (s, c) = embedded();
    let r = call(&c, "sleeper");
    assert_eq!(r["structured_content"]["timed_out"], true, "{r}");
    assert_no_containers("sleeper");
    let started = s.path().join("started");
    let results = drive_http(
        &c.url(),
        json!([{"op": "call", "name": "hang", "arguments": {}, "cancel_when_file": started}]),
    );
    assert_eq!(results[0], json!({"cancelled": true, "file_seen": true}));
    assert_no_containers("hang");
}

#[test]
fn output_is_capped_and_secrets_stay_out_of_the_command_line() {
    let (s, c) = embedded();
    let r = call(&c, "big-output");
    assert_eq!(r["structured_content"]["truncated"], true);
    assert_eq!(stdout(&r).len(), 1024);
    let url = c.url();
    let driver = std::thread::spawn(move || {
        drive_http(
            &url,
            json!([{"op": "call", "name": "secret-env", "arguments": {}}]),
        )
        .remove(0)
    });
    wait_for(Duration::from_secs(20), || {
        s.path().join("secret-started").exists().then_some(())
    })
    .expect("started");
    let ids = containers_with_label("mcpfier.tool=secret-env");
    assert_eq!(ids.len(), 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let inspected = rt.block_on(async {
        let docker = mcpfier_exec::bollard::Docker::connect_with_local_defaults()
            .unwrap()
            .negotiate_version()
            .await
            .unwrap();
        docker.inspect_container(&ids[0], None).await.unwrap()
    });
    let config = inspected.config.clone().unwrap();
    let command_line = format!(
        "{:?} {:?} {:?} {:?}",
        inspected.path, inspected.args, config.cmd, config.entrypoint
    );
    assert!(
        !command_line.contains(SECRET),
        "secret in the command line: {command_line}"
    );
    let labels = config.labels.clone().unwrap();
    assert_eq!(labels["mcpfier.tool"], "secret-env");
    assert!(labels.contains_key("mcpfier.call_id") && labels.contains_key("mcpfier.owner"));
    let host = inspected.host_config.unwrap();
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_owned()])
    );
    assert_eq!(host.init, Some(true));
    let r = driver.join().unwrap();
    assert_eq!(stdout(&r), "has-token\n");
    assert_no_containers("secret-env");
}

#[test]
fn fifty_concurrent_container_calls_leave_nothing_behind() {
    let (_s, c) = embedded();
    let results = drive_http(
        &c.url(),
        json!([{"op": "call_many", "name": "quick", "arguments": {}, "count": 50}]),
    );
    let results = results[0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 50);
    for r in results {
        assert_eq!(r["is_error"], false, "{r}");
        assert_eq!(result_stdout(r), "quick\n");
    }
    assert_no_containers("quick");
    // No zombie children of the coordinator.
    let zombies = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let rest = stat.rsplit(')').next().unwrap_or_default();
            let fields: Vec<_> = rest.split_whitespace().collect();
            fields.first() == Some(&"Z")
                && fields.get(1) == Some(&c.process.pid().to_string().as_str())
        })
        .count();
    assert_eq!(zombies, 0);
}

#[test]
fn a_missing_image_with_pull_never_is_a_clear_error() {
    let (_s, c) = embedded();
    let r = call(&c, "missing-image");
    assert_eq!(r["is_error"], true);
    assert!(
        text(&r).contains(
            "image `localhost/no-such-image:0` is not present and the tool says pull: never"
        ),
        "{r}"
    );
}

#[test]
fn container_calls_run_through_an_agent_over_mutual_tls() {
    let image = test_image();
    let scratch = Scratch::new();
    let certs = Certs::init(&scratch.path().join("certs"));
    certs.issue("coordinator", "coord");
    certs.issue("agent", "d1");
    let agent = Agent::start(
        scratch.path(),
        &certs,
        "d1",
        "policy: {allow_images: [\"localhost/mcpfier-test:*\"]}",
    );
    let config = scratch.config(&format!(
        "fleet:\n  tls: {}\n  agents:\n    - {{id: d1, address: \"{}\"}}\n{}",
        certs.tls_yaml("coord"),
        agent.addr,
        tools(image)
    ));
    let c = Coordinator::start(&config, &[("TEST_SECRET", SECRET)], &[]);
    let r = call(&c, "whoami");
    assert_eq!(stdout(&r).trim(), "65534", "{r}");
    assert_eq!(r["structured_content"]["agent"], "d1");
    assert_eq!(
        stdout(&call(&c, "caps")).trim(),
        "CapEff:\t0000000000000000"
    );
    let devs = stdout(&call(&c, "interfaces"));
    assert_eq!(
        devs.lines()
            .skip(2)
            .map(|l| l.split(':').next().unwrap().trim())
            .collect::<Vec<_>>(),
        ["lo"]
    );
    assert_eq!(call(&c, "write-root")["is_error"], true);
    assert_eq!(stdout(&call(&c, "scratch-tmp")), "hi\n1777\n");
    let r = call(&c, "sleeper");
    assert_eq!(r["structured_content"]["timed_out"], true, "{r}");
    assert_no_containers("whoami");
    assert_no_containers("sleeper");
    // The agent's image policy refuses images it does not allow.
    let r = call(&c, "missing-image");
    assert!(
        text(&r).contains("is not in this agent's allow_images"),
        "{r}"
    );
}

#[test]
fn container_tools_avoid_agents_without_docker_and_say_why() {
    let image = test_image();
    let scratch = Scratch::new();
    let certs = Certs::init(&scratch.path().join("certs"));
    certs.issue("coordinator", "coord");
    certs.issue("agent", "nd");
    let agent = Agent::start_with_env(
        scratch.path(),
        &certs,
        "nd",
        "",
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    agent
        .process
        .wait_for_log("no Docker", Duration::from_secs(10));
    let config = scratch.config(&format!(
        "fleet:\n  tls: {}\n  agents:\n    - {{id: nd, address: \"{}\"}}\n{}",
        certs.tls_yaml("coord"),
        agent.addr,
        tools(image)
    ));
    let c = Coordinator::start(&config, &[("TEST_SECRET", SECRET)], &[]);
    let listed = drive_http(&c.url(), json!([{"op": "list_tools"}])).remove(0);
    let names: Vec<_> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.is_empty(),
        "container tools listed without a Docker agent: {names:?}"
    );
    let r = call(&c, "whoami");
    assert_eq!(r["is_error"], true);
    assert!(text(&r).contains("nd [] no-docker (healthy)"), "{r}");
}

#[test]
fn the_reaper_removes_leftover_containers() {
    let image = test_image();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let owner = format!("embedded-{}", host.trim());
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A container as a crashed coordinator would leave it: our labels, deadline passed.
    rt.block_on(async {
        let docker = mcpfier_exec::bollard::Docker::connect_with_local_defaults()
            .unwrap()
            .negotiate_version()
            .await
            .unwrap();
        let labels = std::collections::HashMap::from([
            ("mcpfier.owner".to_owned(), owner.clone()),
            ("mcpfier.tool".to_owned(), "leftover".to_owned()),
            ("mcpfier.call_id".to_owned(), "crashed".to_owned()),
            ("mcpfier.deadline_ms".to_owned(), "1".to_owned()),
        ]);
        let body = mcpfier_exec::bollard::models::ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(vec!["/bin/sleep".into(), "600".into()]),
            labels: Some(labels),
            ..Default::default()
        };
        // Other tests' embedded coordinators reap leftovers too (same owner): one may remove
        // this one between create and start. Then make another; that one was reaped already.
        let mut started = false;
        for _ in 0..5 {
            let id = docker
                .create_container(None, body.clone())
                .await
                .unwrap()
                .id;
            if docker.start_container(&id, None).await.is_ok() {
                started = true;
                break;
            }
        }
        assert!(started, "the leftover container never started");
    });
    let (_s, c) = embedded();
    // The first container call connects to Docker, which starts the reaper.
    assert_eq!(stdout(&call(&c, "quick")), "quick\n");
    assert_no_containers("leftover");
}
