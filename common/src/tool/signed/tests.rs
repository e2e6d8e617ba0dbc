//! Signing and verifying definitions: what verifies, and every way a definition or signature
//! that was tampered with is caught.

use serde_json::json;

use super::*;

fn definition() -> Definition {
    serde_json::from_value(json!({
        "name": "greet",
        "command": ["/bin/echo", "hello", "{{who}}"],
        "params": {"who": {"type": "string", "pattern": "^[a-z]+$"}},
        "env": {"LANG": {"literal": "C"}, "TOKEN": {"secret": "${env:TOKEN}"}},
        "timeout_ms": 5000,
        "max_output": 1024
    }))
    .expect("a definition")
}

#[test]
fn a_signed_definition_verifies_and_renders_checked_arguments() {
    let (key, _) = SigningKey::generate();
    let bytes = definition().canonical();
    let signature = key.sign(&bytes);
    let verifier = Verifier::new(vec![key.public()]);
    let compiled = verifier.verify("greet", &bytes, &signature).unwrap();
    let args = json!({"who": "world"});
    assert_eq!(
        compiled.render(args.as_object()).unwrap().0,
        ["/bin/echo", "hello", "world"]
    );
    let bad = json!({"who": "x; id"});
    let errors = compiled.render(bad.as_object()).unwrap_err();
    assert!(
        errors[0].to_string().starts_with("parameter `who`"),
        "{errors:?}"
    );
    // The second call is served from the cache and answers the same.
    assert!(verifier.verify("greet", &bytes, &signature).is_ok());
}

#[test]
fn any_change_to_the_bytes_or_the_signature_is_refused_naming_the_tool() {
    let (key, _) = SigningKey::generate();
    let bytes = definition().canonical();
    let signature = key.sign(&bytes);
    let verifier = Verifier::new(vec![key.public()]);

    let mut changed = definition();
    changed.command[0] = CommandElement::Arg("/bin/sh".into());
    let err = verifier
        .verify("greet", &changed.canonical(), &signature)
        .unwrap_err();
    assert!(matches!(err, Unverified::Signature { .. }), "{err:?}");
    assert!(err.to_string().contains("tool `greet`"), "{err}");
    assert!(err.to_string().contains(&key.public().id()), "{err}");

    let mut flipped = signature.clone();
    flipped[10] ^= 1;
    assert!(verifier.verify("greet", &bytes, &flipped).is_err());

    let (other, _) = SigningKey::generate();
    assert!(
        verifier
            .verify("greet", &bytes, &other.sign(&bytes))
            .is_err()
    );

    // A signature over the bare JSON (without the domain prefix) is not one over the
    // definition.
    let bare = other.pair.sign(&bytes).as_ref().to_vec();
    assert!(!other.public().verifies(&bytes, &bare));
}

#[test]
fn a_definition_signed_for_one_tool_is_not_accepted_for_another() {
    let (key, _) = SigningKey::generate();
    let bytes = definition().canonical();
    let verifier = Verifier::new(vec![key.public()]);
    let err = verifier
        .verify("deploy-prod", &bytes, &key.sign(&bytes))
        .unwrap_err();
    assert_eq!(
        err,
        Unverified::OtherTool {
            tool: "deploy-prod".into(),
            signed: "greet".into()
        }
    );
}

#[test]
fn a_signed_definition_that_does_not_compile_is_refused_with_its_problems() {
    let (key, _) = SigningKey::generate();
    let mut d = definition();
    d.command.push(CommandElement::Arg("{{nope}}".into()));
    let bytes = d.canonical();
    let err = Verifier::new(vec![key.public()])
        .verify("greet", &bytes, &key.sign(&bytes))
        .unwrap_err();
    assert!(err.to_string().contains("command[3]"), "{err}");
    let garbage = b"{\"name\": 1}".to_vec();
    let err = Verifier::new(vec![key.public()])
        .verify("greet", &garbage, &key.sign(&garbage))
        .unwrap_err();
    assert!(matches!(err, Unverified::Unreadable { .. }), "{err:?}");
}

#[test]
fn keys_round_trip_through_their_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let (key, private) = SigningKey::generate();
    std::fs::write(dir.path().join("k.key"), &private).unwrap();
    std::fs::write(dir.path().join("k.pub"), key.public().to_pem()).unwrap();
    let loaded = SigningKey::load(&dir.path().join("k.key")).unwrap();
    let public = PublicKey::load(&dir.path().join("k.pub")).unwrap();
    assert_eq!(public.id(), key.public().id());
    let bytes = definition().canonical();
    assert!(public.verifies(&bytes, &loaded.sign(&bytes)));

    let err = PublicKey::load(&dir.path().join("k.key")).unwrap_err();
    assert!(err.to_string().contains("not a `PUBLIC KEY`"), "{err}");
    let err = SigningKey::load(&dir.path().join("k.pub")).unwrap_err();
    assert!(err.to_string().contains("not a `PRIVATE KEY`"), "{err}");
    let err = PublicKey::load(&dir.path().join("missing.pub")).unwrap_err();
    assert!(err.to_string().contains("missing.pub"), "{err}");
}

#[test]
fn a_signature_file_round_trips_and_names_its_problems() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate();
    let d = definition();
    let sigs = Signatures::sign(&key, [&d]);
    let path = Signatures::path_for(&dir.path().join("mcpfier.yaml"));
    assert!(path.ends_with("mcpfier.yaml.sig"));
    std::fs::write(&path, sigs.to_text()).unwrap();
    let read = Signatures::read(&path).unwrap();
    let signature = read.of("greet").unwrap().unwrap();
    assert!(read.key().unwrap().verifies(&d.canonical(), &signature));
    assert!(read.of("other").is_none());

    std::fs::write(&path, "not json").unwrap();
    let err = Signatures::read(&path).unwrap_err();
    assert!(err.to_string().contains("mcpfier catalog sign"), "{err}");
}

#[test]
fn env_values_with_references_are_secrets_and_the_rest_literals() {
    assert_eq!(EnvValue::of("C.UTF-8"), EnvValue::Literal("C.UTF-8".into()));
    assert_eq!(
        EnvValue::of("Bearer ${env:T}"),
        EnvValue::Secret("Bearer ${env:T}".into())
    );
    assert_eq!(
        EnvValue::of("${file:/run/s}"),
        EnvValue::Secret("${file:/run/s}".into())
    );
}

#[test]
fn hex_round_trips() {
    assert_eq!(hex(&[0, 15, 255]), "000fff");
    assert_eq!(unhex("000fFF"), Some(vec![0, 15, 255]));
    assert_eq!(unhex("abc"), None);
    assert_eq!(unhex("zz"), None);
}
