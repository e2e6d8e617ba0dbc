//! What checking a signed tool costs an agent per call: `Policy::admit` of the same signed
//! call with and without `tool_signers`, in this process, plus the first call of a definition
//! (Ed25519 verification, parsing and compiling the rules), which later calls skip.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mcpfier_agent::policy::Policy;
use mcpfier_common::tool::signed::{PublicKey, Verifier};
use mcpfier_exec::Execution;

/// Calls per timed figure (after a tenth as many to warm up).
pub const CALLS: u32 = 20_000;

/// The mean time of one call of `f`.
pub fn per_call(mut f: impl FnMut()) -> Duration {
    for _ in 0..CALLS / 10 {
        f();
    }
    let started = Instant::now();
    for _ in 0..CALLS {
        f();
    }
    started.elapsed() / CALLS
}

/// Measures and prints the figures; returns (signed minus plain admit, first verification).
pub fn run(dir: &Path) -> anyhow::Result<(Duration, Duration)> {
    let config = dir.join("signed.yaml");
    std::fs::write(
        &config,
        "tools:\n  - name: grep\n    command: [/bin/grep, -n, -C, \"{{context}}\", --, \"{{pattern}}\", \"/var/log/{{file}}\"]\n    params:\n      pattern: {type: string, max_length: 200}\n      file: {type: string, enum: [syslog, auth.log]}\n      context: {type: integer, minimum: 0, maximum: 10, default: 2}\n    env: {LANG: C.UTF-8, TOKEN: \"${env:BENCH_TOKEN}\"}\n    timeout: 30s\n",
    )?;
    let (key, public, _) = mcpfier_coordinator::catalog::signing::keygen(&dir.join("k"), true)?;
    mcpfier_coordinator::catalog::signing::sign(&key, &config)?;
    let env = [("BENCH_TOKEN".to_owned(), "secret".to_owned())].into();
    let catalog =
        mcpfier_coordinator::catalog::load(&config, &env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tool = catalog.tool("grep").context("the tool")?;
    let exec: Execution = tool
        .prepare(serde_json::json!({"pattern": "error [0-9]+", "file": "syslog"}).as_object())
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let key = PublicKey::load(&public)?;

    let plain = Policy::default();
    let signed = Policy {
        signers: Arc::new(Verifier::new(vec![key.clone()])),
        ..Policy::default()
    };
    signed
        .admit("grep", exec.clone())
        .context("the signed call is admitted")?;
    let t_plain = per_call(|| {
        plain.admit("grep", exec.clone()).expect("admitted");
    });
    let t_signed = per_call(|| {
        signed.admit("grep", exec.clone()).expect("admitted");
    });
    let s = exec.signed.as_ref().context("signed")?;
    let t_first = per_call(|| {
        Verifier::new(vec![key.clone()])
            .verify("grep", &s.definition, &s.signature)
            .expect("verifies");
    });
    let extra = t_signed.saturating_sub(t_plain);
    println!(
        "\nsigned tools, {CALLS} admissions each: policy without signers {:.1} us, with signers {:.1} us (+{:.1} us per call); first call of a definition (verify Ed25519, parse, compile) {:.1} us",
        t_plain.as_secs_f64() * 1e6,
        t_signed.as_secs_f64() * 1e6,
        extra.as_secs_f64() * 1e6,
        t_first.as_secs_f64() * 1e6,
    );
    Ok((extra, t_first))
}
