//! What authenticating a request costs the front door, in this process: an API key (hash
//! and constant-time compare with every configured key) and an OAuth access token (a JWT
//! verified against a JWKS already read: signature, claims, scopes), against a server
//! without authentication. Keys and tokens are made here (ring, jsonwebtoken).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use mcpfier_coordinator::access::Access;
use ring::signature::KeyPair;

use crate::signing::{CALLS, per_call};

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn access(dir: &Path, yaml: &str) -> anyhow::Result<Access> {
    let config: mcpfier_coordinator::config::Config =
        yaml_serde::from_str(yaml).context("the bench's config")?;
    let mut problems = Vec::new();
    let access = Access::build(&config, dir, &mut problems);
    anyhow::ensure!(problems.is_empty(), "{problems:?}");
    Ok(access)
}

/// Measures and prints the figures; returns the cost per call of an EdDSA token.
pub fn run(dir: &Path) -> anyhow::Result<Duration> {
    let rng = ring::rand::SystemRandom::new();
    let ed_der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("generate an Ed25519 key"))?;
    let ed = ring::signature::Ed25519KeyPair::from_pkcs8(ed_der.as_ref())
        .map_err(|_| anyhow::anyhow!("read the Ed25519 key"))?;
    let ec_alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let ec_der = ring::signature::EcdsaKeyPair::generate_pkcs8(ec_alg, &rng)
        .map_err(|_| anyhow::anyhow!("generate a P-256 key"))?;
    let ec = ring::signature::EcdsaKeyPair::from_pkcs8(ec_alg, ec_der.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("read the P-256 key"))?;
    let point = ec.public_key().as_ref();
    let jwks = serde_json::json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA", "x": b64url(ed.public_key().as_ref())},
        {"kty": "EC", "crv": "P-256", "kid": "ec", "alg": "ES256", "x": b64url(&point[1..33]), "y": b64url(&point[33..65])},
    ]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string())?;
    let key = mcpfier_coordinator::access::new_key()?;
    let mut keys = String::new();
    for i in 0..9 {
        let other = mcpfier_coordinator::access::new_key()?;
        keys.push_str(&format!(
            "      - {{id: k{i}, hash: \"{}\", roles: [r]}}\n",
            mcpfier_coordinator::access::key_hash(&other)
        ));
    }
    keys.push_str(&format!(
        "      - {{id: bench, hash: \"{}\", roles: [r]}}\n",
        mcpfier_coordinator::access::key_hash(&key)
    ));
    let on = access(
        dir,
        &format!(
            "server:\n  auth:\n    api_keys:\n{keys}    oauth: {{issuer: \"https://auth.bench\", audience: \"https://mcp.bench/mcp\", jwks_file: jwks.json, required_scopes: [\"mcp:tools\"]}}\nroles:\n  r: {{tools: [\"*\"]}}\n"
        ),
    )?;
    let off = access(dir, "roles: {}\n")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://auth.bench", "aud": "https://mcp.bench/mcp", "sub": "bench",
        "roles": ["r"], "scope": "mcp:tools", "exp": now + 3600, "iat": now,
    });
    // `n` distinct tokens (by `jti`), so each is verified from scratch once.
    let tokens = |alg: jsonwebtoken::Algorithm, kid: &str, der: &[u8], n: u32| {
        let key = match alg {
            jsonwebtoken::Algorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_der(der),
            _ => jsonwebtoken::EncodingKey::from_ec_der(der),
        };
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.into());
        (0..n)
            .map(|i| {
                let mut c = claims.clone();
                c["jti"] = serde_json::json!(i);
                jsonwebtoken::encode(&header, &c, &key).map(|t| format!("Bearer {t}"))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    const FRESH: u32 = 2_000;
    let ed_tokens = tokens(
        jsonwebtoken::Algorithm::EdDSA,
        "ed",
        ed_der.as_ref(),
        FRESH + 1,
    )?;
    let ec_tokens = tokens(
        jsonwebtoken::Algorithm::ES256,
        "ec",
        ec_der.as_ref(),
        FRESH + 1,
    )?;
    let api = format!("Bearer {key}");
    for header in [&api, &ed_tokens[0], &ec_tokens[0]] {
        let who = on.authenticate(Some(header.as_bytes()), None);
        anyhow::ensure!(
            matches!(who, Ok(Some(_))),
            "the bench's credential was refused: {who:?}"
        );
    }
    let t_off = per_call(|| {
        std::hint::black_box(off.authenticate(Some(api.as_bytes()), None)).ok();
    });
    let t_key = per_call(|| {
        std::hint::black_box(on.authenticate(Some(api.as_bytes()), None)).ok();
    });
    // The same token again and again, as a session sends it.
    let t_ed = per_call(|| {
        std::hint::black_box(on.authenticate(Some(ed_tokens[0].as_bytes()), None)).ok();
    });
    let t_ec = per_call(|| {
        std::hint::black_box(on.authenticate(Some(ec_tokens[0].as_bytes()), None)).ok();
    });
    let first = |all: &[String]| {
        let started = Instant::now();
        for t in &all[1..] {
            let who = on.authenticate(Some(t.as_bytes()), None);
            assert!(matches!(who, Ok(Some(_))));
        }
        started.elapsed() / FRESH
    };
    let (f_ed, f_ec) = (first(&ed_tokens), first(&ec_tokens));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "\nauthentication, {CALLS} requests each: off {:.2} us; API key (10 configured) {:.2} us; a session's token again: EdDSA {:.2} us, ES256 {:.2} us; a token's first request ({FRESH} tokens, JWKS cached): EdDSA {:.1} us, ES256 {:.1} us",
        us(t_off),
        us(t_key),
        us(t_ed),
        us(t_ec),
        us(f_ed),
        us(f_ec)
    );
    Ok(t_ed.max(t_ec).saturating_sub(t_off))
}
