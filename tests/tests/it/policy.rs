//! The agent's policy, attacked the way a stolen coordinator key would: a raw gRPC client
//! holding the coordinator certificate sends `Execute` requests that set every field by
//! hand. Each refusal is typed (`policy`), names the setting that refused it, and nothing has
//! run: the commands append to a ledger, which stays as it was.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use mcpfier_exec::{ContainerSpec, ErrorKind, Execution, Pull, wire};
use mcpfier_proto::v1::{self, agent_client::AgentClient, execute_event::Event};
use mcpfier_tests::{Agent, Certs, Scratch, containers_with_label, read_lines, test_image};

struct Target {
    _scratch: Scratch,
    rt: tokio::runtime::Runtime,
    client: AgentClient<tonic::transport::Channel>,
    _agent: Agent,
    ledger: PathBuf,
    work: PathBuf,
    data: PathBuf,
    outside: PathBuf,
}

impl Target {
    fn start() -> Target {
        let scratch = Scratch::new();
        let root = std::fs::canonicalize(scratch.path()).unwrap();
        let (work, data, outside) = (root.join("work"), root.join("data"), root.join("outside"));
        for d in [&work, &data, &outside] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::copy("/bin/sh", outside.join("sh")).unwrap();
        std::os::unix::fs::symlink(&outside, work.join("link")).unwrap();
        let ledger = root.join("ledger");
        std::fs::write(&ledger, "").unwrap();
        let certs = Certs::init(&root.join("certs"));
        certs.issue("coordinator", "coord");
        certs.issue("agent", "p1");
        let agent = Agent::start(
            &root,
            &certs,
            "p1",
            &format!(
                "policy:\n  allow_programs: [\"/bin/*\", \"/usr/bin/*\"]\n  allow_workdirs: [\"{}\"]\n  allow_mounts: [{{source: \"{}\"}}]\n  allow_images: [\"localhost/mcpfier-test:*\"]\n  max_timeout: 1m",
                work.display(),
                data.display()
            ),
        );
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = agent.raw_client(&rt, &certs);
        Target {
            _scratch: scratch,
            rt,
            client,
            _agent: agent,
            ledger,
            work,
            data,
            outside,
        }
    }

    /// A command that appends `tag` to the ledger.
    fn ledger_exec(&self, tag: &str) -> Execution {
        Execution {
            timeout: Duration::from_secs(10),
            ..Execution::new([
                "/bin/sh".to_owned(),
                "-c".into(),
                format!("echo {tag} >> {}", self.ledger.display()),
            ])
        }
    }

    fn ledger(&self) -> Vec<String> {
        read_lines(&self.ledger)
    }

    /// Sends `req` and follows it to its end: the command's exit code, or the refusal.
    fn send(&self, req: v1::ExecuteRequest) -> Result<Option<i32>, tonic::Status> {
        let mut client = self.client.clone();
        self.rt.block_on(async move {
            let mut stream = tokio::time::timeout(Duration::from_secs(20), client.execute(req))
                .await
                .expect("an answer within 20 s")?
                .into_inner();
            while let Some(event) = stream.next().await {
                if let Some(Event::Finished(f)) = event?.event {
                    assert!(f.error.is_empty(), "the call failed to start: {}", f.error);
                    return Ok(f.exit_code);
                }
            }
            panic!("the stream ended without Finished")
        })
    }

    /// Sends `exec` changed by `attack` and checks it is refused as `policy`, by a message
    /// that names `setting`, with nothing run.
    fn refused(&self, what: &str, setting: &str, exec: Execution) {
        let before = self.ledger();
        let call_id = uuid_like(what);
        let req = wire::request(&exec, &call_id, "r", "t");
        let status = self.send(req).expect_err(what);
        assert_eq!(
            wire::refusal_kind(&status),
            Some(ErrorKind::Policy),
            "{what}: {status:?}"
        );
        assert!(
            status.message().contains(setting),
            "{what}: the refusal should name {setting}: {}",
            status.message()
        );
        assert_eq!(self.ledger(), before, "{what}: something ran");
        assert!(
            containers_with_label(&format!("mcpfier.call_id={call_id}")).is_empty(),
            "{what}: a container was created"
        );
    }
}

fn uuid_like(what: &str) -> String {
    let slug: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("attack-{slug}-{}", std::process::id())
}

fn container(image: &str) -> ContainerSpec {
    ContainerSpec {
        image: image.into(),
        memory: 64 << 20,
        cpus: 1.0,
        pids: 64,
        network: "none".into(),
        read_only: true,
        user: "65534:65534".into(),
        mounts: vec![],
        pull: Pull::Never,
    }
}

fn with_env(mut exec: Execution, name: &str, value: &str) -> Execution {
    exec.env.push(mcpfier_exec::EnvVar {
        name: name.into(),
        value: value.into(),
        secret: false,
    });
    exec
}

#[test]
fn a_stolen_coordinator_key_cannot_widen_a_local_call() {
    let t = Target::start();
    // The control: an allowed call runs, so the ledger can show what ran.
    let mut ok = t.ledger_exec("control");
    ok.workdir = Some(t.work.clone());
    assert_eq!(
        t.send(wire::request(&ok, "control", "r", "t")).unwrap(),
        Some(0)
    );
    assert_eq!(t.ledger(), ["control"]);

    let planted = t.outside.join("sh");
    let mut exec = t.ledger_exec("program");
    exec.argv[0] = planted.display().to_string();
    t.refused("a program outside allow_programs", "allow_programs", exec);

    let mut exec = t.ledger_exec("path");
    exec.argv[0] = "sh".into();
    let exec = with_env(exec, "PATH", &format!("{}:/bin", t.outside.display()));
    t.refused(
        "a PATH that finds a planted program",
        "allow_programs",
        exec,
    );

    let exec = with_env(t.ledger_exec("preload"), "LD_PRELOAD", "/tmp/evil.so");
    t.refused("LD_PRELOAD", "deny_env", exec);
    let exec = with_env(t.ledger_exec("glibc"), "GLIBC_TUNABLES", "x");
    t.refused("GLIBC_TUNABLES", "deny_env", exec);

    for (what, dir) in [
        ("workdir /root", PathBuf::from("/root")),
        (
            "a workdir symlink out of the allowed tree",
            t.work.join("link"),
        ),
        ("a workdir with ..", t.work.join("../outside")),
    ] {
        let mut exec = t.ledger_exec("workdir");
        exec.workdir = Some(dir);
        t.refused(what, "allow_workdirs", exec);
    }

    let mut exec = t.ledger_exec("grace");
    exec.kill_grace = Duration::from_secs(3600);
    t.refused("a one-hour kill grace", "max_kill_grace", exec);
    let mut exec = t.ledger_exec("timeout");
    exec.timeout = Duration::from_secs(3600);
    t.refused("a one-hour timeout", "max_timeout", exec);
    let mut exec = t.ledger_exec("output");
    exec.max_output = 1 << 30;
    t.refused("a 1 GiB output cap", "max_output", exec);
    assert_eq!(t.ledger(), ["control"]);
}

#[test]
fn a_stolen_coordinator_key_cannot_widen_a_container_call() {
    let image = test_image();
    let t = Target::start();
    let in_container = |spec: ContainerSpec| Execution {
        container: Some(spec),
        timeout: Duration::from_secs(20),
        ..Execution::new([
            "/bin/sh",
            "-c",
            "echo pwned > /host/pwned; cat /proc/net/dev",
        ])
    };
    // The control: an allowed read-only mount of the allowed directory runs.
    std::fs::write(t.data.join("in"), "data\n").unwrap();
    let mut spec = container(image);
    spec.mounts.push(mcpfier_exec::BindMount {
        source: t.data.display().to_string(),
        target: "/data".into(),
        rw: false,
    });
    let control = Execution {
        container: Some(spec),
        timeout: Duration::from_secs(20),
        ..Execution::new(["/bin/cat", "/data/in"])
    };
    assert_eq!(
        t.send(wire::request(&control, "container-control", "r", "t"))
            .unwrap(),
        Some(0)
    );

    let mount = |source: &Path, rw: bool| {
        let mut s = container(image);
        s.mounts.push(mcpfier_exec::BindMount {
            source: source.display().to_string(),
            target: "/host".into(),
            rw,
        });
        s
    };
    t.refused(
        "the host's root mounted writable",
        "allow_mounts",
        in_container(mount(Path::new("/"), true)),
    );
    t.refused(
        "the allowed directory mounted writable",
        "allow_mounts",
        in_container(mount(&t.data, true)),
    );
    t.refused(
        "a directory outside allow_mounts",
        "allow_mounts",
        in_container(mount(&t.outside, false)),
    );
    t.refused(
        "the host network",
        "allow_networks",
        in_container(ContainerSpec {
            network: "host".into(),
            ..container(image)
        }),
    );
    for user in ["0:0", "root"] {
        t.refused(
            &format!("user {user}"),
            "allow_root",
            in_container(ContainerSpec {
                user: user.into(),
                ..container(image)
            }),
        );
    }
    t.refused(
        "a writable root filesystem",
        "allow_writable_root",
        in_container(ContainerSpec {
            read_only: false,
            ..container(image)
        }),
    );
    t.refused(
        "an image outside allow_images",
        "allow_images",
        in_container(container("docker.io/library/alpine:latest")),
    );
    let mut exec = in_container(container(image));
    exec.kill_grace = Duration::from_secs(3600);
    t.refused("a container's one-hour kill grace", "max_kill_grace", exec);
    let exec = with_env(in_container(container(image)), "LD_PRELOAD", "/x.so");
    t.refused("a container's LD_PRELOAD", "deny_env", exec);
}
