//! The `/ui` dashboard in a real headless Chromium: it loads with no console errors, shows
//! the fleet by region, marks a SIGKILLed agent down within seconds without a reload, lists
//! the calls made here with failures marked; its data sits behind `fleet: read`; 1,000
//! agents render.

use std::time::Duration;

use mcpfier_tests::{
    Agent, Browser, Certs, Coordinator, Guarded, Scratch, drive_http, http_exchange, workspace,
};
use serde_json::json;

/// Where the test run keeps its screenshots (not committed).
fn artifact(name: &str) -> std::path::PathBuf {
    let dir = workspace().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("make target/test-artifacts");
    dir.join(name)
}

#[test]
fn the_dashboard_shows_the_fleet_live_and_marks_a_killed_agent_down() {
    let scratch = Scratch::new();
    let certs = Certs::init(&scratch.path().join("certs"));
    for (role, name) in [("coordinator", "coord"), ("agent", "eu1"), ("agent", "us1")] {
        certs.issue(role, name);
    }
    let eu1 = Agent::start(scratch.path(), &certs, "eu1", "labels: {region: eu-west}");
    let mut us1 = Agent::start(
        scratch.path(),
        &certs,
        "us1",
        "labels: {region: us-east, pool: build}",
    );
    let config = scratch.config(&format!(
        "fleet:\n  tls: {}\n  health_interval: 500ms\n  agents:\n    - {{id: eu1, address: \"{}\"}}\n    - {{id: us1, address: \"{}\"}}\ntools:\n  - name: say\n    command: [/bin/echo, \"{{{{word}}}}\"]\n    params: {{word: {{type: string}}}}\n  - {{name: fail, command: [/bin/false]}}\n",
        certs.tls_yaml("coord"),
        eu1.addr,
        us1.addr
    ));
    let c = Coordinator::start(&config, &[], &[]);
    let page = format!("http://{}/ui", c.addr);

    let mut browser = Browser::start(scratch.path());
    browser.goto(&page);
    assert!(
        browser.wait_until(
            Duration::from_secs(15),
            r#"document.querySelectorAll('tr[data-agent][data-state="healthy"]').length === 2"#
        ),
        "both agents never showed healthy: {}",
        browser.eval("document.body.innerText")
    );
    let origin = browser.eval("performance.timeOrigin");
    assert_eq!(
        browser.eval(r#"[...document.querySelectorAll('[data-region]')].map(r => r.dataset.region).join(",")"#),
        "eu-west,us-east"
    );
    let header = browser.eval("document.getElementById('coordinator').textContent");
    assert!(
        header
            .as_str()
            .unwrap()
            .starts_with(env!("CARGO_PKG_VERSION")),
        "{header}"
    );

    // Calls made now appear in the recent list, a failure marked as one.
    let r = drive_http(
        &c.url(),
        json!([{"op": "call", "name": "say", "arguments": {"word": "hello"}},
               {"op": "call", "name": "fail", "arguments": {}}]),
    );
    assert_eq!(r[0]["is_error"], false, "{}", r[0]);
    assert_eq!(r[1]["is_error"], true, "{}", r[1]);
    assert!(
        browser.wait_until(
            Duration::from_secs(10),
            r#"!!document.querySelector('#recent tr[data-tool="say"][data-outcome="ok"]')
               && !!document.querySelector('#recent tr.fail[data-tool="fail"][data-outcome="failed"]')
               && !!document.querySelector('#tools tr[data-tool="say"] svg rect')"#
        ),
        "the calls never showed: {}",
        browser.eval("document.body.innerText")
    );
    let recent = browser.eval("document.querySelector('#recent tbody').innerText");
    let recent = recent.as_str().unwrap();
    assert!(recent.contains("eu1") || recent.contains("us1"), "{recent}");

    // SIGKILL: marked down within a few seconds, its region in trouble, with no reload.
    us1.process.kill9();
    let killed = std::time::Instant::now();
    assert!(
        browser.wait_until(
            Duration::from_secs(10),
            r#"document.querySelector('tr[data-agent="us1"]').dataset.state === "unhealthy"
               && document.querySelector('[data-region="us-east"]').classList.contains("trouble")
               && !document.querySelector('[data-region="eu-west"]').classList.contains("trouble")"#
        ),
        "the killed agent was never marked down: {}",
        browser.eval("document.body.innerText")
    );
    eprintln!("marked down {:?} after the SIGKILL", killed.elapsed());
    assert_eq!(
        browser.eval("performance.timeOrigin"),
        origin,
        "the page reloaded"
    );
    let row = browser.eval(r#"document.querySelector('tr[data-agent="us1"]').innerText"#);
    assert!(row.as_str().unwrap().contains("unhealthy"), "{row}");

    browser.screenshot(&artifact("dashboard.png"));
    assert_eq!(browser.errors(), Vec::<String>::new());
    drop(eu1);
}

#[test]
fn the_dashboard_data_needs_fleet_read_and_the_page_asks_for_a_credential() {
    let scratch = Scratch::new();
    let g = Guarded::start(&scratch);
    let addr = &g.coordinator.addr;
    // The assets are open (they hold no data) and locked down; the data is not.
    let page = http_exchange(addr, "GET", "/ui", &[], "").unwrap();
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(
        http_exchange(addr, "GET", "/ui/state", &[], "")
            .unwrap()
            .status,
        401
    );
    let bearer = |key: &str| format!("Bearer {key}");
    let caller = bearer(&g.caller);
    let as_caller = http_exchange(addr, "GET", "/ui/state", &[("authorization", &caller)], "");
    assert_eq!(as_caller.unwrap().status, 403);
    // A page on another origin can't read it.
    let reader = bearer(&g.reader);
    let foreign = http_exchange(
        addr,
        "GET",
        "/ui/state",
        &[
            ("authorization", &reader),
            ("origin", "https://evil.example"),
        ],
        "",
    );
    assert_eq!(foreign.unwrap().status, 403);

    let mut browser = Browser::start(scratch.path());
    browser.goto(&format!("http://{addr}/ui"));
    assert!(
        browser.wait_until(
            Duration::from_secs(10),
            "!document.getElementById('login').hidden"
        ),
        "the page never asked for a credential"
    );
    browser.eval(&format!(
        "sessionStorage.setItem('mcpfier-token', {:?})",
        g.caller
    ));
    assert!(
        browser.wait_until(
            Duration::from_secs(10),
            "document.getElementById('banner').textContent.includes('may not read the fleet')"
        ),
        "no refusal shown for a caller without fleet: read"
    );
    browser.eval(&format!(
        "sessionStorage.setItem('mcpfier-token', {:?})",
        g.reader
    ));
    assert!(
        browser.wait_until(
            Duration::from_secs(10),
            "document.getElementById('agent-counts').textContent.includes('tools run on the coordinator itself')"
        ),
        "the reader never saw the embedded view: {}",
        browser.eval("document.body.innerText")
    );
    assert!(browser.eval("document.getElementById('banner').hidden") == true);
    // The 401s and the 403 of the page's own polls are the only errors it saw.
    let errors = browser.errors();
    assert!(
        errors
            .iter()
            .all(|e| e.contains("/ui/state") && (e.contains("401") || e.contains("403"))),
        "{errors:?}"
    );
}

#[test]
fn a_thousand_agents_render_on_one_page() {
    let scratch = Scratch::new();
    let certs = Certs::init(&scratch.path().join("certs"));
    certs.issue("coordinator", "coord");
    // Agents nobody runs: every one out of routing, with its last error.
    let agents: String = (0..1000)
        .map(|i| format!("    - {{id: agent-{i:04}, address: \"127.0.0.1:1\"}}\n"))
        .collect();
    let config = scratch.config(&format!(
        "fleet:\n  tls: {}\n  health_interval: 5s\n  agents:\n{agents}tools:\n  - {{name: hi, command: [/bin/echo, hi]}}\n",
        certs.tls_yaml("coord"),
    ));
    let c = Coordinator::start(&config, &[], &[]);
    let mut browser = Browser::start(scratch.path());
    browser.goto(&format!("http://{}/ui", c.addr));
    assert!(
        browser.wait_until(
            Duration::from_secs(20),
            "document.querySelectorAll('tr[data-agent]').length === 1000"
        ),
        "1,000 agents never rendered"
    );
    let renders = browser.eval("Number(document.body.dataset.renders)");
    assert!(
        browser.wait_until(
            Duration::from_secs(10),
            &format!("Number(document.body.dataset.renders) > {renders}")
        ),
        "the page stopped updating"
    );
    eprintln!(
        "1,000 agents: one render took {} ms",
        browser.eval("document.body.dataset.renderMs")
    );
    browser.screenshot(&artifact("dashboard-1000-agents.png"));
    assert_eq!(browser.errors(), Vec::<String>::new());
}
