//! The `mcpfier` binary: the coordinator's command line.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser};
use mcpfier_common::tool::paths;
use mcpfier_coordinator::catalog::{Catalog, Tool, signing};
use mcpfier_coordinator::config::{self, ParamType};
use mcpfier_coordinator::dispatch::Dispatcher;
use mcpfier_coordinator::{http, mcp};
use mcpfier_exec::{Event, Stream};
use rmcp::ServiceExt;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod cli;
use cli::{
    AuditCommand, CallArgs, CatalogCommand, CertRole, CertsCommand, Cli, Client, Command,
    KeysCommand,
};

fn main() -> ExitCode {
    // The cgroup supervisor of in-process calls (see `mcpfier_exec::lifeline`) runs this
    // binary too.
    if let Some(supervised) = mcpfier_exec::lifeline::supervisor_requested() {
        return mcpfier_exec::lifeline::run_supervisor(supervised);
    }
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    if let Err(e) = mcpfier_common::logging::init(
        cli.log.as_deref(),
        env.get("MCPFIER_LOG").map(String::as_str),
        "info,rmcp=warn",
        cli.log_json,
    ) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, env)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Stops the long-running tasks and waits for them (a few seconds at most).
async fn stop(tasks: TaskTracker, shutdown: CancellationToken) {
    shutdown.cancel();
    tasks.close();
    if tokio::time::timeout(std::time::Duration::from_secs(10), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(left = tasks.len(), "tasks still running 10s after shutdown");
    }
}

/// Starts exporting traces when the config has a `telemetry` section.
fn start_telemetry(
    catalog: &Catalog,
) -> anyhow::Result<Option<mcpfier_common::telemetry::Telemetry>> {
    let Some(t) = &catalog.telemetry else {
        return Ok(None);
    };
    let started =
        mcpfier_common::telemetry::Telemetry::start(t, "mcpfier").map_err(anyhow::Error::msg)?;
    tracing::info!(endpoint = %t.otlp_endpoint, "exporting traces over OTLP");
    Ok(Some(started))
}

fn load(cli: &Cli, env: &HashMap<String, String>) -> anyhow::Result<(PathBuf, Arc<Catalog>)> {
    let path = config::find(cli.config.as_deref(), env)?;
    let catalog = mcpfier_coordinator::catalog::load(&path, env)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
    Ok((path, Arc::new(catalog)))
}

async fn run(cli: Cli, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&config::json_schema())?);
        }
        Command::Status { url, ca, output } => {
            let base = match url {
                Some(url) => url.clone(),
                None => {
                    let (_, catalog) = load(&cli, &env).context(
                        "status reads the coordinator's address from the config; without one, give --url",
                    )?;
                    mcpfier_coordinator::status::default_url(&catalog.server)
                }
            };
            let ca = ca
                .clone()
                .unwrap_or_else(|| PathBuf::from(http::client::SYSTEM_ROOTS));
            let token = env
                .get(mcpfier_coordinator::status::TOKEN_ENV)
                .filter(|t| !t.is_empty());
            let view = mcpfier_coordinator::status::fetch(&base, &ca, token.map(String::as_str))
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            match output {
                cli::Output::Json => println!("{}", serde_json::to_string_pretty(&view)?),
                cli::Output::Text => print!(
                    "{}",
                    mcpfier_coordinator::status::render(
                        &view,
                        mcpfier_common::membership::now_ms()
                    )
                ),
            }
        }
        Command::Agents { json } => {
            let (_, catalog) = load(&cli, &env)?;
            let Some(etcd) = catalog.fleet.as_ref().and_then(|f| f.etcd.as_ref()) else {
                bail!(
                    "the config has no fleet.etcd section; `mcpfier agents` lists agents registered in etcd"
                );
            };
            let client =
                mcpfier_common::membership::Etcd::connect_with(&etcd.endpoints, &etcd.access)
                    .await?;
            let (agents, _) = client.list(&etcd.prefix).await?;
            let now = mcpfier_common::membership::now_ms();
            if *json {
                let list: Vec<_> = agents
                    .iter()
                    .map(|(id, r)| {
                        json!({
                            "id": id, "address": r.address, "labels": r.labels,
                            "health": if r.draining { "draining" } else { "registered" },
                            "running": r.running, "capacity": r.capacity,
                            "version": r.version, "started_at_ms": r.started_at,
                            "last_seen_ms": r.updated_at,
                            "last_seen_ago_ms": now.saturating_sub(r.updated_at),
                            "capabilities": r.capabilities, "allow_tools": r.allow_tools,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<20} {:<22} {:<10} {:>7}  {:<9} LABELS",
                    "ID", "ADDRESS", "RECORD", "RUNNING", "LAST SEEN"
                );
                for (id, r) in &agents {
                    let labels: Vec<_> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let ago = now.saturating_sub(r.updated_at) as f64 / 1000.0;
                    println!(
                        "{:<20} {:<22} {:<10} {:>7}  {:<9} {}",
                        id,
                        r.address,
                        if r.draining { "draining" } else { "registered" },
                        format!("{}/{}", r.running, r.capacity),
                        format!("{ago:.1}s ago"),
                        labels.join(",")
                    );
                }
                if agents.is_empty() {
                    eprintln!("no agents registered under {}", etcd.prefix);
                } else {
                    eprintln!("(etcd registrations; `mcpfier status` shows what routing sees)");
                }
            }
        }
        Command::Certs { command } => match command {
            CertsCommand::Init { dir, days, force } => {
                let (cert, key) = mcpfier_coordinator::certs::init(dir, *days, *force)?;
                println!(
                    "CA certificate: {}\nCA key:         {} (keep it off the agents)",
                    cert.display(),
                    key.display()
                );
            }
            CertsCommand::Issue {
                dir,
                role,
                name,
                sans,
                labels,
                days,
                force,
            } => {
                let role = match role {
                    CertRole::Coordinator => mcpfier_common::tls::Role::Coordinator,
                    CertRole::Agent => mcpfier_common::tls::Role::Agent,
                };
                let (cert, key) =
                    mcpfier_coordinator::certs::issue(&mcpfier_coordinator::certs::Request {
                        dir,
                        role,
                        name,
                        sans,
                        labels,
                        days: *days,
                        force: *force,
                    })?;
                println!(
                    "{}: {}\nkey: {}",
                    mcpfier_common::tls::Identity::new(role, name.clone()).uri(),
                    cert.display(),
                    key.display()
                );
            }
        },
        Command::Audit {
            command:
                AuditCommand::Verify {
                    files,
                    partial,
                    etcd,
                },
        } => {
            let expect = if *etcd {
                match etcd_head(&cli, &env).await {
                    Ok(head) => head,
                    Err(e) => {
                        eprintln!("{e:#}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
            } else {
                None
            };
            let files = match files.as_slice() {
                [live] => mcpfier_coordinator::audit::chain_files(live)
                    .with_context(|| format!("list the audit files of {}", live.display()))?,
                several => several.to_vec(),
            };
            let shown = files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            match mcpfier_coordinator::audit::verify(&files, *partial, expect.as_ref()) {
                Ok(v) => {
                    println!(
                        "{shown}: intact, {} lines (seq {} to {}, head {})",
                        v.lines, v.first_seq, v.head.seq, v.head.hash
                    );
                    if let Some(h) = &expect {
                        println!("the chain reaches the head etcd holds, seq {}", h.seq);
                    }
                }
                Err(e) => {
                    eprintln!("{e:#}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::Keys {
            command: KeysCommand::New { id, roles },
        } => {
            if !mcpfier_coordinator::access::valid_principal_id(id) {
                bail!("`{id}` is not a valid id: use 1-64 characters of a-z A-Z 0-9 _ . - @");
            }
            let key = mcpfier_coordinator::access::new_key()?;
            let line = json!({
                "id": id,
                "hash": mcpfier_coordinator::access::key_hash(&key),
                "roles": roles,
            });
            // The key goes to stdout once; the config line to stderr, so `> keyfile` keeps
            // only the key.
            println!("{key}");
            eprintln!(
                "API key for `{id}` printed above; it is not stored anywhere. Add under server.auth.api_keys:\n  - {line}"
            );
        }
        Command::Catalog { command } => match command {
            CatalogCommand::Keygen { out, force } => {
                let (private, public, id) = signing::keygen(out, *force)?;
                println!(
                    "signing key {id}\nprivate: {} (keep it off the coordinator and the agents)\npublic:  {} (list it in the agents' policy.tool_signers)",
                    private.display(),
                    public.display()
                );
            }
            CatalogCommand::Sign { key, config: file } => {
                let path = match file {
                    Some(p) => p.clone(),
                    None => config::find(cli.config.as_deref(), &env)?,
                };
                let (sig, tools, id) = signing::sign(key, &path)?;
                println!(
                    "signed {tools} tools of {} with key {id}: {}",
                    path.display(),
                    sig.display()
                );
            }
        },
        Command::Completion { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "mcpfier",
                &mut std::io::stdout(),
            );
        }
        Command::Init { file, force } => {
            if file.exists() && !force {
                bail!(
                    "{} already exists; pass --force to replace it, or name another file",
                    file.display()
                );
            }
            std::fs::write(file, include_str!("init/starter.yaml"))
                .with_context(|| format!("write {}", file.display()))?;
            println!(
                "wrote {f}: three read-only tools to start from.\nnext: mcpfier --config {f} validate, then: mcpfier --config {f} serve",
                f = file.display()
            );
        }
        Command::Validate { strict } => {
            let path = config::find(cli.config.as_deref(), &env)?;
            match mcpfier_coordinator::catalog::load(&path, &env) {
                Ok(catalog) => {
                    for w in &catalog.warnings {
                        let line = w.line.map(|l| format!(":{l}")).unwrap_or_default();
                        eprintln!(
                            "warning: {}{line}: {}: {}",
                            path.display(),
                            w.path,
                            w.message
                        );
                    }
                    if *strict && !catalog.warnings.is_empty() {
                        eprintln!(
                            "{}: {} warning(s), and --strict fails on warnings",
                            path.display(),
                            catalog.warnings.len()
                        );
                        return Ok(ExitCode::FAILURE);
                    }
                    println!("{}: ok, {} tools", path.display(), catalog.tools.len())
                }
                Err(e) => {
                    eprint!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::Tools { json } => {
            let (_, catalog) = load(&cli, &env)?;
            if *json {
                let tools: Vec<_> = catalog.tools.values().map(|t| mcp::describe(t)).collect();
                println!("{}", serde_json::to_string_pretty(&tools)?);
            } else {
                for tool in catalog.tools.values() {
                    print_tool(tool);
                }
            }
        }
        Command::Stdio => {
            let (path, catalog) = load(&cli, &env)?;
            tracing::info!(config = %path.display(), tools = catalog.tools.len(), "serving MCP on stdio");
            let telemetry = start_telemetry(&catalog)?;
            let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
            let dispatcher = Dispatcher::start(catalog, &tasks, shutdown.clone()).await?;
            let served = async {
                let service = mcp::Server::new(dispatcher, &tasks, shutdown.clone())
                    .serve(rmcp::transport::stdio())
                    .await
                    .context("start MCP on stdio")?;
                tokio::select! {
                    r = service.waiting() => { r.context("serve MCP on stdio")?; }
                    () = shutdown_signal() => {}
                }
                anyhow::Ok(())
            }
            .await;
            stop(tasks, shutdown).await;
            if let Some(t) = telemetry {
                t.shutdown().await;
            }
            served?;
        }
        Command::Serve { listen } => {
            let (path, catalog) = load(&cli, &env)?;
            let listen = listen.unwrap_or(catalog.listen);
            http::check_listen(listen, &catalog)?;
            tracing::info!(config = %path.display(), "starting");
            let telemetry = start_telemetry(&catalog)?;
            let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
            let dispatcher = Dispatcher::start(catalog, &tasks, shutdown.clone()).await?;
            let served = {
                let serving = http::serve(dispatcher, listen, &tasks, shutdown.clone());
                tokio::pin!(serving);
                tokio::select! {
                    r = &mut serving => r,
                    () = shutdown_signal() => {
                        tracing::info!("shutting down");
                        shutdown.cancel();
                        serving.await
                    }
                }
            };
            stop(tasks, shutdown).await;
            if let Some(t) = telemetry {
                t.shutdown().await;
            }
            served?;
        }
        Command::DryRun(cli::DryRunArgs {
            call: args,
            principal,
        }) => {
            let (_, catalog) = load(&cli, &env)?;
            let mut authorization = None;
            let mut acting = None;
            if let Some(id) = principal {
                let access = &catalog.access;
                if !access.enabled() {
                    bail!(
                        "--as needs server.auth in the config: without it every caller may call every tool"
                    );
                }
                let Some(who) = access.principal(id) else {
                    bail!(
                        "no principal `{id}` under server.auth.api_keys (there are: {})",
                        access.principal_ids().join(", ")
                    );
                };
                if catalog.tool(&args.tool).is_some() {
                    let (allowed, why) = access.explain(&who, &args.tool);
                    if !allowed {
                        eprintln!(
                            "`{id}` may not call `{}`: {why}; nothing would run",
                            args.tool
                        );
                        return Ok(ExitCode::FAILURE);
                    }
                    let quota = access.quota(&who);
                    authorization = Some(json!({
                        "principal": id,
                        "roles": who.roles,
                        "allowed": true,
                        "why": why,
                        "limits": {
                            "calls_per_minute": quota.calls_per_minute,
                            "concurrent": quota.concurrent,
                        },
                    }));
                }
                acting = Some(who);
            }
            let (tool, arguments) = tool_and_args(&catalog, args)?;
            let mut exec = match tool.prepare(Some(&arguments)) {
                Ok(e) => e,
                Err(errors) => return Ok(invalid(&errors)),
            };
            // Paths resolve where the call runs: here, or on the agent that takes it.
            let paths = if exec.paths.is_empty() {
                None
            } else if catalog.fleet.is_some() {
                for element in &mut exec.argv {
                    for p in &exec.paths {
                        let shown = format!("<{} resolved on the agent>", p.param);
                        *element = element.replace(&paths::marker(&p.param), &shown);
                    }
                }
                Some(json!(
                    "resolved inside `within` on the agent that runs the call"
                ))
            } else {
                if let Err(e) = paths::substitute(&mut exec.argv, &exec.paths) {
                    eprintln!("{e}; nothing would run");
                    return Ok(ExitCode::FAILURE);
                }
                Some(json!("resolved on this host"))
            };
            if let Err(why) = catalog
                .access
                .check_narrowed(acting.as_ref(), tool, Some(&arguments))
            {
                eprintln!(
                    "these arguments are not allowed for its roles: {why}; nothing would run"
                );
                return Ok(ExitCode::FAILURE);
            }
            let env_shown: Map<String, Value> = exec
                .env
                .iter()
                .map(|v| {
                    (
                        v.name.clone(),
                        json!(if v.secret { "***" } else { v.value.as_str() }),
                    )
                })
                .collect();
            let plan = json!({
                "tool": tool.name,
                "arguments": arguments,
                "argv": exec.argv,
                "env": env_shown,
                "default_path": mcpfier_exec::DEFAULT_PATH,
                "workdir": exec.workdir,
                "timeout": humantime::format_duration(exec.timeout).to_string(),
                "max_output": mcpfier_common::ByteSize(exec.max_output).to_string(),
                "ok_exit_codes": tool.ok_exit_codes,
                "concurrency": tool.concurrency,
            });
            let mut plan = plan;
            if let Some(p) = paths {
                plan["paths"] = p;
            }
            if let Some(a) = authorization {
                plan["authorization"] = a;
            }
            println!("{}", serde_json::to_string_pretty(&plan)?);
        }
        Command::Call(args) => {
            let (_, catalog) = load(&cli, &env)?;
            let (tool, arguments) = tool_and_args(&catalog, args)?;
            let exec = match tool.prepare(Some(&arguments)) {
                Ok(e) => e,
                Err(errors) => return Ok(invalid(&errors)),
            };
            let tool = tool.clone();
            let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
            let dispatcher = Dispatcher::start(catalog, &tasks, shutdown.clone()).await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
            let printer = async move {
                while let Some(event) = rx.recv().await {
                    let Event::Output(chunk) = event else {
                        continue;
                    };
                    let _ = match chunk.stream {
                        Stream::Stdout => std::io::stdout().lock().write_all(&chunk.data),
                        Stream::Stderr => std::io::stderr().lock().write_all(&chunk.data),
                    };
                }
                let _ = std::io::stdout().flush();
            };
            let cancel = CancellationToken::new();
            let no_trace = mcpfier_common::telemetry::Context::new();
            // The printer ends when the run drops its sender.
            let work = async {
                tokio::join!(
                    dispatcher.run(&tool, &exec, "cli", Some(tx), cancel.clone(), &no_trace),
                    printer
                )
                .0
            };
            tokio::pin!(work);
            let result = tokio::select! {
                r = &mut work => r,
                () = shutdown_signal() => {
                    cancel.cancel();
                    work.await
                }
            };
            stop(tasks, shutdown).await;
            let ran = result?;
            let outcome = ran.outcome;
            if outcome.truncated() {
                eprintln!(
                    "mcpfier: output was cut at {} per stream (max_output)",
                    mcpfier_common::ByteSize(exec.max_output)
                );
            }
            if outcome.timed_out {
                eprintln!(
                    "mcpfier: timed out after {}",
                    humantime::format_duration(exec.timeout)
                );
                return Ok(ExitCode::from(124));
            }
            return Ok(match (outcome.exit_code, outcome.signal) {
                (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
                (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
                _ => ExitCode::FAILURE,
            });
        }
        Command::Setup { client } => {
            let path = config::find(cli.config.as_deref(), &env)?;
            mcpfier_coordinator::catalog::load(&path, &env)
                .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
            setup(*client, &path)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn invalid(errors: &[mcpfier_common::tool::params::ArgError]) -> ExitCode {
    eprintln!("invalid arguments, nothing was run:");
    for e in errors {
        eprintln!("  {e}");
    }
    ExitCode::from(2)
}

fn print_tool(tool: &Tool) {
    let title = tool
        .title
        .as_deref()
        .or(tool.description.as_deref())
        .unwrap_or("");
    println!("{}  {title}", tool.name);
    for p in &tool.params {
        let kind = format!("{:?}", p.spec.kind).to_lowercase();
        let need = if p.required() { "required" } else { "optional" };
        let desc = p.spec.description.as_deref().unwrap_or("");
        println!("    {} ({kind}, {need}) {desc}", p.name);
    }
}

/// The head of the config's audit chain as etcd holds it (`None`: etcd has none yet).
async fn etcd_head(
    cli: &Cli,
    env: &HashMap<String, String>,
) -> anyhow::Result<Option<mcpfier_coordinator::audit::Head>> {
    let (_, catalog) = load(cli, env)?;
    let chain = &catalog
        .audit
        .as_ref()
        .context("--etcd needs server.audit in the config")?
        .chain;
    let etcd = catalog
        .fleet
        .as_ref()
        .and_then(|f| f.etcd.as_ref())
        .context("--etcd needs fleet.etcd in the config")?;
    let client =
        mcpfier_common::membership::Etcd::connect_with(&etcd.endpoints, &etcd.access).await?;
    let Some(text) = client.audit_head(&etcd.prefix, chain).await? else {
        bail!(
            "etcd holds no head for the audit chain `{chain}`: the coordinator has not published one"
        );
    };
    mcpfier_coordinator::audit::Head::from_json(&text)
        .with_context(|| format!("the head etcd holds for `{chain}`"))
        .map(Some)
}

fn tool_and_args<'a>(
    catalog: &'a Catalog,
    args: &CallArgs,
) -> anyhow::Result<(&'a Arc<Tool>, Map<String, Value>)> {
    let Some(tool) = catalog.tool(&args.tool) else {
        let known: Vec<_> = catalog.tools.keys().map(String::as_str).collect();
        if let Some(near) = mcpfier_common::suggest::nearest(&args.tool, known.iter().copied()) {
            bail!(
                "no tool named `{}`: did you mean `{near}`? (tools: {})",
                args.tool,
                known.join(", ")
            );
        }
        bail!(
            "no tool named `{}`; tools are: {}",
            args.tool,
            known.join(", ")
        );
    };
    if let Some(text) = &args.json {
        let value: Value = serde_json::from_str(text).context("read --json")?;
        let Value::Object(map) = value else {
            bail!("--json must be a JSON object, e.g. '{{\"name\": \"value\"}}'");
        };
        return Ok((tool, map));
    }
    let mut map = Map::new();
    for raw in &args.args {
        let Some((name, text)) = raw.split_once('=') else {
            bail!("--arg `{raw}` is not NAME=VALUE");
        };
        let kind = tool
            .params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.spec.kind);
        let value = match kind {
            Some(ParamType::Integer) | Some(ParamType::Number) | Some(ParamType::Boolean) => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
            }
            _ => Value::String(text.to_owned()),
        };
        if kind == Some(ParamType::Array) {
            match map
                .entry(name.to_owned())
                .or_insert_with(|| Value::Array(vec![]))
            {
                Value::Array(items) => items.push(value),
                _ => unreachable!("array parameters collect arrays"),
            }
        } else if map.insert(name.to_owned(), value).is_some() {
            bail!("--arg {name} is given twice, but `{name}` is not an array parameter");
        }
    }
    Ok((tool, map))
}

fn setup(client: Client, config: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("find mcpfier's own path")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let config = config
        .canonicalize()
        .with_context(|| format!("find the absolute path of {}", config.display()))?;
    let args = json!(["--config", config, "stdio"]);
    let (snippet, hint) = match client {
        Client::ClaudeDesktop => (
            json!({"mcpServers": {"mcpfier": {"command": exe, "args": args}}}),
            "Merge this into claude_desktop_config.json (Linux: ~/.config/Claude/, macOS: ~/Library/Application Support/Claude/), then restart Claude Desktop.",
        ),
        Client::ClaudeCode => (
            json!({"type": "stdio", "command": exe, "args": args}),
            "Register it with: claude mcp add-json mcpfier '<the JSON below>'",
        ),
        Client::Cursor => (
            json!({"mcpServers": {"mcpfier": {"command": exe, "args": args}}}),
            "Merge this into ~/.cursor/mcp.json (or .cursor/mcp.json in a project).",
        ),
        Client::Vscode => (
            json!({"servers": {"mcpfier": {"type": "stdio", "command": exe, "args": args}}}),
            "Merge this into .vscode/mcp.json in your workspace.",
        ),
    };
    eprintln!("{hint}");
    println!("{}", serde_json::to_string_pretty(&snippet)?);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
