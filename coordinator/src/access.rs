//! Who is calling, and what they may do.
//!
//! `server.auth` turns a bearer credential into a [`Principal`]; `roles` say which tools a
//! principal may list and call and whether it may read the fleet. Without `server.auth`
//! there is no principal and everything is allowed (stdio, or a loopback listener).
//!
//! Invariants: an API key is kept only as its SHA-256, and a presented key is compared with
//! every configured digest in constant time (no early exit, so timing says nothing about which
//! key came close); a principal may call a tool only when one of its roles lists it and none
//! denies it; a credential never appears in `Debug` output, logs or errors.

use std::fmt;

use indexmap::IndexMap;
use mcpfier_common::glob::Globs;
use subtle::ConstantTimeEq;

use crate::catalog::Tool;
use crate::config::{Config, FleetAccess, ParamType, Problem, RoleSection};
use mcpfier_common::tool::params::{self, CompiledParam};

pub mod jwks;
pub mod limits;
pub mod oauth;
pub use limits::{Permit, Quota, Refusal};
pub use oauth::{OAuth, TokenError};

/// What API keys start with, so a leaked one is recognisable (and secret scanners can match).
pub const KEY_PREFIX: &str = "mcpf_";

/// An authenticated caller.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its id: the API key's `id`, or the token's `sub`.
    pub id: String,
    /// The roles it has.
    pub roles: Vec<String>,
    /// How it authenticated (an API key id and a token subject that are spelled alike are
    /// two principals).
    pub method: Method,
    /// The token's scopes (OAuth); empty for an API key.
    pub scopes: Vec<String>,
}

/// How a principal authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// An API key of `server.auth.api_keys`.
    ApiKey,
    /// An OAuth access token.
    OAuth,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::ApiKey => "api_key",
            Method::OAuth => "oauth",
        })
    }
}

impl Principal {
    /// The scopes of `needed` that this principal's token lacks. An API key is authorized by
    /// its roles alone, so it lacks none.
    pub fn missing_scopes<'a>(&self, needed: &'a [String]) -> Vec<&'a str> {
        if self.method != Method::OAuth {
            return Vec::new();
        }
        needed
            .iter()
            .filter(|s| !self.scopes.contains(s))
            .map(String::as_str)
            .collect()
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("id", &self.id)
            .field("roles", &self.roles)
            .field("method", &self.method)
            .finish()
    }
}

struct ApiKey {
    id: String,
    digest: [u8; 32],
    roles: Vec<String>,
}

impl ApiKey {
    fn principal(&self) -> Principal {
        Principal {
            id: self.id.clone(),
            roles: self.roles.clone(),
            method: Method::ApiKey,
            scopes: Vec::new(),
        }
    }
}

/// A role, compiled.
struct Role {
    tools: Globs,
    deny: Globs,
    fleet: FleetAccess,
    limits: crate::config::RoleLimits,
    /// Narrower parameter rules: tool -> the rules (as parameters holding only them).
    args: std::collections::HashMap<String, Vec<CompiledParam>>,
}

/// The checked `server.auth` and `roles`.
pub struct Access {
    /// Whether `server.auth` is configured: then every HTTP request needs a credential.
    enabled: bool,
    keys: Vec<ApiKey>,
    roles: IndexMap<String, Role>,
    oauth: Option<OAuth>,
    limiter: std::sync::Arc<limits::Limiter>,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self.keys.iter().map(|k| k.id.as_str()).collect();
        let roles: Vec<_> = self.roles.keys().collect();
        f.debug_struct("Access")
            .field("enabled", &self.enabled)
            .field("api_keys", &keys)
            .field("roles", &roles)
            .field("oauth", &self.oauth.as_ref().map(|o| &o.issuer))
            .finish()
    }
}

/// Why a request carried no usable credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error(
        "authentication required: send `Authorization: Bearer <API key>` (mcpfier keys new makes one)"
    )]
    Missing,
    /// An `Authorization` header that is not `Bearer <credential>`.
    #[error("the Authorization header must be `Bearer <credential>`")]
    Malformed,
    /// A credential that no configured key matches.
    #[error("the credential is not valid")]
    Invalid,
    /// An access token that does not verify, or lacks a required scope.
    #[error("{0}")]
    Token(TokenError),
    /// A credential in the URL, where proxies and logs keep it.
    #[error("credentials go in the Authorization header, never in the URL (query parameter `{0}`)")]
    InQuery(String),
}

/// Query parameters that look like a credential: refused wherever they appear.
const CREDENTIAL_PARAMS: &[&str] = &["access_token", "token", "api_key", "apikey", "key"];

impl Access {
    /// No `server.auth`: every caller is trusted.
    pub fn open() -> Access {
        Access {
            enabled: false,
            keys: Vec::new(),
            roles: IndexMap::new(),
            oauth: None,
            limiter: Default::default(),
        }
    }

    /// Checks `server.auth` and `roles`, adding what is wrong to `problems`; `base` (the
    /// config file's directory) resolves relative paths.
    pub fn build(config: &Config, base: &std::path::Path, problems: &mut Vec<Problem>) -> Access {
        let mut roles = IndexMap::new();
        for (name, role) in &config.roles {
            let at = format!("roles.{name}");
            let globs = |patterns: &[String], field: &str, problems: &mut Vec<Problem>| {
                Globs::new(patterns).unwrap_or_else(|e| {
                    problems.push(Problem::new(format!("{at}.{field}"), e.to_string()));
                    Globs::lenient::<&str>(&[])
                })
            };
            let tools = globs(&role.tools, "tools", problems);
            let deny = globs(&role.deny, "deny", problems);
            roles.insert(
                name.clone(),
                Role {
                    tools,
                    deny,
                    fleet: role.fleet,
                    limits: role.limits,
                    args: Default::default(),
                },
            );
        }
        let Some(auth) = &config.server.auth else {
            return Access {
                enabled: false,
                keys: Vec::new(),
                roles,
                oauth: None,
                limiter: Default::default(),
            };
        };
        if auth.api_keys.is_empty() && auth.oauth.is_none() {
            problems.push(Problem::new(
                "server.auth",
                "lists no way to authenticate: add api_keys (mcpfier keys new --id NAME --roles ROLE prints one) or oauth, or remove server.auth",
            ));
        }
        let oauth = auth
            .oauth
            .as_ref()
            .and_then(|section| match OAuth::build(section, base) {
                Ok(o) => Some(o),
                Err(found) => {
                    problems.extend(found.into_iter().map(|(path, why)| Problem::new(path, why)));
                    None
                }
            });
        let mut keys = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, key) in auth.api_keys.iter().enumerate() {
            let at = format!("server.auth.api_keys[{i}]");
            if !valid_principal_id(&key.id) {
                problems.push(Problem::new(
                    format!("{at}.id"),
                    format!(
                        "`{}` is not a valid id: use 1-64 characters of a-z A-Z 0-9 _ . - @",
                        key.id
                    ),
                ));
            } else if !seen.insert(key.id.clone()) {
                problems.push(Problem::new(
                    format!("{at}.id"),
                    format!("another key already has id `{}`", key.id),
                ));
            }
            let digest = match parse_hash(&key.hash) {
                Some(d) => d,
                None => {
                    problems.push(Problem::new(
                        format!("{at}.hash"),
                        "must be `sha256:` and 64 lowercase hex digits, the SHA-256 of the whole key (mcpfier keys new prints the line); never put the key itself here",
                    ));
                    [0; 32]
                }
            };
            for (j, role) in key.roles.iter().enumerate() {
                if !roles.contains_key(role) {
                    let known: Vec<_> = roles.keys().map(String::as_str).collect();
                    problems.push(Problem::new(
                        format!("{at}.roles[{j}]"),
                        format!(
                            "no role `{role}` under `roles` (roles are: {})",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
            }
            keys.push(ApiKey {
                id: key.id.clone(),
                digest,
                roles: key.roles.clone(),
            });
        }
        Access {
            enabled: true,
            keys,
            roles,
            oauth,
            limiter: Default::default(),
        }
    }

    /// Checks and compiles each role's `args` against the tools they narrow (which must
    /// exist, with those parameters, and rules of the parameter's type: an `enum` a subset of
    /// the tool's own).
    pub fn compile_args(
        &mut self,
        sections: &IndexMap<String, RoleSection>,
        tools: &IndexMap<String, std::sync::Arc<Tool>>,
        problems: &mut Vec<Problem>,
    ) {
        for (name, section) in sections {
            let Some(role) = self.roles.get_mut(name) else {
                continue;
            };
            for (field, limit) in [
                ("calls_per_minute", section.limits.calls_per_minute),
                ("concurrent", section.limits.concurrent),
            ] {
                if limit == Some(0) {
                    problems.push(Problem::new(
                        format!("roles.{name}.limits.{field}"),
                        "must be at least 1 (to forbid calls, leave the tools out of the role)",
                    ));
                }
            }
            for (tool_name, rules) in &section.args {
                let at = format!("roles.{name}.args.{tool_name}");
                let Some(tool) = tools.get(tool_name) else {
                    problems.push(Problem::new(at, format!("no tool named `{tool_name}`")));
                    continue;
                };
                if !role.tools.is_match(tool_name) {
                    problems.push(Problem::new(
                        at.clone(),
                        format!("the role's tools don't include `{tool_name}`, so narrowing its arguments does nothing"),
                    ));
                }
                let mut compiled = Vec::new();
                for (param, rule) in rules {
                    let p = format!("{at}.{param}");
                    let Some(base) = tool.params.iter().find(|c| &c.name == param) else {
                        let known: Vec<_> = tool.params.iter().map(|c| c.name.as_str()).collect();
                        problems.push(Problem::new(
                            p,
                            format!(
                                "`{tool_name}` has no parameter `{param}` (it has: {})",
                                if known.is_empty() {
                                    "none".to_owned()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        ));
                        continue;
                    };
                    if let (Some(narrow), Some(own)) = (&rule.choices, &base.spec.choices) {
                        for (j, v) in narrow.iter().enumerate() {
                            if !own.contains(v) {
                                problems.push(Problem::new(
                                    format!("{p}.enum[{j}]"),
                                    format!("{v} is not one of the tool's own values, so it could never be given"),
                                ));
                            }
                        }
                    }
                    let spec = crate::config::Param {
                        // A path's narrowing checks the value as given; where it resolves is
                        // known only on the host that runs the call.
                        kind: match base.spec.kind {
                            ParamType::Path => ParamType::String,
                            kind => kind,
                        },
                        description: None,
                        default: None,
                        required: Some(false),
                        pattern: rule.pattern.clone(),
                        min_length: None,
                        max_length: rule.max_length,
                        choices: rule.choices.clone(),
                        minimum: rule.minimum,
                        maximum: rule.maximum,
                        items: None,
                        min_items: None,
                        max_items: rule.max_items,
                        // The tool's own rules check these; the narrowing adds to them.
                        allow_options: true,
                        allow_bidi: true,
                        within: None,
                        must_exist: false,
                        secret: false,
                    };
                    let mut push =
                        |path: String, why: String| problems.push(Problem::new(path, why));
                    compiled.push(params::compile(param, &spec, &p, &mut push));
                }
                role.args.insert(tool_name.clone(), compiled);
            }
        }
    }

    /// The limits that apply to `who`: for each figure, the most generous any of its roles
    /// sets (unlimited when none sets it).
    pub fn quota(&self, who: &Principal) -> Quota {
        let mut q = Quota::default();
        for role in who.roles.iter().filter_map(|r| self.roles.get(r)) {
            q.calls_per_minute = q.calls_per_minute.max(role.limits.calls_per_minute);
            q.concurrent = q.concurrent.max(role.limits.concurrent);
        }
        q
    }

    /// Lets a call of `who` start under its roles' limits, or says why it may not.
    pub fn admit(&self, who: &Principal) -> Result<Permit, Refusal> {
        let quota = self.quota(who);
        if quota.unlimited() {
            return Ok(Permit::free());
        }
        let key = format!("{}:{}", who.method, who.id);
        self.limiter
            .admit(&key, &who.id, quota, std::time::Instant::now())
    }

    /// Checks a call's arguments against the narrower rules of `who`'s roles for `tool`: the
    /// call may go ahead when a role that allows the tool narrows nothing for it, or when
    /// the arguments meet every rule of one such role. Otherwise, what is wrong.
    pub fn check_narrowed(
        &self,
        who: Option<&Principal>,
        tool: &Tool,
        args: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<(), String> {
        let Some(who) = who else { return Ok(()) };
        let allowing: Vec<(&String, &Role)> = who
            .roles
            .iter()
            .filter_map(|r| self.roles.get_key_value(r))
            .filter(|(_, r)| r.tools.is_match(&tool.name))
            .collect();
        let narrowing: Vec<(&String, &Vec<CompiledParam>)> = allowing
            .iter()
            .filter_map(|(name, r)| r.args.get(&tool.name).map(|a| (*name, a)))
            .collect();
        if narrowing.len() < allowing.len() || narrowing.is_empty() {
            return Ok(());
        }
        let values = params::check_args(&tool.params, args).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let mut why = Vec::new();
        for (role, rules) in narrowing {
            let broken: Vec<String> = rules
                .iter()
                .filter_map(|rule| {
                    let value = values.get(&rule.name)?;
                    params::check_value(rule, value)
                        .err()
                        .map(|e| format!("parameter `{}` {e}", rule.name))
                })
                .collect();
            if broken.is_empty() {
                return Ok(());
            }
            why.push(format!("for role `{role}`, {}", broken.join(", ")));
        }
        Err(why.join("; "))
    }

    /// The OAuth settings, when tokens are accepted.
    pub fn oauth(&self) -> Option<&OAuth> {
        self.oauth.as_ref()
    }

    /// Whether callers must authenticate.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The principal `authorization` (the header's value, if any) proves, refusing a
    /// credential in `query` first. `Ok(None)` when authentication is off.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        query: Option<&str>,
    ) -> Result<Option<Principal>, AuthError> {
        if !self.enabled {
            return Ok(None);
        }
        if let Some(name) = query.and_then(credential_in_query) {
            return Err(AuthError::InQuery(name));
        }
        let header = authorization.ok_or(AuthError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
        let (scheme, credential) = header.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let credential = credential.trim();
        if credential.is_empty() {
            return Err(AuthError::Malformed);
        }
        if credential.starts_with(KEY_PREFIX) || self.oauth.is_none() {
            return self.by_key(credential).map(Some).ok_or(AuthError::Invalid);
        }
        let oauth = self.oauth.as_ref().expect("checked above");
        let claims = oauth.verify(credential).map_err(AuthError::Token)?;
        Ok(Some(Principal {
            id: claims.subject,
            roles: claims.roles,
            method: Method::OAuth,
            scopes: claims.scopes,
        }))
    }

    /// The principal whose API key is `key`.
    fn by_key(&self, key: &str) -> Option<Principal> {
        let digest = sha256(key.as_bytes());
        let mut found = None;
        // Every digest is compared, whatever matched before.
        for k in &self.keys {
            if bool::from(k.digest.ct_eq(&digest)) {
                found = Some(k);
            }
        }
        found.map(ApiKey::principal)
    }

    /// Whether `who` may list and call `tool` (anyone may when authentication is off).
    pub fn may_call(&self, who: Option<&Principal>, tool: &str) -> bool {
        if !self.enabled {
            return true;
        }
        let Some(who) = who else { return false };
        let roles: Vec<&Role> = who.roles.iter().filter_map(|r| self.roles.get(r)).collect();
        roles.iter().any(|r| r.tools.is_match(tool)) && !roles.iter().any(|r| r.deny.is_match(tool))
    }

    /// The principal of the API key with id `id`, for `dry-run --as`.
    pub fn principal(&self, id: &str) -> Option<Principal> {
        self.keys.iter().find(|k| k.id == id).map(ApiKey::principal)
    }

    /// The ids of the configured API keys.
    pub fn principal_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Whether `who` may call `tool`, and which role rule decided it, in words.
    pub fn explain(&self, who: &Principal, tool: &str) -> (bool, String) {
        let roles: Vec<(&String, &Role)> = who
            .roles
            .iter()
            .filter_map(|r| self.roles.get_key_value(r))
            .collect();
        if let Some((name, role)) = roles.iter().find(|(_, r)| r.deny.is_match(tool)) {
            return (
                false,
                format!(
                    "role `{name}` denies `{tool}` (deny: {})",
                    role.deny.patterns().join(", ")
                ),
            );
        }
        if let Some((name, role)) = roles.iter().find(|(_, r)| r.tools.is_match(tool)) {
            return (
                true,
                format!(
                    "role `{name}` allows `{tool}` (tools: {})",
                    role.tools.patterns().join(", ")
                ),
            );
        }
        let names: Vec<&str> = who.roles.iter().map(String::as_str).collect();
        (
            false,
            format!(
                "none of its roles ({}) lists `{tool}` under tools",
                if names.is_empty() {
                    "it has none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        )
    }

    /// Whether `who` may read `/fleet` (anyone may when authentication is off).
    pub fn may_read_fleet(&self, who: Option<&Principal>) -> bool {
        if !self.enabled {
            return true;
        }
        who.is_some_and(|who| {
            who.roles
                .iter()
                .filter_map(|r| self.roles.get(r))
                .any(|r| r.fleet == FleetAccess::Read)
        })
    }
}

fn credential_in_query(query: &str) -> Option<String> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').map_or(pair, |(k, _)| k))
        .find(|name| {
            CREDENTIAL_PARAMS
                .iter()
                .any(|c| c.eq_ignore_ascii_case(name))
        })
        .map(str::to_owned)
}

/// Whether `id` can name a principal: 1-64 of `a-z A-Z 0-9 _ . - @`.
pub fn valid_principal_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@'))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new API key: [`KEY_PREFIX`] and 256 random bits in hex.
pub fn new_key() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    Ok(format!("{KEY_PREFIX}{}", hex(&bytes)))
}

/// What `server.auth.api_keys[].hash` holds for `key`.
pub fn key_hash(key: &str) -> String {
    format!("sha256:{}", hex(&sha256(key.as_bytes())))
}

#[cfg(test)]
mod tests;
