//! The `mcpfier` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Turns commands into MCP tools.
#[derive(Debug, Parser)]
#[command(name = "mcpfier", version, about, long_about = None)]
#[command(after_help = "Example:\n  mcpfier --config examples/mcpfier.yaml serve")]
pub struct Cli {
    /// The config file. Without it: $MCPFIER_CONFIG, ./mcpfier.yaml,
    /// ~/.config/mcpfier/mcpfier.yaml, /etc/mcpfier/mcpfier.yaml, in that order.
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log filter, e.g. `debug` or `info,mcpfier=debug` (logs go to stderr). Also $MCPFIER_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,

    /// Logs as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve MCP over Streamable HTTP at /mcp.
    #[command(
        after_help = "Example:\n  mcpfier --config examples/mcpfier.yaml serve --listen 127.0.0.1:8080"
    )]
    Serve {
        /// Address to listen on; overrides server.listen. Loopback only.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Serve MCP on stdin/stdout, for clients that start mcpfier themselves.
    #[command(after_help = "Example:\n  mcpfier --config /etc/mcpfier/mcpfier.yaml stdio")]
    Stdio,
    /// Check the config file and report every problem.
    #[command(
        after_help = "Example:\n  mcpfier --config mcpfier.yaml validate --strict\n\n\
Exit status: 0 when the config is good (warnings are printed but pass, unless --strict);\n\
1 when it has problems."
    )]
    Validate {
        /// Fail on warnings too (a program missing on this host, a tool with no `--`
        /// before an option-like parameter, no tools at all).
        #[arg(long)]
        strict: bool,
    },
    /// Write a commented starter config that passes `validate`.
    #[command(
        after_help = "Example:\n  mcpfier init                 # writes ./mcpfier.yaml\n  mcpfier init ~/.config/mcpfier/mcpfier.yaml"
    )]
    Init {
        /// Where to write it (default: ./mcpfier.yaml). An existing file is kept unless
        /// --force.
        #[arg(value_name = "FILE", default_value = "mcpfier.yaml")]
        file: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the JSON Schema of the config file.
    #[command(after_help = "Example:\n  mcpfier schema > mcpfier.schema.json")]
    Schema,
    /// List the configured tools.
    #[command(after_help = "Example:\n  mcpfier tools --json")]
    Tools {
        /// Print the MCP tool descriptions as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what a call would run, without running it. Secrets show as ***.
    #[command(
        name = "dry-run",
        after_help = "Example:\n  mcpfier dry-run grep-logs --arg pattern=error --arg file=syslog\n  mcpfier dry-run deploy-app --arg env=prod --as ci-bot\n\n\
Exit status: 0 when the call would run; 1 when --as names a principal that may not make it\n\
(the reason is printed); 2 when the arguments are invalid."
    )]
    DryRun(DryRunArgs),
    /// Run a tool once, streaming its output, and exit with its exit code.
    #[command(
        after_help = "Example:\n  mcpfier call disk-usage --arg path=/var/log\n\n\
Exit status: the command's own; 124 on timeout; 128+N when killed by signal N;\n\
2 when the arguments are invalid."
    )]
    Call(CallArgs),
    /// Print the JSON that registers mcpfier with an MCP client.
    #[command(
        after_help = "Example:\n  mcpfier --config ~/mcpfier.yaml setup --client claude-desktop"
    )]
    Setup {
        /// The client to configure.
        #[arg(long, value_enum)]
        client: Client,
    },
    /// Make the fleet's mutual-TLS certificates.
    #[command(
        after_help = "Example:\n  mcpfier certs init --dir certs\n  mcpfier certs issue --dir certs --role coordinator --name coordinator\n  mcpfier certs issue --dir certs --role agent --name agent-eu-1 --san 10.0.0.5"
    )]
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Check an audit file (server.audit).
    #[command(
        after_help = "Example:\n  mcpfier audit verify /var/log/mcpfier/audit.jsonl\n\nExit status: 0 when every line follows the one before it; 1 otherwise, naming the first\nline that was changed, removed or reordered."
    )]
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Make API keys for server.auth.
    #[command(
        after_help = "Example:\n  mcpfier keys new --id ci-bot --roles ops\n\nThe key is printed once: give it to the caller, who sends it as `Authorization: Bearer <key>`.\nThe config keeps only its hash."
    )]
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Sign the config's tools, for agents that run only signed tools (policy.tool_signers).
    #[command(
        after_help = "Example:\n  mcpfier catalog keygen --out /secure/mcpfier-signing\n  mcpfier catalog sign --key /secure/mcpfier-signing.key mcpfier.yaml\n\nThen give agents the public key: policy.tool_signers: [/etc/mcpfier/mcpfier-signing.pub]"
    )]
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// A running coordinator's routing view: every agent's state as routing sees it (health
    /// checks, refusals, fencing), for static and etcd fleets alike.
    #[command(after_help = "Example:\n  mcpfier --config mcpfier.yaml status\n  \
MCPFIER_TOKEN=$OPS_KEY mcpfier status --url https://mcp.example.com --ca ca.pem --output json\n\n\
The credential, when the coordinator has server.auth, comes from $MCPFIER_TOKEN: an API key\n\
or token whose roles have `fleet: read`.")]
    Status {
        /// The coordinator's base URL. Without it: the config's server.listen.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// CA certificates (PEM) for an https URL. Without it: the system's roots.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// text (a table) or json (the coordinator's /fleet answer).
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// List the agents registered in etcd: what etcd holds, not what routing sees. An agent
    /// killed a moment ago stays here until its lease runs out; `mcpfier status` shows it
    /// out of routing at once.
    #[command(after_help = "Example:\n  mcpfier --config mcpfier.yaml agents --json")]
    Agents {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  mcpfier completion bash > /etc/bash_completion.d/mcpfier")]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// A tool and its arguments, for `call` and `dry-run`.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The tool's name.
    pub tool: String,
    /// An argument as NAME=VALUE, read as the parameter's type. Repeat a name to give an
    /// array parameter several items.
    #[arg(long = "arg", short = 'a', value_name = "NAME=VALUE")]
    pub args: Vec<String>,
    /// All arguments as one JSON object, e.g. '{"paths": ["a", "b"]}'.
    #[arg(long, value_name = "JSON", conflicts_with = "args")]
    pub json: Option<String>,
}

/// `dry-run`'s arguments: a call, and optionally who makes it.
#[derive(Debug, clap::Args)]
pub struct DryRunArgs {
    #[command(flatten)]
    pub call: CallArgs,
    /// Check the call as this principal (an id under server.auth.api_keys): whether its roles
    /// let it call the tool, and why.
    #[arg(long = "as", value_name = "PRINCIPAL")]
    pub principal: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Client {
    ClaudeDesktop,
    ClaudeCode,
    Cursor,
    Vscode,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of an audit file, with its rotated files.
    #[command(
        after_help = "`mcpfier audit verify audit.jsonl` checks audit.jsonl.<seq> (the rotated files, oldest first) and then audit.jsonl.\nSeveral files are checked in the order given, as one chain.\n`mcpfier --config mcpfier.yaml audit verify --etcd audit.jsonl` also checks that the files reach the head etcd holds.\nExit status: 0 when the chain is intact, 1 naming the first line changed, removed or reordered."
    )]
    Verify {
        /// The live audit file (its rotated files are found beside it), or the files of one
        /// chain, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The oldest file may continue a chain whose start was removed on purpose (old
        /// rotated files deleted).
        #[arg(long)]
        partial: bool,
        /// Also check the chain against the head the coordinator keeps in etcd (from the
        /// config's fleet.etcd and server.audit), so cut newest lines are caught too.
        #[arg(long)]
        etcd: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random API key, and the server.auth.api_keys line that accepts it.
    New {
        /// The principal the key authenticates (shown in logs and audit), e.g. ci-bot.
        #[arg(long)]
        id: String,
        /// Its roles (names under `roles`), comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA (ca.pem, ca.key) in DIR.
    #[command(after_help = "Example:\n  mcpfier certs init --dir /etc/mcpfier/certs")]
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate (NAME.pem, NAME.key) signed by the CA in DIR, with the URI SAN
    /// spiffe://mcpfier/ROLE/NAME.
    #[command(
        after_help = "Example:\n  mcpfier certs issue --dir certs --role agent --name agent-eu-1 --san 10.0.0.5 --san agent-eu-1.internal\n  mcpfier certs issue --dir certs --role agent --name vault-1 --label pool=secrets --label region=eu-west"
    )]
    Issue {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long, value_enum)]
        role: CertRole,
        /// The coordinator's name, or the agent's id.
        #[arg(long)]
        name: String,
        /// Extra host names or IP addresses to put in the certificate.
        #[arg(long = "san", value_name = "HOST_OR_IP")]
        sans: Vec<String>,
        /// A label the certificate vouches for (agents; repeatable). A coordinator with
        /// `fleet.certified_labels` routes on that key only when the certificate says so.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Make an Ed25519 signing key: PATH.key (keep it off the coordinator) and PATH.pub (for
    /// the agents).
    #[command(after_help = "Example:\n  mcpfier catalog keygen --out /secure/mcpfier-signing")]
    Keygen {
        /// Where to write the key pair, without the extension.
        #[arg(long, value_name = "PATH", default_value = "mcpfier-signing")]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Sign every tool of a config; writes the signatures beside it as CONFIG.sig, which the
    /// coordinator loads and sends with each call.
    #[command(
        after_help = "Example:\n  mcpfier catalog sign --key /secure/mcpfier-signing.key /etc/mcpfier/mcpfier.yaml"
    )]
    Sign {
        /// The private key (`mcpfier catalog keygen`).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// The config to sign; default: the one `--config` or discovery finds.
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CertRole {
    Coordinator,
    Agent,
}

/// `KEY=VALUE` for `--label`.
fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}
