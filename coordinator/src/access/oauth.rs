//! `server.auth.oauth`: mcpfier as an OAuth 2.1 resource server, as the MCP authorization
//! spec asks. It verifies access tokens (JWTs) against the issuer's JWKS and never talks to
//! the authorization server for a call; it never passes a token on (tools and agents get no
//! trace of it).
//!
//! Accepted: RS256, ES256 (P-256) and EdDSA (Ed25519), each only with a key of its own kind
//! from the JWKS, so neither `none` nor an HMAC "key" made from a public key can verify.
//! Checked: the signature, `exp` (required), `nbf`, `iss` equal to `issuer`, `aud`
//! containing `audience` (this server's resource, RFC 8707), a `sub`, and
//! `required_scopes`. An unknown `kid` reads the JWKS again (`jwks_file`) or fetches it
//! again (`jwks_url`, see [`super::jwks`]), at most once per [`REFRESH_FLOOR`]. A token is
//! verified once; later requests with it are checked against the clock only.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tracing::{info, warn};

/// The least time between two reads of the JWKS for unknown key ids: a flood of tokens with
/// made-up `kid`s must not turn into a flood of reads.
pub const REFRESH_FLOOR: Duration = Duration::from_secs(30);

/// Most tokens kept verified; past it the cache starts over.
const VERIFIED_KEPT: usize = 10_000;

/// A token verified earlier: its claims and the times it is valid between.
struct Verified {
    claims: Claims,
    exp: u64,
    nbf: u64,
}

/// A usable key of the JWKS.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The checked `server.auth.oauth`.
pub struct OAuth {
    /// `iss` tokens must carry.
    pub issuer: String,
    /// This server's resource identifier; tokens' `aud` must contain it.
    pub audience: String,
    /// Where the protected-resource metadata is served (RFC 9728), from `audience`.
    pub metadata_url: String,
    /// The claim that lists a principal's roles.
    pub roles_claim: String,
    /// Scopes every token needs.
    pub required_scopes: Vec<String>,
    leeway: Duration,
    source: Source,
    keys: RwLock<Arc<Vec<Key>>>,
    /// The fetch count when an unknown key id last woke the fetcher (`jwks_url`).
    woke_after: Mutex<Option<u64>>,
    last_refresh: Mutex<Option<Instant>>,
    /// Tokens already verified, by SHA-256: a client sends the same token with every request
    /// of a session, and its signature need not be checked again. Their time bounds are
    /// checked at every use; a re-read JWKS empties it (a key taken out takes its tokens).
    verified: Mutex<std::collections::HashMap<[u8; 32], Verified>>,
}

/// Where the keys come from.
enum Source {
    File(PathBuf),
    Url(super::jwks::Remote),
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `sub`.
    pub subject: String,
    /// The roles claim (an array of strings, or one space-separated string).
    pub roles: Vec<String>,
    /// `scope` (space-separated) or `scp` (an array).
    pub scopes: Vec<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a valid token for this server: 401 `invalid_token`.
    #[error("the access token is not valid: {0}")]
    Invalid(String),
    /// It names a key the fetched JWKS lacks; a fetch was asked for, and the request may try
    /// again once more than `after` fetches have finished. Else like `Invalid`.
    #[error("the access token is not valid: {message}")]
    UnknownKey {
        /// Why, as for `Invalid`.
        message: String,
        /// The fetch count to wait past.
        after: u64,
    },
    /// Valid, but without scopes this server requires: 403 `insufficient_scope`.
    #[error("the access token lacks the scope {}", .0.join(" "))]
    Scope(Vec<String>),
}

/// The algorithm a JWK can verify, or why it is not used.
fn algorithm_of(jwk: &Jwk) -> Result<Algorithm, String> {
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (oct) key: never used to verify".into());
        }
        _ => return Err("a curve other than P-256 or Ed25519".into()),
    };
    // A key that says what it is for must say this algorithm.
    if let Some(declared) = &jwk.common.key_algorithm {
        let declared = format!("{declared:?}");
        if declared != format!("{alg:?}") {
            return Err(format!("its `alg` is {declared}, not {alg:?}"));
        }
    }
    Ok(alg)
}

/// Reads the keys of the JWKS at `path`, skipping (and logging) the ones it won't use.
fn read_keys(path: &std::path::Path) -> Result<Vec<Key>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    parse_keys(&text, &path.display().to_string())
}

/// The usable keys of the JWKS `text` (from `what`, for messages).
fn parse_keys(text: &str, what: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("{what} is not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        match algorithm_of(jwk).and_then(|alg| {
            DecodingKey::from_jwk(jwk)
                .map(|key| (alg, key))
                .map_err(|e| e.to_string())
        }) {
            Ok((alg, key)) => keys.push(Key { kid, alg, key }),
            Err(why) => warn!(
                kid = kid.as_deref().unwrap_or("-"),
                why, "JWKS key not used"
            ),
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "{what} holds no usable key (RS256, ES256 P-256 or EdDSA Ed25519)"
        ));
    }
    Ok(keys)
}

impl OAuth {
    /// Checks the section; `base` resolves a relative `jwks_file`.
    pub fn build(
        section: &crate::config::OAuthSection,
        base: &std::path::Path,
    ) -> Result<OAuth, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let at = "server.auth.oauth";
        let metadata_url = match metadata_url(&section.audience) {
            Ok(u) => u,
            Err(why) => {
                problems.push((format!("{at}.audience"), why));
                String::new()
            }
        };
        if section.issuer.is_empty() {
            problems.push((
                format!("{at}.issuer"),
                "must be the authorization server's issuer URL, exactly as tokens' `iss` says it"
                    .into(),
            ));
        }
        let mut keys = Vec::new();
        let source = match (&section.jwks_file, &section.jwks_url) {
            (Some(file), None) => {
                let file = base.join(file);
                match read_keys(&file) {
                    Ok(k) => keys = k,
                    Err(why) => problems.push((format!("{at}.jwks_file"), why)),
                }
                Some(Source::File(file))
            }
            (None, Some(url)) => {
                let ca = section.jwks_ca.as_ref().map_or_else(
                    || PathBuf::from(crate::http::client::SYSTEM_ROOTS),
                    |ca| base.join(ca),
                );
                match super::jwks::Remote::new(url, &ca, section.jwks_refresh.get()) {
                    Ok(remote) => Some(Source::Url(remote)),
                    Err(why) => {
                        problems.push((format!("{at}.jwks_url"), why));
                        None
                    }
                }
            }
            _ => {
                problems.push((
                    at.to_owned(),
                    "needs exactly one of jwks_file (a JWKS on disk) and jwks_url (fetched over https)"
                        .into(),
                ));
                None
            }
        };
        if section.jwks_url.is_none() && section.jwks_ca.is_some() {
            problems.push((format!("{at}.jwks_ca"), "only jwks_url takes it".into()));
        }
        if section.jwks_refresh.get() < REFRESH_FLOOR {
            problems.push((
                format!("{at}.jwks_refresh"),
                format!("must be at least {REFRESH_FLOOR:?}"),
            ));
        }
        let Some(source) = source else {
            return Err(problems);
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(OAuth {
            issuer: section.issuer.clone(),
            audience: section.audience.clone(),
            metadata_url,
            roles_claim: section.roles_claim.clone(),
            required_scopes: section.required_scopes.clone(),
            leeway: section.leeway.get(),
            source,
            keys: RwLock::new(Arc::new(keys)),
            woke_after: Mutex::new(None),
            last_refresh: Mutex::new(None),
            verified: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The metadata document of RFC 9728.
    pub fn metadata(&self) -> Value {
        serde_json::json!({
            "resource": self.audience,
            "authorization_servers": [self.issuer],
            "bearer_methods_supported": ["header"],
            "scopes_supported": self.required_scopes,
        })
    }

    fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The fetched JWKS's source, with `jwks_url`.
    pub fn remote(&self) -> Option<&super::jwks::Remote> {
        match &self.source {
            Source::Url(remote) => Some(remote),
            Source::File(_) => None,
        }
    }

    /// Replaces the keys with those of the JWKS `text` (from `what`); how many it has. A
    /// set without a usable key changes nothing.
    pub fn replace_keys(&self, text: &str, what: &str) -> Result<usize, String> {
        let keys = parse_keys(text, what)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(n)
    }

    /// For an unknown key id: reads the JWKS file again, or wakes the fetcher of the URL,
    /// unless that was done less than [`REFRESH_FLOOR`] ago. `Ok(true)`: the keys were read
    /// again; `Err(after)`: a fetch was asked for (now or within the floor, and has not
    /// finished), wait past `after` fetches.
    fn refresh(&self) -> Result<bool, u64> {
        let recent = {
            let mut last = self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
            let recent = last.is_some_and(|t| t.elapsed() < REFRESH_FLOOR);
            if !recent {
                *last = Some(Instant::now());
            }
            recent
        };
        let file = match &self.source {
            Source::Url(remote) => {
                let mut woke = self.woke_after.lock().unwrap_or_else(|p| p.into_inner());
                if !recent {
                    *woke = Some(remote.fetches());
                    remote.wake();
                }
                return match *woke {
                    Some(after) if remote.fetches() <= after => Err(after),
                    _ => Ok(false),
                };
            }
            Source::File(file) => file,
        };
        if recent {
            return Ok(false);
        }
        match read_keys(file) {
            Ok(keys) => {
                info!(keys = keys.len(), file = %file.display(), "JWKS read again for an unknown key id");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                Ok(true)
            }
            Err(why) => {
                warn!(why, "kept the current JWKS");
                Ok(false)
            }
        }
    }

    /// Verifies `token` and returns its claims; a token verified before is only checked
    /// against the clock.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.verify_at(token, now)
    }

    /// [`OAuth::verify`] at `now` (Unix seconds) for a token verified before; a new token is
    /// verified against the system clock.
    pub(crate) fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut id = [0u8; 32];
        id.copy_from_slice(digest.as_ref());
        let leeway = self.leeway.as_secs();
        {
            let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = verified.get(&id) {
                if now > v.exp.saturating_add(leeway) {
                    verified.remove(&id);
                    return Err(TokenError::Invalid("it has expired".into()));
                }
                if now.saturating_add(leeway) < v.nbf {
                    return Err(TokenError::Invalid("it is not valid yet (nbf)".into()));
                }
                return Ok(v.claims.clone());
            }
        }
        let (claims, exp, nbf) = self.verify_fully(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= VERIFIED_KEPT {
            verified.clear();
        }
        verified.insert(
            id,
            Verified {
                claims: claims.clone(),
                exp,
                nbf,
            },
        );
        Ok(claims)
    }

    /// Verifies `token` from scratch: its claims, `exp` and `nbf` (0 when absent).
    fn verify_fully(&self, token: &str) -> Result<(Claims, u64, u64), TokenError> {
        let invalid = |s: String| TokenError::Invalid(s);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| invalid(format!("it does not parse as a JWT ({e})")))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted (RS256, ES256 or EdDSA only)",
                header.alg
            )));
        }
        let find = |keys: &[Key]| -> Option<usize> {
            keys.iter().position(|k| {
                k.alg == header.alg
                    && match (&header.kid, &k.kid) {
                        (Some(want), Some(have)) => want == have,
                        (None, _) => true,
                        (Some(_), None) => false,
                    }
            })
        };
        let mut keys = self.keys();
        if header.kid.is_none() && keys.iter().filter(|k| k.alg == header.alg).count() > 1 {
            return Err(invalid(
                "it names no key (`kid`) and the JWKS has several for its algorithm".into(),
            ));
        }
        let index = match find(&keys) {
            Some(i) => i,
            None => {
                let message = format!(
                    "no {:?} key with id {:?} in the JWKS",
                    header.alg,
                    header.kid.as_deref().unwrap_or("-")
                );
                if header.kid.is_some() {
                    match self.refresh() {
                        Ok(true) => keys = self.keys(),
                        Ok(false) => {}
                        Err(after) => return Err(TokenError::UnknownKey { message, after }),
                    }
                }
                find(&keys).ok_or_else(|| invalid(message))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &keys[index].key,
            &validation,
        )
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            invalid(match e.kind() {
                K::ExpiredSignature => "it has expired".into(),
                K::ImmatureSignature => "it is not valid yet (nbf)".into(),
                K::InvalidIssuer => format!("its issuer is not {}", self.issuer),
                K::InvalidAudience => format!("its audience does not include {}", self.audience),
                K::InvalidSignature => "its signature does not verify".into(),
                K::MissingRequiredClaim(c) => format!("it has no `{c}` claim"),
                other => format!("it is malformed ({other:?})"),
            })
        })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| crate::access::valid_principal_id(s))
            .ok_or_else(|| invalid("its `sub` is not a valid principal id".into()))?
            .to_owned();
        let roles = strings(claims.get(&self.roles_claim));
        let mut scopes = strings(claims.get("scope"));
        scopes.extend(strings(claims.get("scp")));
        let missing: Vec<String> = self
            .required_scopes
            .iter()
            .filter(|s| !scopes.contains(s))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(TokenError::Scope(missing));
        }
        // NumericDate may be written with a fraction.
        let seconds = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_f64)
                .map_or(0, |f| f as u64)
        };
        let (exp, nbf) = (seconds("exp"), seconds("nbf"));
        Ok((
            Claims {
                subject,
                roles,
                scopes,
            },
            exp,
            nbf,
        ))
    }
}

/// Strings from a claim: an array of strings, or one space-separated string.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Where RFC 9728 puts the metadata of `resource`: `/.well-known/oauth-protected-resource`
/// followed by the resource's path, on the resource's origin.
fn metadata_url(resource: &str) -> Result<String, String> {
    let uri: http::Uri = resource
        .parse()
        .map_err(|_| format!("`{resource}` is not a URL"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(format!(
            "`{resource}` must be this server's absolute MCP URL, e.g. https://mcp.example.com/mcp (tokens' `aud`)"
        ));
    };
    if scheme != "https" && scheme != "http" {
        return Err(format!("`{resource}` must be an https:// URL"));
    }
    if uri.query().is_some() || resource.contains('#') {
        return Err(format!("`{resource}` must have no query or fragment"));
    }
    let path = uri.path().trim_end_matches('/');
    Ok(format!(
        "{scheme}://{authority}/.well-known/oauth-protected-resource{path}"
    ))
}
