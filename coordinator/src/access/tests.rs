//! API keys, roles and the checks of `server.auth`, without a server.

use super::*;
use serde_json::json;

fn access(yaml: &str) -> (Access, Vec<Problem>) {
    let config: Config = yaml_serde::from_str(yaml).expect("the test config parses");
    let mut problems = Vec::new();
    let access = Access::build(&config, std::path::Path::new("."), &mut problems);
    (access, problems)
}

fn config_with(key: &str) -> String {
    format!(
        "server:\n  auth:\n    api_keys:\n      - {{id: ci-bot, hash: \"{}\", roles: [ops]}}\n      - {{id: viewer, hash: \"{}\", roles: [watch]}}\nroles:\n  ops:\n    tools: [\"deploy-*\", system-info]\n    deny: [deploy-prod]\n  watch:\n    tools: []\n    fleet: read\n",
        key_hash(key),
        key_hash("mcpf_other")
    )
}

#[test]
fn a_new_key_authenticates_its_principal_and_nothing_else_does() {
    let key = new_key().unwrap();
    assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 64);
    assert_ne!(key, new_key().unwrap());
    let (access, problems) = access(&config_with(&key));
    assert!(problems.is_empty(), "{problems:?}");
    let header = format!("Bearer {key}");
    let who = access
        .authenticate(Some(header.as_bytes()), None)
        .unwrap()
        .unwrap();
    assert_eq!(who.id, "ci-bot");
    assert_eq!(who.roles, ["ops"]);
    let lower = format!("bearer {key}");
    assert!(access.authenticate(Some(lower.as_bytes()), None).is_ok());
    for (header, want) in [
        (None, AuthError::Missing),
        (Some("Basic abc"), AuthError::Malformed),
        (Some("Bearer"), AuthError::Malformed),
        (Some("Bearer  "), AuthError::Malformed),
        (Some("Bearer mcpf_nope"), AuthError::Invalid),
    ] {
        assert_eq!(
            access.authenticate(header.map(str::as_bytes), None),
            Err(want),
            "{header:?}"
        );
    }
    // The key itself in place of its hash does not authenticate.
    let hash = key_hash(&key);
    let header = format!("Bearer {hash}");
    assert_eq!(
        access.authenticate(Some(header.as_bytes()), None),
        Err(AuthError::Invalid)
    );
}

#[test]
fn a_credential_in_the_url_is_refused_even_with_a_good_header() {
    let key = new_key().unwrap();
    let (access, _) = access(&config_with(&key));
    let header = format!("Bearer {key}");
    for query in ["access_token=x", "a=1&api_key=x", "TOKEN", "key="] {
        assert!(
            matches!(
                access.authenticate(Some(header.as_bytes()), Some(query)),
                Err(AuthError::InQuery(_))
            ),
            "{query}"
        );
    }
    assert!(
        access
            .authenticate(Some(header.as_bytes()), Some("session=1"))
            .is_ok()
    );
}

#[test]
fn roles_grant_the_union_of_their_tools_minus_what_any_denies() {
    let key = new_key().unwrap();
    let (access, _) = access(&config_with(&key));
    let ops = Principal {
        id: "ci-bot".into(),
        roles: vec!["ops".into()],
        method: Method::ApiKey,
        scopes: Vec::new(),
    };
    assert!(access.may_call(Some(&ops), "deploy-app"));
    assert!(access.may_call(Some(&ops), "system-info"));
    assert!(!access.may_call(Some(&ops), "deploy-prod"));
    assert!(!access.may_call(Some(&ops), "rm-everything"));
    assert!(!access.may_read_fleet(Some(&ops)));
    assert!(!access.may_call(None, "system-info"));
    let both = Principal {
        id: "x".into(),
        roles: vec!["watch".into(), "ops".into()],
        method: Method::ApiKey,
        scopes: Vec::new(),
    };
    assert!(access.may_read_fleet(Some(&both)));
    assert!(access.may_call(Some(&both), "deploy-app"));
    assert!(!access.may_call(Some(&both), "deploy-prod"));
    // Without server.auth everything is allowed, as before.
    let open = Access::open();
    assert!(open.may_call(None, "anything") && open.may_read_fleet(None));
    assert_eq!(open.authenticate(None, Some("token=x")), Ok(None));
}

#[test]
fn bad_auth_config_names_what_to_fix() {
    let (_, problems) = access(
        "server:\n  auth:\n    api_keys:\n      - {id: \"bad id\", hash: mcpf_abc, roles: [nope]}\n      - {id: ok, hash: \"sha256:00\"}\n      - {id: ok, hash: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"}\nroles:\n  r: {tools: [\"[\"]}\n",
    );
    let shown: Vec<_> = problems
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    let text = shown.join("\n");
    for want in [
        "roles.r.tools: `[` is not a valid glob",
        "server.auth.api_keys[0].id: `bad id` is not a valid id",
        "server.auth.api_keys[0].hash: must be `sha256:`",
        "server.auth.api_keys[0].roles[0]: no role `nope` under `roles` (roles are: r)",
        "server.auth.api_keys[1].hash: must be",
        "server.auth.api_keys[2].id: another key already has id `ok`",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        !text.contains("mcpf_abc"),
        "a key-like value is echoed:\n{text}"
    );
    let (_, problems) = access("server:\n  auth: {}\n");
    assert!(
        problems[0].message.contains("lists no way to authenticate"),
        "{problems:?}"
    );
}

#[test]
fn oauth_config_refuses_a_relative_audience_and_a_jwks_with_only_a_symmetric_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("jwks.json"),
        r#"{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}"#,
    )
    .unwrap();
    let config: Config = yaml_serde::from_str(
        "server:\n  auth:\n    oauth: {issuer: https://a.test, audience: mcp, jwks_file: jwks.json}\n",
    )
    .unwrap();
    let mut problems = Vec::new();
    let access = Access::build(&config, dir.path(), &mut problems);
    let text: Vec<_> = problems
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    let text = text.join("\n");
    assert!(
        text.contains("server.auth.oauth.audience: `mcp` must be this server's absolute MCP URL"),
        "{text}"
    );
    assert!(
        text.contains("server.auth.oauth.jwks_file:") && text.contains("holds no usable key"),
        "{text}"
    );
    assert!(access.oauth().is_none());
}

/// base64url without padding, for the test's JWK.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn a_token_verified_once_is_still_refused_once_it_expires() {
    use ring::signature::KeyPair;
    let dir = tempfile::tempdir().unwrap();
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": b64url(pair.public_key().as_ref())}]});
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let config: Config = yaml_serde::from_str(
        "server:\n  auth:\n    oauth: {issuer: https://a.test, audience: \"https://m.test/mcp\", jwks_file: jwks.json, leeway: 0s}\n",
    )
    .unwrap();
    let mut problems = Vec::new();
    let access = Access::build(&config, dir.path(), &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k".into());
    let claims = serde_json::json!({"iss": "https://a.test", "aud": "https://m.test/mcp", "sub": "s", "exp": now + 2});
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_ref()),
    )
    .unwrap();
    let bearer = format!("Bearer {token}");
    let who = access
        .authenticate(Some(bearer.as_bytes()), None)
        .unwrap()
        .unwrap();
    assert_eq!((who.id.as_str(), who.method), ("s", Method::OAuth));
    // Verified and kept; still refused once `exp` has passed (the clock moved on 3 s).
    let oauth = access.oauth().unwrap();
    assert!(oauth.verify_at(&token, now).is_ok());
    let e = oauth.verify_at(&token, now + 3).unwrap_err();
    assert_eq!(
        AuthError::Token(e).to_string(),
        "the access token is not valid: it has expired"
    );
}

fn catalog(yaml: &str) -> crate::catalog::Catalog {
    crate::catalog::parse(
        yaml,
        std::path::Path::new("/tmp/mcpfier.yaml"),
        &Default::default(),
    )
    .expect("the test config is valid")
}

fn as_roles(roles: &[&str]) -> Principal {
    Principal {
        id: "p".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        method: Method::ApiKey,
        scopes: Vec::new(),
    }
}

const NARROWING: &str = r#"
roles:
  staging-only:
    tools: [deploy]
    args: {deploy: {env: {enum: [staging]}, replicas: {maximum: 2}}}
  qa-only:
    tools: [deploy]
    args: {deploy: {env: {enum: [qa]}}}
  anything:
    tools: [deploy]
  slow: {tools: [deploy], limits: {calls_per_minute: 10, concurrent: 1}}
  fast: {tools: [deploy], limits: {calls_per_minute: 100}}
tools:
  - name: deploy
    command: [/bin/echo, "{{env}}", "{{replicas}}"]
    params:
      env: {type: string, enum: [staging, qa, prod]}
      replicas: {type: integer, default: 1}
"#;

#[test]
fn a_principal_gets_the_union_of_its_roles_narrowings_and_the_most_generous_limits() {
    let c = catalog(NARROWING);
    let tool = c.tool("deploy").unwrap();
    let args = |v: serde_json::Value| v.as_object().cloned();
    let check = |roles: &[&str], v| {
        c.access
            .check_narrowed(Some(&as_roles(roles)), tool, args(v).as_ref())
    };
    assert!(check(&["staging-only"], json!({"env": "staging"})).is_ok());
    let why = check(&["staging-only"], json!({"env": "prod", "replicas": 3})).unwrap_err();
    assert!(
        why.contains("role `staging-only`")
            && why.contains("`env` must be one of")
            && why.contains("`replicas` must be at most 2"),
        "{why}"
    );
    // The default counts too: it is what would run.
    assert!(check(&["staging-only"], json!({"env": "staging", "replicas": 2})).is_ok());
    // Either role's rules will do.
    assert!(check(&["staging-only", "qa-only"], json!({"env": "qa"})).is_ok());
    let why = check(&["staging-only", "qa-only"], json!({"env": "prod"})).unwrap_err();
    assert!(
        why.contains("role `staging-only`") && why.contains("role `qa-only`"),
        "{why}"
    );
    // A role that allows the tool without narrowing it allows every valid value.
    assert!(check(&["staging-only", "anything"], json!({"env": "prod"})).is_ok());
    // Without authentication (stdio) nothing is narrowed.
    assert!(
        c.access
            .check_narrowed(None, tool, args(json!({"env": "prod"})).as_ref())
            .is_ok()
    );

    assert_eq!(
        c.access.quota(&as_roles(&["slow", "fast"])),
        Quota {
            calls_per_minute: Some(100),
            concurrent: Some(1)
        }
    );
    assert!(c.access.quota(&as_roles(&["anything"])).unlimited());
}
