//! The audit chain against every edit `verify` must catch: a changed, removed or swapped
//! line, and a chain continued across a reopen.

use super::*;

fn write(path: &Path, n: usize) {
    let audit = Audit::open(path).unwrap();
    for i in 0..n {
        let mut e = Map::new();
        e.insert("event".into(), json!("call"));
        e.insert("tool".into(), json!(format!("t{i}")));
        audit.record(e).unwrap();
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn save(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn refusal(path: &Path) -> String {
    verify(path)
        .expect_err("the edit was not caught")
        .to_string()
}

#[test]
fn an_intact_chain_verifies_and_continues_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write(&path, 3);
    write(&path, 2);
    assert_eq!(verify(&path).unwrap(), 5);
    let all = lines(&path);
    let last: Value = serde_json::from_str(&all[4]).unwrap();
    assert_eq!(last["seq"], 5);
    let first: Value = serde_json::from_str(&all[0]).unwrap();
    assert_eq!(first["prev"], GENESIS);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_changed_removed_or_swapped_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write(&path, 5);
    let good = lines(&path);

    let mut changed = good.clone();
    changed[1] = changed[1].replace("\"t1\"", "\"t9\"");
    save(&path, &changed);
    assert!(
        refusal(&path).contains("line 2 was changed"),
        "{}",
        refusal(&path)
    );

    let mut removed = good.clone();
    removed.remove(2);
    save(&path, &removed);
    assert!(refusal(&path).starts_with("line 3 has seq 4 where 3 was next"));

    let mut swapped = good.clone();
    swapped.swap(1, 2);
    save(&path, &swapped);
    assert!(refusal(&path).starts_with("line 2 has seq 3 where 2 was next"));

    save(&path, &good[1..]);
    assert!(refusal(&path).starts_with("line 1 does not start a chain"));

    let mut garbage = good.clone();
    garbage[3] = "not json".into();
    save(&path, &garbage);
    assert!(refusal(&path).contains("line 4 is not a JSON audit record"));

    save(&path, &good);
    assert_eq!(verify(&path).unwrap(), 5);
}

#[test]
fn the_last_line_is_read_from_the_end_whatever_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let last = |text: &[u8]| {
        std::fs::write(&path, text).unwrap();
        last_line(File::open(&path).unwrap()).unwrap()
    };
    assert_eq!(last(b""), None);
    assert_eq!(last(b"\n\n"), None);
    assert_eq!(last(b"one"), Some(b"one".to_vec()));
    assert_eq!(last(b"one\ntwo\n"), Some(b"two".to_vec()));
    assert_eq!(last(b"one\ntwo\n\n"), Some(b"two".to_vec()));
    let long = vec![b'x'; 200_000];
    let mut text = b"first\n".to_vec();
    text.extend_from_slice(&long);
    text.push(b'\n');
    assert_eq!(last(&text), Some(long.clone()));
    assert_eq!(last(&long), Some(long));
}
