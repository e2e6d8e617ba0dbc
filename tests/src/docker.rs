//! The Docker side: the busybox test image, imported through the Engine API, and
//! listing containers by label.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The image container tests run: a root filesystem with Debian's static busybox, imported
/// through the Docker Engine API (no registry is needed). Built once per test run.
pub const TEST_IMAGE: &str = "localhost/mcpfier-test:busybox";

/// Like [`TEST_IMAGE`], but with no `/tmp` of its own, as an image built FROM scratch often
/// has: the engine's tmpfs is all the `/tmp` there is.
pub const TEST_IMAGE_WITHOUT_TMP: &str = "localhost/mcpfier-test:busybox-notmp";

/// Builds [`TEST_IMAGE`] if it is not there yet; returns its name.
pub fn test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| import_busybox(TEST_IMAGE, true));
    TEST_IMAGE
}

/// Builds [`TEST_IMAGE_WITHOUT_TMP`] if it is not there yet; returns its name.
pub fn test_image_without_tmp() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| import_busybox(TEST_IMAGE_WITHOUT_TMP, false));
    TEST_IMAGE_WITHOUT_TMP
}

/// Imports a busybox root filesystem as `image` through the Engine API, unless it is there.
fn import_busybox(image: &str, with_tmp: bool) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "no /bin/busybox: run `cargo xtask test` (it installs Debian's busybox-static)"
    );
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let docker = mcpfier_exec::bollard::Docker::connect_with_local_defaults()
            .expect("a Docker socket (the tests need the Docker Engine)")
            .negotiate_version()
            .await
            .expect("the Docker daemon answers");
        if docker.inspect_image(image).await.is_ok() {
            return;
        }
        let mut tar = tar::Builder::new(Vec::new());
        let mut dir = |path: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(if path == "tmp" { 0o1777 } else { 0o755 });
            h.set_size(0);
            tar.append_data(&mut h, path, std::io::empty())
                .expect("tar a directory");
        };
        for d in ["bin", "tmp", "proc", "sys", "dev", "etc", "work"] {
            if d != "tmp" || with_tmp {
                dir(d);
            }
        }
        let data = std::fs::read(busybox).expect("read busybox");
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, "bin/busybox", data.as_slice())
            .expect("tar busybox");
        let list = Command::new(busybox)
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            if applet == "busybox" {
                continue;
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
                .expect("tar a link");
        }
        let passwd = b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n";
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(passwd.len() as u64);
        tar.append_data(&mut h, "etc/passwd", &passwd[..])
            .expect("tar passwd");
        let bytes = tar.into_inner().expect("finish the tar");
        let (repo, tag) = image.rsplit_once(':').expect("repo:tag");
        let options = mcpfier_exec::bollard::query_parameters::CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo(repo)
            .tag(tag)
            .build();
        use futures::StreamExt;
        let mut import = docker.create_image(
            Some(options),
            Some(mcpfier_exec::bollard::body_full(bytes.into())),
            None,
        );
        while let Some(step) = import.next().await {
            step.expect("import the test image");
        }
    });
}

/// Containers carrying `label` (e.g. `mcpfier.tool=x`), running or not.
pub fn containers_with_label(label: &str) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let docker = mcpfier_exec::bollard::Docker::connect_with_local_defaults()
            .expect("a Docker socket")
            .negotiate_version()
            .await
            .expect("the Docker daemon answers");
        let filters =
            std::collections::HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
        let options = mcpfier_exec::bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        docker
            .list_containers(Some(options))
            .await
            .expect("list containers")
            .into_iter()
            .filter_map(|c| c.id)
            .collect()
    })
}
