//! `path` values against a real directory tree: what resolves inside, what leads out (by
//! `..`, links, absolute paths), what is missing, and the markers filled or left over.

use std::os::unix::fs::symlink;

use super::*;

/// A directory `data` holding `a.txt` and `sub/b.txt`, beside `outside/secret`, with links
/// from inside `data` to each side.
struct Tree {
    _dir: tempfile::TempDir,
    data: PathBuf,
    outside: PathBuf,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(data.join("a.txt"), "a").unwrap();
    std::fs::write(data.join("sub/b.txt"), "b").unwrap();
    std::fs::write(outside.join("secret"), "s").unwrap();
    symlink(outside.join("secret"), data.join("to-secret")).unwrap();
    symlink(&outside, data.join("to-outside")).unwrap();
    symlink(data.join("sub"), data.join("to-sub")).unwrap();
    symlink(data.join("nothing"), data.join("dangling")).unwrap();
    Tree {
        data: data.canonicalize().unwrap(),
        outside: outside.canonicalize().unwrap(),
        _dir: dir,
    }
}

fn arg(t: &Tree, value: &str, must_exist: bool) -> PathArg {
    PathArg {
        param: "file".into(),
        value: value.into(),
        within: t.data.clone(),
        must_exist,
    }
}

#[test]
fn values_inside_resolve_to_their_real_absolute_path() {
    let t = tree();
    for (value, want) in [
        ("a.txt", "a.txt"),
        ("./sub/../a.txt", "a.txt"),
        ("sub/b.txt", "sub/b.txt"),
        ("to-sub/b.txt", "sub/b.txt"),
        ("to-sub/../a.txt", "a.txt"),
        (".", ""),
    ] {
        assert_eq!(
            resolve(&arg(&t, value, true)).unwrap(),
            t.data.join(want),
            "{value}"
        );
    }
    let absolute = t.data.join("sub/b.txt");
    assert_eq!(
        resolve(&arg(&t, absolute.to_str().unwrap(), true)).unwrap(),
        absolute
    );
    // Without must_exist a new name inside is fine.
    assert_eq!(
        resolve(&arg(&t, "sub/new.txt", false)).unwrap(),
        t.data.join("sub/new.txt")
    );
}

#[test]
fn values_that_lead_outside_are_refused_without_saying_where() {
    let t = tree();
    let secret = t.outside.join("secret");
    for value in [
        "../outside/secret",
        "../../../../../../proc/self/environ",
        "sub/../../outside/secret",
        "to-secret",
        "to-outside/secret",
        "to-outside/../data/../outside",
        "/etc/passwd",
        secret.to_str().unwrap(),
        "..",
    ] {
        let e = resolve(&arg(&t, value, false)).unwrap_err();
        assert_eq!(e.param, "file");
        assert!(e.why.contains("leads outside"), "{value}: {e}");
        assert!(
            !e.why.contains(t.outside.to_str().unwrap()) || value.contains("outside"),
            "the refusal must not tell where a link leads: {e}"
        );
    }
}

#[test]
fn missing_parts_dangling_links_and_a_missing_within_are_refused() {
    let t = tree();
    let e = resolve(&arg(&t, "nope.txt", true)).unwrap_err();
    assert!(e.why.contains("does not exist"), "{e}");
    let e = resolve(&arg(&t, "nope/../../outside/secret", false)).unwrap_err();
    assert!(e.why.contains("goes up"), "{e}");
    let e = resolve(&arg(&t, "dangling", false)).unwrap_err();
    assert!(e.why.contains("symbolic link to nothing"), "{e}");
    let mut gone = arg(&t, "a.txt", false);
    gone.within = t.data.join("no-such-dir");
    let e = resolve(&gone).unwrap_err();
    assert!(e.why.contains("can't be used on this host"), "{e}");
    let mut file = arg(&t, "x", false);
    file.within = t.data.join("a.txt");
    assert!(resolve(&file).unwrap_err().why.contains("not a directory"));
}

#[test]
fn substitute_fills_every_marker_and_refuses_one_left_over() {
    let t = tree();
    let mut argv = vec![
        "cat".to_owned(),
        marker("file"),
        format!("--out={}", marker("file")),
    ];
    substitute(&mut argv, &[arg(&t, "a.txt", true)]).unwrap();
    let a = t.data.join("a.txt").display().to_string();
    assert_eq!(argv, ["cat".to_owned(), a.clone(), format!("--out={a}")]);

    let mut argv = vec!["cat".to_owned(), marker("other")];
    let e = substitute(&mut argv, &[]).unwrap_err();
    assert_eq!(e.param, "other");
    assert!(e.why.contains("not sent"), "{e}");

    let mut argv = vec!["cat".to_owned(), marker("file")];
    assert!(substitute(&mut argv, &[arg(&t, "../outside/secret", false)]).is_err());
    assert_eq!(argv[1], marker("file"), "nothing is filled in on a refusal");
}
