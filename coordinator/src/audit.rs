//! `server.audit`: one JSON line per call and per refused authentication or authorization,
//! each carrying the SHA-256 of the line before it, so the file is a hash chain that
//! `mcpfier audit verify` checks.
//!
//! Invariants: a line is written with one `write(2)` to a file opened with `O_APPEND`, then
//! `fdatasync`ed before the call's answer goes out, so a crash loses at most the line being
//! written; the values of parameters marked `secret: true` are replaced by their SHA-256;
//! lines are numbered (`seq`) from 1 without gaps.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

/// The `prev` of the first line of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

struct Chain {
    file: File,
    /// SHA-256 (hex) of the last line written.
    prev: String,
    /// `seq` of the last line written (0: none yet).
    seq: u64,
}

/// An open audit file.
pub struct Audit {
    path: PathBuf,
    chain: Mutex<Chain>,
    /// Set when a line could not be written: from then on no call runs.
    broken: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("path", &self.path).finish()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What stands in an audit line for a secret value: its SHA-256, so two lines can be seen to
/// carry the same value without either showing it.
pub fn digest_of(value: &Value) -> String {
    format!("sha256:{}", sha256_hex(value.to_string().as_bytes()))
}

impl Audit {
    /// Opens (or creates, mode 0600) the audit file at `path` and continues its chain after
    /// its last line, which must be intact.
    pub fn open(path: &Path) -> anyhow::Result<Audit> {
        use std::os::unix::fs::OpenOptionsExt;
        let last = match File::open(path) {
            Ok(f) => {
                last_line(f).with_context(|| format!("read the audit file {}", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| format!("open the audit file {}", path.display()));
            }
        };
        let (prev, seq) = match last {
            None => (GENESIS.to_owned(), 0),
            Some(line) => {
                let v: Value = serde_json::from_slice(&line).with_context(|| {
                    format!(
                        "the last line of the audit file {} is not JSON: check it with `mcpfier audit verify`",
                        path.display()
                    )
                })?;
                let seq = v["seq"]
                    .as_u64()
                    .with_context(|| format!("the last line of {} has no `seq`", path.display()))?;
                (sha256_hex(&line), seq)
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("open the audit file {} for appending", path.display()))?;
        Ok(Audit {
            path: path.to_owned(),
            chain: Mutex::new(Chain { file, prev, seq }),
            broken: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Appends `event` (an object; `time`, `seq` and `prev` are added) as one line, and
    /// waits until it is on disk. A failure is returned, never hidden: the caller decides.
    pub fn record(&self, event: Map<String, Value>) -> std::io::Result<()> {
        let written = self.append(event);
        if written.is_err() {
            self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        written
    }

    /// Whether a line could not be written: then nothing may run (an unaudited call would
    /// be lost to the record).
    pub fn broken(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn append(&self, mut event: Map<String, Value>) -> std::io::Result<()> {
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let seq = chain.seq + 1;
        // Fields in a fixed order first, then the event's own.
        let mut line = Map::new();
        line.insert("seq".into(), json!(seq));
        line.insert("time".into(), json!(time));
        line.append(&mut event);
        line.insert("prev".into(), json!(chain.prev));
        let mut text = Value::Object(line).to_string();
        let hash = sha256_hex(text.as_bytes());
        text.push('\n');
        chain.file.write_all(text.as_bytes())?;
        chain.file.sync_data()?;
        chain.prev = hash;
        chain.seq = seq;
        Ok(())
    }
}

/// The last non-empty line of `file`, read from its end (an audit file only grows, and
/// continuing its chain must not read all of it).
fn last_line(mut file: File) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    let mut tail: Vec<u8> = Vec::new();
    let mut start = len;
    loop {
        let line_end = tail.iter().rposition(|b| *b != b'\n').map(|i| i + 1);
        if let Some(end) = line_end
            && let Some(newline) = tail[..end].iter().rposition(|b| *b == b'\n')
        {
            return Ok(Some(tail[newline + 1..end].to_vec()));
        }
        if start == 0 {
            return Ok(line_end.map(|end| tail[..end].to_vec()));
        }
        let step = start.min(64 * 1024);
        start -= step;
        let mut chunk = vec![0; step as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
    }
}

/// Checks the chain of the audit file at `path`: `Ok(lines)` when every line follows the
/// one before it, else what is wrong and at which line.
pub fn verify(path: &Path) -> anyhow::Result<u64> {
    let file =
        File::open(path).with_context(|| format!("open the audit file {}", path.display()))?;
    let mut prev = GENESIS.to_owned();
    let mut expected_seq = None;
    let mut count = 0;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("read line {n}"))?;
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => bail!("line {n} is not a JSON audit record: it was changed"),
        };
        let seq = v["seq"].as_u64();
        let Some(seq) = seq else {
            bail!("line {n} has no `seq`: it was changed");
        };
        if let Some(want) = expected_seq
            && seq != want
        {
            bail!(
                "line {n} has seq {seq} where {want} was next: lines before it were removed, or lines were reordered"
            );
        }
        if v["prev"].as_str() != Some(prev.as_str()) {
            if n == 1 {
                bail!(
                    "line 1 does not start a chain (its prev is not the genesis value): the lines before it were removed, or it was changed"
                );
            }
            bail!(
                "line {} was changed: line {n} carries the hash of a different line {}",
                n - 1,
                n - 1
            );
        }
        prev = sha256_hex(line.as_bytes());
        expected_seq = Some(seq + 1);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests;
