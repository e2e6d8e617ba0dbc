//! Signed tools: the canonical definition of a tool, Ed25519 keys to sign it offline, the
//! signature file that sits beside a config, and the agent's verifier.
//!
//! The operator signs each tool's [`Definition`] with a key kept off the coordinator
//! (`mcpfier catalog sign`). The coordinator sends, with every call, the definition's bytes
//! exactly as signed, the signature and the call's arguments. An agent that trusts the key
//! verifies the bytes, compiles the rules and template with the code in
//! [`super::params`] and [`super::template`], checks the arguments and renders the argv
//! itself. A stolen coordinator key then buys only signed tools with valid arguments.
//!
//! What is signed is `DOMAIN` followed by the definition as compact JSON, fields in a fixed
//! order. Signer and coordinator produce the bytes with the same code from the same YAML;
//! the agent never re-serializes, it checks the bytes it received.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::params::{self, ArgError, CompiledParam};
use super::paths::{self, PathArg};
use super::template::{self, Element};
use super::{CommandElement, Param};

/// Prefixed to a definition's bytes before signing, so a signature over a definition can't
/// be taken for a signature over anything else.
const DOMAIN: &[u8] = b"mcpfier tool definition v1\n";

/// What a signature covers: [`DOMAIN`], then the definition's bytes.
fn message(definition: &[u8]) -> Vec<u8> {
    [DOMAIN, definition].concat()
}

/// The first line of a signature file's `format`.
const FORMAT: &str = "mcpfier-tool-signatures/1";

/// The DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410); the 32 key bytes follow.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Everything about a tool that decides what a call runs: the command template, the
/// parameter rules, the environment as written, the working directory, the limits and the
/// container section. Not signed: how the coordinator shows the tool (title, description,
/// annotations), which exit codes count as success, placement and concurrency.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The tool's name.
    pub name: String,
    /// The argv template.
    pub command: Vec<CommandElement>,
    /// The parameters and their rules, in the file's order.
    pub params: IndexMap<String, Param>,
    /// The environment by name.
    pub env: BTreeMap<String, EnvValue>,
    /// The working directory, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// The timeout in milliseconds.
    pub timeout_ms: u64,
    /// Bytes kept of stdout and of stderr, each.
    pub max_output: u64,
    /// The container section, when the tool runs in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerDefinition>,
}

/// An environment variable's value as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvValue {
    /// A fixed value: the call must carry exactly this.
    Literal(String),
    /// A value with `${env:..}` or `${file:..}` references, as written (never the secret):
    /// the coordinator resolves it, and the call carries whatever it resolved to.
    Secret(String),
}

impl EnvValue {
    /// The value as written: a secret when it holds a `${env:..}` or `${file:..}` reference.
    pub fn of(written: &str) -> EnvValue {
        if written.contains("${env:") || written.contains("${file:") {
            EnvValue::Secret(written.to_owned())
        } else {
            EnvValue::Literal(written.to_owned())
        }
    }
}

/// A container section with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerDefinition {
    /// The image.
    pub image: String,
    /// Memory limit in bytes.
    pub memory: u64,
    /// CPUs.
    pub cpus: f64,
    /// Most processes.
    pub pids: i64,
    /// The network.
    pub network: String,
    /// Read-only root filesystem.
    pub read_only: bool,
    /// `uid:gid`.
    pub user: String,
    /// Bind mounts.
    pub mounts: Vec<MountDefinition>,
    /// Never pull the image.
    pub pull_never: bool,
}

/// A bind mount of a container definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountDefinition {
    /// Host path.
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Writable.
    pub rw: bool,
}

impl Definition {
    /// The bytes that are signed and sent: compact JSON, fields in declaration order.
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a definition serializes")
    }

    /// Compiles the parameter rules and the command template, with the checks the
    /// coordinator's config makes. Returns every problem, each as `path: message`.
    pub fn compile(self) -> Result<Compiled, Vec<String>> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| {
            problems.push(format!("{}: {message}", path.trim_start_matches('.')))
        };
        let mut params: Vec<CompiledParam> = self
            .params
            .iter()
            .map(|(name, spec)| {
                params::compile(name, spec, &format!("params.{name}"), &mut problem)
            })
            .collect();
        let command = template::compile(&self.command, &self.params, "", &mut problem);
        template::mark_option_positions(&command, &mut params);
        if problems.is_empty() {
            Ok(Compiled {
                definition: self,
                params,
                command,
            })
        } else {
            Err(problems)
        }
    }
}

/// A definition with its rules and template compiled: it checks arguments and renders argv.
#[derive(Debug)]
pub struct Compiled {
    /// What was compiled.
    pub definition: Definition,
    params: Vec<CompiledParam>,
    command: Vec<Element>,
}

impl Compiled {
    /// Checks `args` against the rules and renders the argv, with a marker where each path
    /// value goes and the path values to resolve where the call runs
    /// ([`super::paths`]). Nothing runs.
    pub fn render(
        &self,
        args: Option<&Map<String, Value>>,
    ) -> Result<(Vec<String>, Vec<PathArg>), Vec<ArgError>> {
        let mut values = params::check_args(&self.params, args)?;
        let paths = paths::extract(&self.params, &mut values);
        Ok((template::render(&self.command, &values), paths))
    }
}

/// A problem with a key or a signature file; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

fn read(path: &Path, what: &str) -> Result<String, KeyError> {
    std::fs::read_to_string(path)
        .map_err(|e| KeyError(format!("read {what} {}: {e}", path.display())))
}

/// An Ed25519 public key that signatures are checked with.
#[derive(Clone)]
pub struct PublicKey {
    bytes: [u8; 32],
}

impl PublicKey {
    /// Reads a `PUBLIC KEY` PEM file (an Ed25519 `SubjectPublicKeyInfo`, as `mcpfier catalog
    /// keygen` and `openssl pkey -pubout` write).
    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let text = read(path, "the public key")?;
        PublicKey::from_pem(&text).map_err(|why| KeyError(format!("{}: {why}", path.display())))
    }

    /// Parses a `PUBLIC KEY` PEM text.
    pub fn from_pem(text: &str) -> Result<PublicKey, String> {
        let pem = pem::parse(text).map_err(|e| format!("not a PEM file: {e}"))?;
        if pem.tag() != "PUBLIC KEY" {
            return Err(format!(
                "holds a `{}`, not a `PUBLIC KEY`: give the .pub file `mcpfier catalog keygen` wrote",
                pem.tag()
            ));
        }
        let der = pem.contents();
        match der.strip_prefix(&SPKI_PREFIX[..]) {
            Some(key) if key.len() == 32 => Ok(PublicKey {
                bytes: key.try_into().expect("32 bytes"),
            }),
            _ => Err("is not an Ed25519 public key".into()),
        }
    }

    /// The key as PEM text.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.bytes);
        pem::encode(&pem::Pem::new("PUBLIC KEY", der))
    }

    /// A short name for messages: the first 8 bytes of the key's SHA-256, in hex.
    pub fn id(&self) -> String {
        hex(&ring::digest::digest(&ring::digest::SHA256, &self.bytes).as_ref()[..8])
    }

    /// Whether `signature` is this key's over `definition` (the canonical bytes).
    pub fn verifies(&self, definition: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(&message(definition), signature)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

/// An Ed25519 key pair that signs definitions.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A fresh key, and its PKCS#8 `PRIVATE KEY` PEM text.
    pub fn generate() -> (SigningKey, String) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system RNG works");
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key ring just made");
        (SigningKey { pair }, pem)
    }

    /// Reads a `PRIVATE KEY` PEM file (PKCS#8 Ed25519).
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let text = read(path, "the signing key")?;
        let bad = |why: String| KeyError(format!("{}: {why}", path.display()));
        let pem = pem::parse(&text).map_err(|e| bad(format!("not a PEM file: {e}")))?;
        if pem.tag() != "PRIVATE KEY" {
            return Err(bad(format!(
                "holds a `{}`, not a `PRIVATE KEY`: give the .key file `mcpfier catalog keygen` wrote",
                pem.tag()
            )));
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pem.contents())
            .map_err(|e| bad(format!("is not an Ed25519 private key ({e})")))?;
        Ok(SigningKey { pair })
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            bytes: self
                .pair
                .public_key()
                .as_ref()
                .try_into()
                .expect("Ed25519 public keys are 32 bytes"),
        }
    }

    /// The signature over `definition` (canonical bytes).
    pub fn sign(&self, definition: &[u8]) -> Vec<u8> {
        self.pair.sign(&message(definition)).as_ref().to_vec()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public().id())
    }
}

/// The signature file beside a config (`mcpfier.yaml.sig`): the public key that signed (for
/// the coordinator's own check; agents trust only their configured keys) and each tool's
/// signature.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signatures {
    /// Always [`FORMAT`].
    pub format: String,
    /// The signer's public key, PEM.
    pub public_key: String,
    /// Signatures by tool name, hex.
    pub tools: BTreeMap<String, String>,
}

impl Signatures {
    /// Where the signatures of the config at `config` live: the same path plus `.sig`.
    pub fn path_for(config: &Path) -> PathBuf {
        let mut name = config.as_os_str().to_owned();
        name.push(".sig");
        PathBuf::from(name)
    }

    /// Signs every definition with `key`.
    pub fn sign<'a>(
        key: &SigningKey,
        definitions: impl IntoIterator<Item = &'a Definition>,
    ) -> Self {
        Signatures {
            format: FORMAT.into(),
            public_key: key.public().to_pem(),
            tools: definitions
                .into_iter()
                .map(|d| (d.name.clone(), hex(&key.sign(&d.canonical()))))
                .collect(),
        }
    }

    /// Reads a signature file.
    pub fn read(path: &Path) -> Result<Signatures, KeyError> {
        let text = read(path, "the signature file")?;
        let bad = |why: String| KeyError(format!("{}: {why}", path.display()));
        let s: Signatures = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "not a signature file ({e}); write it with `mcpfier catalog sign`"
            ))
        })?;
        if s.format != FORMAT {
            return Err(bad(format!(
                "format `{}` is not `{FORMAT}`; sign again with this version's `mcpfier catalog sign`",
                s.format
            )));
        }
        Ok(s)
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("signatures serialize");
        text.push('\n');
        text
    }

    /// The signer's public key.
    pub fn key(&self) -> Result<PublicKey, String> {
        PublicKey::from_pem(&self.public_key).map_err(|why| format!("public_key {why}"))
    }

    /// `tool`'s signature, decoded.
    pub fn of(&self, tool: &str) -> Option<Result<Vec<u8>, String>> {
        self.tools
            .get(tool)
            .map(|h| unhex(h).ok_or_else(|| format!("the signature of `{tool}` is not hex")))
    }
}

/// Why a signed call was refused; each message names the tool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    /// No trusted key signed these bytes.
    #[error(
        "tool `{tool}` is not signed by a key this agent trusts (policy.tool_signers: {trusted}): its definition was changed after signing, or signed with another key; sign the catalog again with `mcpfier catalog sign`"
    )]
    Signature {
        /// The tool asked for.
        tool: String,
        /// The trusted keys' ids.
        trusted: String,
    },
    /// The signed bytes are not a definition this agent can read.
    #[error("the signed definition of tool `{tool}` is unreadable: {why}")]
    Unreadable {
        /// The tool asked for.
        tool: String,
        /// What is wrong.
        why: String,
    },
    /// The definition is another tool's.
    #[error("the signed definition sent for tool `{tool}` is the definition of `{signed}`")]
    OtherTool {
        /// The tool asked for.
        tool: String,
        /// The tool the definition is of.
        signed: String,
    },
}

/// The keys an agent trusts, and the definitions it already verified and compiled (keyed by
/// the SHA-256 of bytes and signature), so a call after the first pays a hash, not an
/// Ed25519 verification and a regex compilation.
#[derive(Debug, Default)]
pub struct Verifier {
    keys: Vec<PublicKey>,
    verified: Mutex<HashMap<[u8; 32], Arc<Compiled>>>,
}

/// How many verified definitions a [`Verifier`] keeps; past it, it starts over.
const KEEP: usize = 4096;

impl Verifier {
    /// A verifier trusting `keys`.
    pub fn new(keys: Vec<PublicKey>) -> Verifier {
        Verifier {
            keys,
            verified: Mutex::default(),
        }
    }

    /// Whether any key is trusted (signatures are required).
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The trusted keys' ids, for messages.
    pub fn trusted(&self) -> String {
        let ids: Vec<_> = self.keys.iter().map(PublicKey::id).collect();
        ids.join(", ")
    }

    /// Verifies `definition` (bytes as signed) and `signature` for a call of `tool`, and
    /// returns it compiled.
    pub fn verify(
        &self,
        tool: &str,
        definition: &[u8],
        signature: &[u8],
    ) -> Result<Arc<Compiled>, Unverified> {
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        hasher.update(&(definition.len() as u64).to_be_bytes());
        hasher.update(definition);
        hasher.update(signature);
        let digest: [u8; 32] = hasher.finish().as_ref().try_into().expect("32 bytes");
        let cached = self
            .verified
            .lock()
            .expect("not poisoned")
            .get(&digest)
            .cloned();
        let compiled = match cached {
            Some(c) => c,
            None => {
                if !self.keys.iter().any(|k| k.verifies(definition, signature)) {
                    return Err(Unverified::Signature {
                        tool: tool.to_owned(),
                        trusted: self.trusted(),
                    });
                }
                let unreadable = |why: String| Unverified::Unreadable {
                    tool: tool.to_owned(),
                    why,
                };
                let parsed: Definition =
                    serde_json::from_slice(definition).map_err(|e| unreadable(e.to_string()))?;
                let compiled = Arc::new(parsed.compile().map_err(|p| unreadable(p.join("; ")))?);
                let mut verified = self.verified.lock().expect("not poisoned");
                if verified.len() >= KEEP {
                    verified.clear();
                }
                verified.insert(digest, compiled.clone());
                compiled
            }
        };
        if compiled.definition.name != tool {
            return Err(Unverified::OtherTool {
                tool: tool.to_owned(),
                signed: compiled.definition.name.clone(),
            });
        }
        Ok(compiled)
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lowercase or uppercase hex `text`.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests;
