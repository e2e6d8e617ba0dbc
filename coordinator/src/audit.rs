//! `server.audit`: one JSON line per call and per refused authentication or authorization,
//! each carrying the SHA-256 of the line before it, so the file is a hash chain that
//! `mcpfier audit verify` checks, across rotated files too.
//!
//! Invariants: lines are written by one thread, the writer, which takes every line waiting
//! (group commit), writes them with one `write(2)` to a file opened with `O_APPEND` and
//! `fdatasync`s once; a caller's `record` returns only after its line is on disk, so a call's
//! answer never goes out before its line, and a crash loses at most lines not yet
//! acknowledged. No async worker blocks on the disk. The values of parameters marked
//! `secret: true` are replaced by their SHA-256; lines are numbered (`seq`) from 1 without
//! gaps, across rotations: a rotated file is renamed `<path>.<its first seq, 12 digits>` and
//! the new file's first line carries the hash of the rotated file's last.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

/// The `prev` of the first line of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Most lines the writer puts in one write and one `fdatasync`.
const MAX_BATCH: usize = 1024;

/// Where the audit goes and when its file is rotated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The live file.
    pub path: PathBuf,
    /// Rotate once the live file holds at least this many bytes; `None`: never.
    pub rotate_size: Option<u64>,
    /// The chain's name in etcd (`<prefix>/audit/<chain>`), when the fleet has etcd.
    pub chain: String,
    /// `None`: each line is on disk before its call is answered. `Some(d)`: it is written
    /// before (a crash of mcpfier loses nothing) and synced at most `d` later (a crash of the
    /// host may lose that much).
    pub sync_interval: Option<std::time::Duration>,
}

/// The default name of a chain: this host's name and the file's absolute path.
pub fn default_chain(path: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    format!("{}{}", host.trim(), path.display())
}

/// The end of the chain: the last line's `seq` and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `seq` of the last line written (0: none yet).
    pub seq: u64,
    /// SHA-256 (hex) of that line ([`GENESIS`] when none).
    pub hash: String,
}

struct Chain {
    settings: Settings,
    file: File,
    /// Bytes in the live file.
    bytes: u64,
    /// `seq` of the live file's first line (the next line's when it has none).
    first_seq: u64,
    head: Head,
}

struct Pending {
    event: Map<String, Value>,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// An open audit file.
pub struct Audit {
    path: PathBuf,
    lines: Mutex<mpsc::Sender<Pending>>,
    /// Set when a line could not be written: from then on no call runs.
    broken: Arc<AtomicBool>,
    head: tokio::sync::watch::Receiver<Head>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("path", &self.path).finish()
    }
}

/// SHA-256 of `bytes` as lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
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

/// The rotated files of the audit file at `path`, oldest first: `<path>.<12 digits>`.
pub fn rotated(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(vec![]);
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{name}.");
    let mut found: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name().to_str().is_some_and(|n| {
                    n.strip_prefix(&prefix).is_some_and(|seq| {
                        seq.len() == 12 && seq.bytes().all(|b| b.is_ascii_digit())
                    })
                })
            })
            .map(|e| dir.join(e.file_name()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(e),
    };
    found.sort();
    Ok(found)
}

/// The head of the chain in `file`: its last line's `seq` and hash, if it has a line.
fn head_of(path: &Path) -> anyhow::Result<Option<Head>> {
    let last = match File::open(path) {
        Ok(f) => last_line(f).with_context(|| format!("read the audit file {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| format!("open the audit file {}", path.display()));
        }
    };
    let Some(line) = last else { return Ok(None) };
    let v: Value = serde_json::from_slice(&line).with_context(|| {
        format!(
            "the last line of the audit file {} is not JSON: check it with `mcpfier audit verify`",
            path.display()
        )
    })?;
    let seq = v["seq"]
        .as_u64()
        .with_context(|| format!("the last line of {} has no `seq`", path.display()))?;
    Ok(Some(Head {
        seq,
        hash: sha256_hex(&line),
    }))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Audit {
    /// Opens (or creates, mode 0600) the audit file and continues its chain after its last
    /// line, which must be intact (or, when the live file is empty, after the newest rotated
    /// file's), and starts the writer thread.
    pub fn open(settings: Settings) -> anyhow::Result<Audit> {
        let path = settings.path.clone();
        let live = head_of(&path)?;
        let head = match live.clone() {
            Some(head) => head,
            None => {
                let newest = rotated(&path)
                    .with_context(|| format!("list the rotated files of {}", path.display()))?
                    .pop();
                match newest {
                    Some(file) => head_of(&file)?.with_context(|| {
                        format!("the rotated audit file {} is empty", file.display())
                    })?,
                    None => Head {
                        seq: 0,
                        hash: GENESIS.to_owned(),
                    },
                }
            }
        };
        let first_seq = match live {
            Some(_) => first_seq(&path)?,
            None => head.seq + 1,
        };
        let file = open_append(&path)
            .with_context(|| format!("open the audit file {} for appending", path.display()))?;
        let bytes = file.metadata()?.len();
        let (lines, queue) = mpsc::channel();
        let broken = Arc::new(AtomicBool::new(false));
        let (head_tx, head_rx) = tokio::sync::watch::channel(head.clone());
        let chain = Chain {
            settings,
            file,
            bytes,
            first_seq,
            head,
        };
        let writer_broken = broken.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(chain, queue, writer_broken, head_tx))
            .context("start the audit writer thread")?;
        Ok(Audit {
            path,
            lines: Mutex::new(lines),
            broken,
            head: head_rx,
        })
    }

    /// Appends `event` (an object; `seq`, `time` and `prev` are added) as one line and
    /// waits until it is on disk. A failure is returned, never hidden: the caller decides.
    pub async fn record(&self, event: Map<String, Value>) -> std::io::Result<()> {
        self.submit(event)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the audit writer has stopped")))
    }

    /// Hands `event` to the writer; the receiver says when it is on disk.
    fn submit(&self, event: Map<String, Value>) -> oneshot::Receiver<std::io::Result<()>> {
        let (done, written) = oneshot::channel();
        let sent = self
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Pending { event, done });
        if let Err(mpsc::SendError(p)) = sent {
            self.broken.store(true, Ordering::SeqCst);
            let _ = p
                .done
                .send(Err(std::io::Error::other("the audit writer has stopped")));
        }
        written
    }

    /// Whether a line could not be written: then nothing may run (an unaudited call would
    /// be lost to the record).
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// The end of the chain, as of the last line on disk; changes as lines are written.
    pub fn head(&self) -> tokio::sync::watch::Receiver<Head> {
        self.head.clone()
    }
}

/// `seq` of the first line of the audit file at `path` (which has one).
fn first_seq(path: &Path) -> anyhow::Result<u64> {
    let file = File::open(path)?;
    let mut first = String::new();
    BufReader::new(file).read_line(&mut first)?;
    let v: Value = serde_json::from_str(first.trim_end()).with_context(|| {
        format!(
            "the first line of the audit file {} is not JSON: check it with `mcpfier audit verify`",
            path.display()
        )
    })?;
    v["seq"]
        .as_u64()
        .with_context(|| format!("the first line of {} has no `seq`", path.display()))
}

/// The writer thread: takes what is waiting, writes it as one batch, syncs, answers each
/// caller; rotates the file when it has grown past `rotate_size`. With `sync_interval`, it
/// answers once the batch is written and syncs at most that long after the first unsynced
/// line. Ends when every sender is gone (syncing first); after a failure it refuses
/// everything.
fn writer(
    mut chain: Chain,
    queue: mpsc::Receiver<Pending>,
    broken: Arc<AtomicBool>,
    head: tokio::sync::watch::Sender<Head>,
) {
    // Set while lines are written but not yet synced (`sync_interval` only).
    let mut unsynced_since: Option<std::time::Instant> = None;
    let failed = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
    loop {
        let next = match (unsynced_since, chain.settings.sync_interval) {
            (Some(since), Some(interval)) => {
                let left = interval.saturating_sub(since.elapsed());
                queue.recv_timeout(left)
            }
            _ => queue
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        let first = match next {
            Ok(p) => p,
            Err(timeout_or_gone) => {
                if unsynced_since.take().is_some() {
                    match chain.sync() {
                        Ok(()) => {
                            head.send_replace(chain.head.clone());
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the audit file can't be synced: no more calls run");
                            broken.store(true, Ordering::SeqCst);
                        }
                    }
                }
                match timeout_or_gone {
                    mpsc::RecvTimeoutError::Timeout => continue,
                    mpsc::RecvTimeoutError::Disconnected => return,
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if broken.load(Ordering::SeqCst) {
            for p in batch {
                let _ = p.done.send(Err(std::io::Error::other(
                    "an earlier audit line could not be written",
                )));
            }
            continue;
        }
        let (events, dones): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.event, p.done)).unzip();
        let mut written = chain.append(events);
        if written.is_ok() {
            if chain.settings.sync_interval.is_none() || chain.rotation_due() {
                written = chain.sync();
                unsynced_since = None;
            } else {
                unsynced_since.get_or_insert_with(std::time::Instant::now);
            }
        }
        match &written {
            Err(_) => broken.store(true, Ordering::SeqCst),
            Ok(()) if unsynced_since.is_none() => {
                head.send_replace(chain.head.clone());
            }
            Ok(()) => {}
        }
        for done in dones {
            let _ = done.send(written.as_ref().map(|_| ()).map_err(failed));
        }
    }
}

impl Chain {
    /// Writes `events` as lines with one `write(2)`; not yet synced.
    fn append(&mut self, events: Vec<Map<String, Value>>) -> std::io::Result<()> {
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let mut text = String::new();
        let mut head = self.head.clone();
        for mut event in events {
            let seq = head.seq + 1;
            // Fields in a fixed order first, then the event's own.
            let mut line = Map::new();
            line.insert("seq".into(), json!(seq));
            line.insert("time".into(), json!(time));
            line.append(&mut event);
            line.insert("prev".into(), json!(head.hash));
            let line = Value::Object(line).to_string();
            head = Head {
                seq,
                hash: sha256_hex(line.as_bytes()),
            };
            text.push_str(&line);
            text.push('\n');
        }
        self.file.write_all(text.as_bytes())?;
        self.bytes += text.len() as u64;
        self.head = head;
        Ok(())
    }

    fn rotation_due(&self) -> bool {
        self.settings
            .rotate_size
            .is_some_and(|limit| self.bytes >= limit)
    }

    /// `fdatasync`s what was written, then rotates when the file is due.
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        if self.rotation_due() {
            self.rotate()?;
        }
        Ok(())
    }

    /// Renames the live file `<path>.<first seq>` and starts a new one; the chain goes on.
    fn rotate(&mut self) -> std::io::Result<()> {
        let path = &self.settings.path;
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{:012}", self.first_seq));
        let target = PathBuf::from(name);
        if target.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("rotate the audit file: {} exists", target.display()),
            ));
        }
        std::fs::rename(path, &target)?;
        self.file = open_append(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        self.bytes = 0;
        self.first_seq = self.head.seq + 1;
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

impl Head {
    /// The head as etcd keeps it: `{"seq": N, "hash": "..."}`.
    pub fn to_json(&self) -> String {
        json!({"seq": self.seq, "hash": self.hash}).to_string()
    }

    /// A head as etcd keeps it.
    pub fn from_json(text: &str) -> anyhow::Result<Head> {
        let v: Value = serde_json::from_str(text).context("the head is not JSON")?;
        Ok(Head {
            seq: v["seq"].as_u64().context("the head has no seq")?,
            hash: v["hash"]
                .as_str()
                .context("the head has no hash")?
                .to_owned(),
        })
    }
}

/// Keeps the chain's head in etcd as lines are written (the latest head, one put at a
/// time, so it trails the file by at most the put in flight), until `shutdown`. A head in
/// etcd ahead of the file means the file's newest lines were cut: it is logged as an error
/// and left in place as evidence, and nothing is published.
pub async fn publish_head(
    audit: Arc<Audit>,
    etcd: crate::catalog::EtcdSettings,
    chain: String,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use mcpfier_common::membership::Etcd;
    let mut heads = audit.head();
    let client = loop {
        match Etcd::connect_with(&etcd.endpoints, &etcd.access).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "audit head: etcd unreachable; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let local = heads.borrow().clone();
    match client.audit_head(&etcd.prefix, &chain).await {
        Ok(Some(text)) => match Head::from_json(&text) {
            Ok(stored) if stored.seq > local.seq => {
                tracing::error!(
                    chain,
                    etcd_seq = stored.seq,
                    file_seq = local.seq,
                    "the audit file ends before the head etcd holds: its newest lines were cut; the head in etcd is kept (run `mcpfier audit verify --etcd`)"
                );
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, chain, "audit head in etcd unreadable; replacing it")
            }
        },
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "audit head: read from etcd"),
    }
    let mut published: Option<Head> = None;
    loop {
        let head = heads.borrow_and_update().clone();
        if published.as_ref() != Some(&head) {
            match client
                .put_audit_head(&etcd.prefix, &chain, &head.to_json())
                .await
            {
                Ok(()) => published = Some(head),
                Err(e) => {
                    tracing::warn!(error = %e, "audit head: write to etcd; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = heads.changed() => if changed.is_err() { return },
        }
    }
}

/// What [`verify`] found: an intact chain of `lines` lines, from `first_seq` to `head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Lines checked.
    pub lines: u64,
    /// `seq` of the first line (1 unless `partial`).
    pub first_seq: u64,
    /// The last line's `seq` and hash.
    pub head: Head,
}

/// The files of the chain whose live file is `path`, oldest first: its rotated files, then
/// the live file (when it exists).
pub fn chain_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = rotated(path)?;
    if path.exists() {
        files.push(path.to_owned());
    }
    Ok(files)
}

/// Checks the chain across `files`, oldest first: every line follows the one before it,
/// also from one file to the next. The first line must start a chain, unless `partial`
/// (older rotated files were removed on purpose): then it may continue one.
///
/// With `expect` (the head etcd holds), the chain must reach it: the line with its `seq`
/// must have its hash, so cutting the newest lines off the files is caught too.
pub fn verify(files: &[PathBuf], partial: bool, expect: Option<&Head>) -> anyhow::Result<Verified> {
    let mut head: Option<Head> = None;
    let mut first_seq = None;
    let mut count = 0;
    if files.is_empty() {
        bail!("no audit file to check");
    }
    for path in files {
        let file =
            File::open(path).with_context(|| format!("open the audit file {}", path.display()))?;
        let at = |n: usize| format!("{} line {n}", path.display());
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let n = i + 1;
            let line = line.with_context(|| format!("read {}", at(n)))?;
            let v: Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => bail!("{} is not a JSON audit record: it was changed", at(n)),
            };
            let Some(seq) = v["seq"].as_u64() else {
                bail!("{} has no `seq`: it was changed", at(n));
            };
            let prev = v["prev"].as_str().unwrap_or_default();
            match &head {
                Some(h) if seq != h.seq + 1 => bail!(
                    "{} has seq {seq} where {} was next: lines before it were removed, or lines were reordered",
                    at(n),
                    h.seq + 1
                ),
                Some(h) if prev != h.hash => {
                    if n == 1 {
                        bail!(
                            "{} does not carry the hash of the last line of the file before it: that line was changed",
                            at(n)
                        );
                    }
                    bail!(
                        "{} was changed: line {n} carries the hash of a different line {}",
                        at(n - 1),
                        n - 1
                    );
                }
                Some(_) => {}
                None if prev == GENESIS && seq == 1 => {}
                None if partial => {}
                None => bail!(
                    "{} does not start a chain (seq {seq}, prev not the genesis value): the lines or files before it were removed, or it was changed (pass --partial if older files were removed on purpose)",
                    at(n)
                ),
            }
            first_seq.get_or_insert(seq);
            let hash = sha256_hex(line.as_bytes());
            if let Some(want) = expect
                && want.seq == seq
                && want.hash != hash
            {
                bail!(
                    "{} is not the line whose hash etcd holds for seq {seq}: it was changed, or the chain was rewritten from there",
                    at(n)
                );
            }
            head = Some(Head { seq, hash });
            count += 1;
        }
    }
    let Some(head) = head else {
        bail!("the audit files hold no line");
    };
    if let Some(want) = expect
        && want.seq > head.seq
    {
        bail!(
            "the newest lines were cut: the files end at seq {}, and etcd holds the head at seq {}",
            head.seq,
            want.seq
        );
    }
    Ok(Verified {
        lines: count,
        first_seq: first_seq.unwrap_or(1),
        head,
    })
}

#[cfg(test)]
mod tests;
