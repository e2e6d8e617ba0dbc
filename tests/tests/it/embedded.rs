//! A coordinator that runs tools in-process (no fleet): each call in a cgroup of its own, so
//! nothing a call starts outlives the call, or the coordinator, however it dies.

use std::time::Duration;

use mcpfier_tests::{
    Coordinator, Scratch, assert_all_gone, drive_http, drive_http_raw, read_pids, result_stdout,
    wait_for,
};
use serde_json::{Value, json};

const TOOLS: &str = r#"
tools:
  - name: where
    description: Prints the cgroup it runs in
    command: [/bin/cat, /proc/self/cgroup]
  - name: daemon
    description: Starts a setsid daemon that would outlive the call
    command: ["/bin/sh", "-c", "setsid /bin/sh -c 'echo $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; exec sleep 300' sh \"$1\" & while [ ! -s \"$1\" ]; do :; done", "sh", "@DIR@/{{tag}}.daemon"]
    params: {tag: {type: string, pattern: "^[a-z]+$"}}
  - name: hang
    description: Starts a grandchild, records both pids, and waits
    command: ["/bin/sh", "-c", "echo $$ > \"$1.tmp\"; sleep 300 & echo $! >> \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; wait", "sh", "@DIR@/{{tag}}.pids"]
    params: {tag: {type: string, pattern: "^[a-z]+$"}}
    timeout: 60s
"#;

fn call(c: &Coordinator, name: &str, args: Value) -> Value {
    drive_http(
        &c.url(),
        json!([{"op": "call", "name": name, "arguments": args}]),
    )
    .remove(0)
}

#[test]
fn each_in_process_call_runs_in_a_cgroup_that_is_empty_when_it_ends() {
    let scratch = Scratch::new();
    let c = Coordinator::start(&scratch.config(TOOLS), &[], &[]);
    let mount = if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    };
    for _ in 0..2 {
        let r = call(&c, "where", json!({}));
        assert_eq!(r["is_error"], false, "{r}");
        let text = result_stdout(&r);
        let cgroup = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_else(|| panic!("no cgroup v2 line in {text:?}"))
            .to_owned();
        assert!(cgroup.contains("/mcpfier-embedded-"), "{cgroup}");
        // Empty once the call has ended (it may then be reused, or be gone).
        let procs = format!("{mount}{cgroup}/cgroup.procs");
        let empty = wait_for(Duration::from_secs(5), || {
            std::fs::read_to_string(&procs)
                .map_or(true, |p| p.trim().is_empty())
                .then_some(())
        });
        assert!(empty.is_some(), "{cgroup} still holds processes");
    }
}

#[test]
fn a_setsid_daemon_started_in_process_is_gone_when_the_call_ends() {
    let scratch = Scratch::new();
    let c = Coordinator::start(&scratch.config(TOOLS), &[], &[]);
    let r = call(&c, "daemon", json!({"tag": "d"}));
    assert_eq!(r["is_error"], false, "{r}");
    let pids = read_pids(&scratch.path().join("d.daemon"));
    assert_eq!(pids.len(), 1, "{r}");
    assert_all_gone(&pids, Duration::from_secs(2));
}

#[test]
fn a_coordinator_killed_with_sigkill_leaves_nothing_running() {
    let scratch = Scratch::new();
    let mut c = Coordinator::start(&scratch.config(TOOLS), &[], &["--log", "debug"]);
    c.process
        .wait_for_log("cgroup supervisor started", Duration::from_secs(10));
    let url = c.url();
    let driver = std::thread::spawn(move || {
        drive_http_raw(
            &url,
            json!([{"op": "call", "name": "hang", "arguments": {"tag": "k"}}]),
        )
    });
    let pidfile = scratch.path().join("k.pids");
    let pids = wait_for(Duration::from_secs(20), || {
        let p = read_pids(&pidfile);
        (p.len() == 2).then_some(p)
    })
    .expect("the command started");
    // SIGKILL: no drop guard runs; the coordinator's cgroup supervisor kills them.
    c.process.kill9();
    assert_all_gone(&pids, Duration::from_secs(5));
    let _ = driver.join();
}
