//! The agent policy's checks, field by field, against real files and directories.

use super::*;
use mcpfier_exec::{BindMount, EnvVar, Pull};

fn local(argv: &[&str]) -> Execution {
    Execution {
        timeout: Duration::from_secs(10),
        ..Execution::new(argv.iter().copied())
    }
}

fn spec() -> ContainerSpec {
    ContainerSpec {
        image: "localhost/tools:1.2".into(),
        memory: 512 << 20,
        cpus: 1.0,
        pids: 256,
        network: "none".into(),
        read_only: true,
        user: "65534:65534".into(),
        mounts: vec![],
        pull: Pull::Never,
    }
}

fn container(spec: ContainerSpec) -> Execution {
    Execution {
        container: Some(spec),
        ..local(&["/bin/true"])
    }
}

fn env(name: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: "x".into(),
        secret: false,
    }
}

#[test]
fn the_default_policy_admits_an_ordinary_call_and_binds_its_program() {
    let p = Policy::default();
    let exec = p.admit("t", local(&["true"])).unwrap();
    let program = exec.program.unwrap();
    assert!(
        program.is_absolute() && program.ends_with("true"),
        "{program:?}"
    );
    assert_eq!(
        exec.argv[0], "true",
        "the child still sees argv[0] as given"
    );
}

#[test]
fn programs_outside_allow_programs_are_refused_after_path_lookup() {
    let p = Policy {
        allow_programs: Globs::new(&["/usr/bin/*"]).unwrap(),
        ..Policy::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("env");
    std::fs::write(&fake, "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A PATH that finds the planted program first.
    let mut e = local(&["env"]);
    e.env.push(EnvVar {
        name: "PATH".into(),
        value: format!("{}:/usr/bin", dir.path().display()),
        secret: false,
    });
    let err = p.admit("t", e).unwrap_err();
    assert!(matches!(err, Refusal::Program { .. }), "{err}");
    assert!(
        err.to_string().contains(&fake.display().to_string()),
        "{err}"
    );
    // Absolute paths, `..` and relative paths.
    assert!(p.admit("t", local(&["/usr/bin/env"])).is_ok());
    assert!(matches!(
        p.admit("t", local(&["/bin/sh"])),
        Err(Refusal::Program { .. })
    ));
    assert!(matches!(
        p.admit("t", local(&["/usr/bin/../../bin/sh"])),
        Err(Refusal::ProgramPath(_))
    ));
    assert!(matches!(
        p.admit("t", local(&["./sh"])),
        Err(Refusal::ProgramPath(_))
    ));
    let missing = p.admit("t", local(&["no-such-program-xyz"])).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::StartFailed, "{missing}");
}

#[test]
fn loader_variables_are_refused_by_default_and_named() {
    let p = Policy::default();
    for name in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "DYLD_INSERT_LIBRARIES",
        "GCONV_PATH",
    ] {
        let mut e = local(&["/bin/true"]);
        e.env.push(env(name));
        let err = p.admit("t", e).unwrap_err();
        assert!(matches!(err, Refusal::Env { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{err}");
        assert!(!err.to_string().contains("=x"), "no value in {err}");
    }
    let mut e = local(&["/bin/true"]);
    e.env.push(env("LANG"));
    assert!(p.admit("t", e).is_ok());
    // Containers too.
    let mut c = container(spec());
    c.env.push(env("LD_PRELOAD"));
    assert!(matches!(p.admit("t", c), Err(Refusal::Env { .. })));
}

#[test]
fn working_directories_are_checked_after_symlinks() {
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("work");
    std::fs::create_dir(&allowed).unwrap();
    let outside = root.path().join("secret");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("link")).unwrap();
    let p = Policy {
        allow_workdirs: vec![std::fs::canonicalize(&allowed).unwrap()],
        ..Policy::default()
    };
    let with_dir = |d: &Path| Execution {
        workdir: Some(d.to_owned()),
        ..local(&["/bin/true"])
    };
    let ok = p.admit("t", with_dir(&allowed)).unwrap();
    assert_eq!(ok.workdir, Some(std::fs::canonicalize(&allowed).unwrap()));
    for bad in [
        outside.clone(),
        allowed.join("link"),
        allowed.join("../secret"),
    ] {
        let err = p.admit("t", with_dir(&bad)).unwrap_err();
        assert!(
            matches!(err, Refusal::Workdir { .. }),
            "{}: {err}",
            bad.display()
        );
    }
    // `/srv/work` does not allow `/srv/workshop`.
    let sibling = root.path().join("workshop");
    std::fs::create_dir(&sibling).unwrap();
    assert!(matches!(
        p.admit("t", with_dir(&sibling)),
        Err(Refusal::Workdir { .. })
    ));
    let err = p
        .admit("t", with_dir(&allowed.join("missing")))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StartFailed, "{err}");
}

#[test]
fn each_limit_refuses_with_its_name() {
    let p = Policy {
        allow_tools: Globs::new(&["safe-*"]).unwrap(),
        ..Policy::default()
    };
    assert!(p.admit("safe-ls", local(&["/bin/true"])).is_ok());
    assert!(matches!(
        p.admit("rm", local(&["/bin/true"])),
        Err(Refusal::Tool { .. })
    ));
    let long = Execution {
        timeout: Duration::from_secs(3600),
        ..local(&["/bin/true"])
    };
    let err = p.admit("safe-ls", long).unwrap_err();
    assert!(err.to_string().contains("max_timeout"), "{err}");
    let grace = Execution {
        kill_grace: Duration::from_secs(3600),
        ..local(&["/bin/true"])
    };
    let err = p.admit("safe-ls", grace).unwrap_err();
    assert!(err.to_string().contains("max_kill_grace"), "{err}");
    let big = Execution {
        max_output: 1 << 30,
        ..local(&["/bin/true"])
    };
    let err = p.admit("safe-ls", big).unwrap_err();
    assert!(err.to_string().contains("max_output"), "{err}");
    let no_local = Policy {
        allow_local: false,
        ..Policy::default()
    };
    assert_eq!(
        no_local.admit("x", local(&["/bin/true"])).unwrap_err(),
        Refusal::Local
    );
}

#[test]
fn container_calls_meet_the_image_and_limit_rules() {
    let p = Policy {
        allow_images: Globs::new(&["localhost/tools:*"]).unwrap(),
        max_memory: ByteSize(1 << 30),
        ..Policy::default()
    };
    assert!(p.admit("t", container(spec())).is_ok());
    let other = ContainerSpec {
        image: "docker.io/evil:latest".into(),
        ..spec()
    };
    assert!(matches!(
        p.admit("t", container(other)),
        Err(Refusal::Image { .. })
    ));
    let big = ContainerSpec {
        memory: 2 << 30,
        ..spec()
    };
    let err = p.admit("t", container(big)).unwrap_err().to_string();
    assert!(err.contains("max_memory"), "{err}");
    let no = Policy {
        allow_containers: false,
        ..Policy::default()
    };
    assert_eq!(
        no.admit("t", container(spec())).unwrap_err(),
        Refusal::Containers
    );
    // allow_local: false does not stop containers, and a container's program is not looked
    // up on this host.
    let local_off = Policy {
        allow_local: false,
        allow_programs: Globs::new(&["/nowhere/*"]).unwrap(),
        ..Policy::default()
    };
    assert!(local_off.admit("t", container(spec())).is_ok());
}

#[test]
fn containers_get_no_network_root_or_writable_root_unless_allowed() {
    let p = Policy::default();
    for network in ["host", "bridge"] {
        let s = ContainerSpec {
            network: network.into(),
            ..spec()
        };
        let err = p.admit("t", container(s)).unwrap_err();
        assert!(matches!(err, Refusal::Network { .. }), "{err}");
    }
    for user in ["0:0", "0", "root", "65534:0", "toor:toor", ""] {
        let s = ContainerSpec {
            user: user.into(),
            ..spec()
        };
        let err = p.admit("t", container(s)).unwrap_err();
        assert!(matches!(err, Refusal::User { .. }), "{user}: {err}");
    }
    let writable = ContainerSpec {
        read_only: false,
        ..spec()
    };
    assert_eq!(
        p.admit("t", container(writable.clone())).unwrap_err(),
        Refusal::WritableRoot
    );
    let open = Policy {
        allow_networks: vec!["none".into(), "bridge".into()],
        allow_root: true,
        allow_writable_root: true,
        ..Policy::default()
    };
    let s = ContainerSpec {
        network: "bridge".into(),
        user: "0:0".into(),
        ..writable
    };
    assert!(open.admit("t", container(s)).is_ok());
}

#[test]
fn bind_mounts_need_an_allowed_source_and_rw_permission() {
    let root = tempfile::tempdir().unwrap();
    let data = std::fs::canonicalize(root.path()).unwrap().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::os::unix::fs::symlink("/", data.join("escape")).unwrap();
    let mount = |source: &Path, rw: bool| ContainerSpec {
        mounts: vec![BindMount {
            source: source.display().to_string(),
            target: "/data".into(),
            rw,
        }],
        ..spec()
    };
    let none = Policy::default();
    let err = none.admit("t", container(mount(&data, false))).unwrap_err();
    assert!(err.to_string().contains("allow_mounts (none)"), "{err}");

    let p = Policy {
        allow_mounts: vec![MountRule {
            source: data.clone(),
            rw: false,
        }],
        ..Policy::default()
    };
    let ok = p
        .admit("t", container(mount(&data.join("sub"), false)))
        .unwrap();
    assert_eq!(
        ok.container.unwrap().mounts[0].source,
        data.join("sub").display().to_string()
    );
    for (source, rw) in [
        (data.join("sub"), true),
        (data.join("escape"), false),
        (PathBuf::from("/"), false),
        (data.join("../"), false),
    ] {
        let err = p.admit("t", container(mount(&source, rw))).unwrap_err();
        assert!(
            matches!(err, Refusal::Mount { .. }),
            "{}: {err}",
            source.display()
        );
    }
    let rw = Policy {
        allow_mounts: vec![MountRule {
            source: data.clone(),
            rw: true,
        }],
        ..Policy::default()
    };
    assert!(rw.admit("t", container(mount(&data, true))).is_ok());
}

#[test]
fn a_policy_with_relative_paths_is_a_config_problem() {
    let p = Policy {
        allow_workdirs: vec![PathBuf::from("work")],
        allow_mounts: vec![MountRule {
            source: PathBuf::from("/srv/../etc"),
            rw: false,
        }],
        ..Policy::default()
    };
    let problems = p.problems().join("\n");
    assert!(problems.contains("policy.allow_workdirs[0]"), "{problems}");
    assert!(
        problems.contains("policy.allow_mounts[0].source"),
        "{problems}"
    );
}

// --- signed tools ---

mod signed {
    use mcpfier_common::tool::signed::{Definition, SigningKey};
    use mcpfier_exec::SignedCall;
    use serde_json::json;

    use super::*;

    fn definition() -> Definition {
        serde_json::from_value(json!({
            "name": "greet",
            "command": ["/bin/echo", "hello", "{{who}}"],
            "params": {"who": {"type": "string", "pattern": "^[a-z]+$"}},
            "env": {"LANG": {"literal": "C"}, "TOKEN": {"secret": "${env:TOKEN}"}},
            "timeout_ms": 10000,
            "max_output": 1048576
        }))
        .unwrap()
    }

    /// A policy trusting a fresh key, and a correct signed call of `greet` made with it.
    fn setup() -> (Policy, Execution) {
        let (key, _) = SigningKey::generate();
        let bytes = definition().canonical();
        let policy = Policy {
            signers: Arc::new(Verifier::new(vec![key.public()])),
            ..Policy::default()
        };
        let exec = Execution {
            env: vec![
                EnvVar {
                    name: "LANG".into(),
                    value: "C".into(),
                    secret: false,
                },
                EnvVar {
                    name: "TOKEN".into(),
                    value: "s3cret".into(),
                    secret: true,
                },
            ],
            signed: Some(SignedCall {
                signature: key.sign(&bytes).into(),
                definition: bytes.into(),
                arguments: r#"{"who":"world"}"#.into(),
            }),
            ..local(&["/bin/echo", "hello", "world"])
        };
        (policy, exec)
    }

    fn refusal(p: &Policy, exec: Execution) -> String {
        p.admit("greet", exec).unwrap_err().to_string()
    }

    #[test]
    fn a_signed_call_as_signed_is_admitted_with_its_secret() {
        let (p, exec) = setup();
        let admitted = p.admit("greet", exec).unwrap();
        assert_eq!(admitted.env[1].value, "s3cret");
    }

    #[test]
    fn an_unsigned_call_is_refused_when_signatures_are_required() {
        let (p, exec) = setup();
        let err = p
            .admit(
                "greet",
                Execution {
                    signed: None,
                    ..exec
                },
            )
            .unwrap_err();
        assert_eq!(err, Refusal::Unsigned("greet".into()));
        assert_eq!(err.kind(), ErrorKind::Policy);
        // Without tool_signers, the same call runs.
        let plain = Execution {
            signed: None,
            ..setup().1
        };
        assert!(Policy::default().admit("greet", plain).is_ok());
    }

    #[test]
    fn arguments_that_break_the_signed_rules_are_refused() {
        let (p, mut exec) = setup();
        exec.signed.as_mut().unwrap().arguments = r#"{"who":"x; id"}"#.into();
        exec.argv = vec!["/bin/echo".into(), "hello".into(), "x; id".into()];
        let err = refusal(&p, exec);
        assert!(
            err.contains("break its signed rules: parameter `who`"),
            "{err}"
        );
    }

    #[test]
    fn an_argv_other_than_the_signed_template_renders_is_refused() {
        let (p, mut exec) = setup();
        exec.argv = vec!["/bin/id".into()];
        assert!(refusal(&p, exec).ends_with("differs from its signed definition in argv"));
    }

    #[test]
    fn every_other_signed_field_is_checked() {
        let (p, exec) = setup();
        let cases: Vec<(&str, Execution)> = vec![
            ("env.LANG", {
                let mut e = exec.clone();
                e.env[0].value = "de_DE".into();
                e
            }),
            ("env.LD_AUDIT", {
                let mut e = exec.clone();
                e.env.push(EnvVar {
                    name: "LD_AUDIT".into(),
                    value: "x".into(),
                    secret: true,
                });
                e
            }),
            ("env.TOKEN (missing)", {
                let mut e = exec.clone();
                e.env.pop();
                e
            }),
            (
                "workdir",
                Execution {
                    workdir: Some("/root".into()),
                    ..exec.clone()
                },
            ),
            (
                "timeout",
                Execution {
                    timeout: Duration::from_secs(11),
                    ..exec.clone()
                },
            ),
            (
                "max_output",
                Execution {
                    max_output: 2 << 20,
                    ..exec.clone()
                },
            ),
            (
                "container",
                Execution {
                    container: Some(spec()),
                    ..exec.clone()
                },
            ),
        ];
        for (field, e) in cases {
            let err = refusal(&p, e);
            // LD_AUDIT is caught by deny_env too; the signed check comes first.
            assert!(
                err.ends_with(&format!("differs from its signed definition in {field}")),
                "{field}: {err}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn a_signed_path_parameter_must_arrive_with_its_signed_directory() {
        let d: Definition = serde_json::from_value(json!({
            "name": "greet",
            "command": ["/bin/cat", "{{file}}"],
            "params": {"file": {"type": "path", "within": "/srv/data"}},
            "env": {},
            "timeout_ms": 10000,
            "max_output": 1048576
        }))
        .unwrap();
        let (key, _) = SigningKey::generate();
        let bytes = d.canonical();
        let p = Policy {
            signers: Arc::new(Verifier::new(vec![key.public()])),
            ..Policy::default()
        };
        let path = |within: &str| mcpfier_common::tool::paths::PathArg {
            param: "file".into(),
            value: "a.txt".into(),
            within: within.into(),
            must_exist: false,
        };
        let exec = Execution {
            paths: vec![path("/srv/data")],
            signed: Some(SignedCall {
                signature: key.sign(&bytes).into(),
                definition: bytes.into(),
                arguments: r#"{"file":"a.txt"}"#.into(),
            }),
            ..local(&["/bin/cat", "\0path:file\0"])
        };
        assert!(p.admit("greet", exec.clone()).is_ok());
        let widened = Execution {
            paths: vec![path("/")],
            ..exec.clone()
        };
        assert!(
            refusal(&p, widened).ends_with("differs from its signed definition in paths"),
            "a coordinator can't widen the directory"
        );
        let dropped = Execution {
            paths: vec![],
            ..exec
        };
        assert!(refusal(&p, dropped).ends_with("differs from its signed definition in paths"));
    }

    #[test]
    fn a_definition_changed_after_signing_is_refused_naming_the_tool() {
        let (p, mut exec) = setup();
        let mut d = definition();
        d.timeout_ms = 3_600_000;
        let signed = exec.signed.as_mut().unwrap();
        signed.definition = d.canonical().into();
        exec.timeout = Duration::from_secs(3600);
        let err = refusal(&p, exec);
        assert!(
            err.starts_with("tool `greet` is not signed by a key this agent trusts"),
            "{err}"
        );
    }
}
