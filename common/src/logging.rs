//! Log set-up shared by both binaries: `tracing` to stderr (stdout may carry MCP), plain text
//! or JSON lines, filtered by `--log`, else `$MCPFIER_LOG`, else a default.

/// Installs the global subscriber. A filter that does not parse is an error naming it.
pub fn init(
    flag: Option<&str>,
    from_env: Option<&str>,
    default: &str,
    json: bool,
) -> Result<(), String> {
    let text = flag.or(from_env).unwrap_or(default);
    let filter = tracing_subscriber::EnvFilter::try_new(text).map_err(|e| {
        format!("log filter `{text}` is not valid ({e}); write e.g. `info` or `info,mcpfier_agent=debug`")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}
