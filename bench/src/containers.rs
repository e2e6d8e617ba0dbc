//! The container part of the benchmark: a container tool call through `mcpfier serve` next to
//! the same image and command run directly through the Engine API (create, attach, start,
//! wait, remove — what `docker run --rm` does), sequentially, in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;

use crate::{call_tool, open_session, start_mcpfier};

const CALLS: usize = 30;

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn docker_run_rm(
    docker: &mcpfier_exec::bollard::Docker,
    image: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let body = mcpfier_exec::bollard::models::ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(vec!["/bin/echo".into(), "hello".into()]),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(mcpfier_exec::bollard::models::HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker.create_container(None, body).await?.id;
    let attach = mcpfier_exec::bollard::query_parameters::AttachContainerOptionsBuilder::new()
        .stream(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut out = docker.attach_container(&id, Some(attach)).await?.output;
    docker.start_container(&id, None).await?;
    let mut text = String::new();
    while let Some(Ok(chunk)) = out.next().await {
        text.push_str(&chunk.to_string());
    }
    let mut wait = docker.wait_container(&id, None);
    let _ = wait.next().await;
    let remove = mcpfier_exec::bollard::query_parameters::RemoveContainerOptionsBuilder::new()
        .force(true)
        .build();
    docker.remove_container(&id, Some(remove)).await?;
    if text != "hello\n" {
        bail!("docker run printed {text:?}");
    }
    Ok(started.elapsed())
}

pub fn run(dir: &Path) -> anyhow::Result<()> {
    let image = mcpfier_tests::test_image();
    let (server, addr) = start_mcpfier(
        dir,
        "containers",
        "",
        &format!(
            "  - {{name: cecho, command: [/bin/echo, hello], container: {{image: \"{image}\", pull: never}}}}\n"
        ),
    )?;
    let sid = open_session(&addr)?;
    let mut mcpfier = Vec::new();
    for n in 0..CALLS + 3 {
        let started = Instant::now();
        let (status, text) = call_tool(&addr, &sid, n, "cecho")?;
        let took = started.elapsed();
        if status != 200 || !text.contains("hello") || text.contains("\"isError\":true") {
            bail!("container call failed: {text}");
        }
        if n >= 3 {
            mcpfier.push(took);
        }
    }
    drop(server);
    let rt = tokio::runtime::Runtime::new()?;
    let direct = rt.block_on(async {
        let docker = mcpfier_exec::bollard::Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        let mut v = Vec::new();
        for n in 0..CALLS + 3 {
            let took = docker_run_rm(&docker, image)
                .await
                .context("docker run --rm through the API")?;
            if n >= 3 {
                v.push(took);
            }
        }
        anyhow::Ok(v)
    })?;
    let (m, d) = (p50(mcpfier), p50(direct));
    println!("\ncontainers ({CALLS} sequential calls each, after 3 warm-up calls)");
    println!(
        "  docker run --rm equivalent through the Engine API: p50 {:.1} ms",
        d.as_secs_f64() * 1000.0
    );
    println!(
        "  mcpfier container tool call (hardened, capped):    p50 {:.1} ms",
        m.as_secs_f64() * 1000.0
    );
    println!(
        "  ratio mcpfier / docker run --rm: {:.2}x   (<= 1.0x)",
        m.as_secs_f64() / d.as_secs_f64()
    );
    Ok(())
}
