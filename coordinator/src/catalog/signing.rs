//! Signed tools on the coordinator's side: a tool's signable [`Definition`], built from its
//! config section, and the check of a config's signature file (`mcpfier.yaml.sig`) at load.
//! The coordinator does not decide trust (agents do, with their own keys); it refuses to load
//! a catalog whose signatures no longer match it, so a tool edited after signing is caught
//! here, before any agent refuses its calls.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use mcpfier_common::tool::signed::{
    ContainerDefinition, Definition, EnvValue, MountDefinition, Signatures, SigningKey,
};

use crate::config::{Problem, PullPolicy, ToolSection};

/// The definition of `section` that is signed and sent with each call.
pub fn definition(section: &ToolSection) -> Definition {
    Definition {
        name: section.name.clone(),
        command: section.command.clone(),
        params: section.params.clone(),
        env: section
            .env
            .iter()
            .map(|(name, value)| (name.clone(), EnvValue::of(value)))
            .collect(),
        workdir: section.workdir.as_ref().map(|p| p.display().to_string()),
        timeout_ms: section.timeout.get().as_millis() as u64,
        max_output: section.max_output.bytes(),
        container: section.container.as_ref().map(|c| ContainerDefinition {
            image: c.image.clone(),
            memory: c.memory.bytes(),
            cpus: c.cpus,
            pids: c.pids,
            network: c.network.clone(),
            read_only: c.read_only,
            user: c.user.clone(),
            mounts: c
                .mounts
                .iter()
                .map(|m| MountDefinition {
                    source: m.source.display().to_string(),
                    target: m.target.clone(),
                    rw: m.rw,
                })
                .collect(),
            pull_never: matches!(c.pull, PullPolicy::Never),
        }),
    }
}

/// Reads the signature file of the config at `config`, if there is one, and returns each
/// tool's signature in `tools`' order (`tools` holds each tool's name and canonical bytes).
/// Every tool must be signed, and every signature must match: a problem names each tool that
/// is not.
pub(super) fn signatures(
    config: &Path,
    tools: &[(&str, &[u8])],
) -> Result<Option<Vec<Vec<u8>>>, Vec<Problem>> {
    let path = Signatures::path_for(config);
    if !path.exists() {
        return Ok(None);
    }
    let shown = path.display();
    let sign_again = format!(
        "sign again with `mcpfier catalog sign --key KEY {}`, or remove {shown}",
        config.display()
    );
    let file = Signatures::read(&path).map_err(|e| vec![Problem::new("", e.to_string())])?;
    let key = file
        .key()
        .map_err(|why| vec![Problem::new("", format!("{shown}: {why}"))])?;
    let mut problems = Vec::new();
    let mut found = Vec::new();
    for (i, (name, canonical)) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        match file.of(name) {
            None => problems.push(Problem::new(
                at,
                format!("tool `{name}` has no signature in {shown}: {sign_again}"),
            )),
            Some(Err(why)) => problems.push(Problem::new(at, format!("{shown}: {why}"))),
            Some(Ok(signature)) if !key.verifies(canonical, &signature) => {
                problems.push(Problem::new(
                    at,
                    format!(
                        "tool `{name}` was changed after it was signed ({shown}, key {}): agents that require signed tools would refuse it; {sign_again}",
                        key.id()
                    ),
                ))
            }
            Some(Ok(signature)) => found.push(signature),
        }
    }
    if problems.is_empty() {
        Ok(Some(found))
    } else {
        Err(problems)
    }
}

/// `mcpfier catalog keygen`: writes a new Ed25519 key pair as `{out}.key` (mode 0600) and
/// `{out}.pub`, and returns both paths and the key's id.
pub fn keygen(out: &Path, force: bool) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let with = |ext: &str| {
        let mut name = out.as_os_str().to_owned();
        name.push(ext);
        PathBuf::from(name)
    };
    let (private, public) = (with(".key"), with(".pub"));
    let (key, pem) = SigningKey::generate();
    crate::certs::write_new(&private, &pem, 0o600, force)?;
    crate::certs::write_new(&public, &key.public().to_pem(), 0o644, force)?;
    Ok((private, public, key.public().id()))
}

/// `mcpfier catalog sign`: signs every tool of the config at `config` with the key at `key`
/// and writes the signatures beside it. Returns the signature file, how many tools it signed
/// and the key's id. Refuses a config with a tool an agent could not compile.
pub fn sign(key: &Path, config: &Path) -> anyhow::Result<(PathBuf, usize, String)> {
    let key = SigningKey::load(key)?;
    let text = crate::config::read(config).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
    let parsed =
        crate::config::parse(&text, config).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
    let definitions: Vec<Definition> = parsed.config.tools.iter().map(definition).collect();
    let mut problems = Vec::new();
    for (i, d) in definitions.iter().enumerate() {
        if let Err(found) = d.clone().compile() {
            for p in found {
                problems.push(format!("tools[{i}] ({}): {p}", d.name));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "{}: not signed, since agents could not compile these tools:\n  {}",
            config.display(),
            problems.join("\n  ")
        );
    }
    let path = Signatures::path_for(config);
    let signatures = Signatures::sign(&key, &definitions);
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    std::fs::write(&partial, signatures.to_text())
        .with_context(|| format!("write {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("write {}", path.display()))?;
    Ok((path, definitions.len(), key.public().id()))
}
