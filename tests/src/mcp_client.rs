//! The official MCP Python SDK as the client: `tests/py/mcp_driver.py` runs a list of
//! operations over stdio or Streamable HTTP and prints one JSON result per operation.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::build::{mcpfier, python, workspace};
use crate::process::run_with_deadline;

fn driver_results(code: i32, out: &str, err: &str) -> Vec<Value> {
    assert_eq!(
        code, 0,
        "the MCP driver failed:\nstdout: {out}\nstderr: {err}"
    );
    match serde_json::from_str(out.trim()) {
        Ok(Value::Array(items)) => items,
        other => panic!("driver printed no result array: {other:?}\nstdout: {out}\nstderr: {err}"),
    }
}

/// What a stdio session printed to stderr (mcpfier's logs), with the results.
pub struct StdioRun {
    /// One result per operation, in order.
    pub results: Vec<Value>,
    /// What mcpfier wrote to stderr (its logs).
    pub stderr: String,
}

/// Starts `mcpfier --config CONFIG stdio` from the Python SDK's stdio client, runs `ops`
/// (see `tests/py/mcp_driver.py`) and returns one result per op. `env` is what mcpfier's
/// own environment gets on top of the SDK's default one.
pub fn drive_stdio(
    config: &Path,
    env: &[(&str, &str)],
    extra_args: &[&str],
    ops: Value,
) -> StdioRun {
    let env: serde_json::Map<String, Value> = env
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/py/mcp_driver.py"))
        .args(["stdio", "--"])
        .arg(mcpfier())
        .arg("--config")
        .arg(config)
        .args(extra_args)
        .arg("stdio")
        .env("MCP_DRIVER_SERVER_ENV", Value::Object(env).to_string());
    let (code, out, err) = run_with_deadline(cmd, &ops.to_string(), Duration::from_secs(90))
        .expect("run the MCP driver");
    StdioRun {
        results: driver_results(code, &out, &err),
        stderr: err,
    }
}

/// Runs `ops` against a Streamable HTTP endpoint with the Python SDK.
pub fn drive_http(url: &str, ops: Value) -> Vec<Value> {
    let (code, out, err) = drive_http_raw(url, ops);
    driver_results(code, &out, &err)
}

/// Like [`drive_http`], returning the driver's exit code, stdout and stderr as they are (for
/// tests where the server goes away mid-call).
pub fn drive_http_raw(url: &str, ops: Value) -> (i32, String, String) {
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/py/mcp_driver.py"))
        .args(["http", url]);
    run_with_deadline(cmd, &ops.to_string(), Duration::from_secs(90)).expect("run the MCP driver")
}

/// Like [`drive_http_raw`], as a client holding `bearer` (sent as `Authorization: Bearer`)
/// and trusting only the CA in `ca` for HTTPS.
pub fn drive_http_as(
    url: &str,
    bearer: Option<&str>,
    ca: Option<&Path>,
    ops: Value,
) -> (i32, String, String) {
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/py/mcp_driver.py"))
        .args(["http", url]);
    if let Some(b) = bearer {
        cmd.env("MCP_DRIVER_BEARER", b);
    }
    if let Some(ca) = ca {
        cmd.env("MCP_DRIVER_CA", ca);
    }
    run_with_deadline(cmd, &ops.to_string(), Duration::from_secs(90)).expect("run the MCP driver")
}

/// The results of [`drive_http_as`], which must have succeeded.
pub fn drive_http_ok_as(
    url: &str,
    bearer: Option<&str>,
    ca: Option<&Path>,
    ops: Value,
) -> Vec<Value> {
    let (code, out, err) = drive_http_as(url, bearer, ca, ops);
    driver_results(code, &out, &err)
}

/// The text blocks of a driver's call result, joined by newlines.
pub fn result_text(result: &Value) -> String {
    result["text"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The stdout a driver's call result carries: the head of its text block, as long as
/// `structuredContent.stdout_bytes` says (the command's output must be valid UTF-8 and not
/// cut to fit).
pub fn result_stdout(result: &Value) -> String {
    let (text, out, _) = output_parts(result);
    text[..out].to_owned()
}

/// The stderr a driver's call result carries: what follows the `--- stderr ---` heading in
/// its text block, as long as `structuredContent.stderr_bytes` says.
pub fn result_stderr(result: &Value) -> String {
    let (text, out, err) = output_parts(result);
    if err == 0 {
        return String::new();
    }
    let rest = text[out..].strip_prefix('\n').unwrap_or(&text[out..]);
    let rest = rest
        .strip_prefix("--- stderr ---\n")
        .unwrap_or_else(|| panic!("no stderr heading after stdout: {result}"));
    rest[..err].to_owned()
}

fn output_parts(result: &Value) -> (&str, usize, usize) {
    let sc = &result["structured_content"];
    assert_eq!(
        sc["cut_to_fit"], false,
        "the output was cut to fit: {result}"
    );
    let text = result["text"][0].as_str().unwrap_or_default();
    let count = |field: &str| {
        sc[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field}: {result}")) as usize
    };
    let (out, err) = (count("stdout_bytes"), count("stderr_bytes"));
    assert!(
        text.len() >= out + err,
        "the text is shorter than the output: {result}"
    );
    (text, out, err)
}
