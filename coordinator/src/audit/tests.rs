//! The audit chain against every edit `verify` must catch: a changed, removed or swapped
//! line or file, and a chain continued across a reopen, across rotations, and by many
//! writers at once.

use super::*;

fn settings(path: &Path, rotate_size: Option<u64>) -> Settings {
    Settings {
        path: path.to_owned(),
        rotate_size,
        chain: "test".into(),
        sync_interval: None,
    }
}

fn event(i: usize) -> Map<String, Value> {
    let mut e = Map::new();
    e.insert("event".into(), json!("call"));
    e.insert("tool".into(), json!(format!("t{i}")));
    e
}

fn write_to(audit: &Audit, n: usize) {
    for i in 0..n {
        audit.submit(event(i)).blocking_recv().unwrap().unwrap();
    }
}

fn write(path: &Path, n: usize) {
    write_to(&Audit::open(settings(path, None)).unwrap(), n);
}

/// `verify` of one file.
fn check(path: &Path) -> anyhow::Result<u64> {
    verify(&[path.to_owned()], false, None).map(|v| v.lines)
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
    check(path)
        .expect_err("the edit was not caught")
        .to_string()
}

#[test]
fn an_intact_chain_verifies_and_continues_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write(&path, 3);
    write(&path, 2);
    assert_eq!(check(&path).unwrap(), 5);
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
    assert!(refusal(&path).contains("line 3 has seq 4 where 3 was next"));

    let mut swapped = good.clone();
    swapped.swap(1, 2);
    save(&path, &swapped);
    assert!(refusal(&path).contains("line 2 has seq 3 where 2 was next"));

    save(&path, &good[1..]);
    assert!(refusal(&path).contains("line 1 does not start a chain"));

    let mut garbage = good.clone();
    garbage[3] = "not json".into();
    save(&path, &garbage);
    assert!(refusal(&path).contains("line 4 is not a JSON audit record"));

    save(&path, &good);
    assert_eq!(check(&path).unwrap(), 5);
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

#[test]
fn rotation_keeps_one_chain_across_files_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // About 90 bytes a line: a new file every few lines.
    let audit = Audit::open(settings(&path, Some(300))).unwrap();
    write_to(&audit, 10);
    drop(audit);
    let files = chain_files(&path).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    assert_eq!(
        files[0].file_name().unwrap(),
        "audit.jsonl.000000000001",
        "a rotated file is named by its first seq"
    );
    let v = verify(&files, false, None).unwrap();
    assert_eq!((v.lines, v.first_seq, v.head.seq), (10, 1, 10));

    // A reopen goes on from the newest file, rotated or live.
    let audit = Audit::open(settings(&path, Some(300))).unwrap();
    write_to(&audit, 5);
    assert_eq!(audit.head().borrow().seq, 15);
    drop(audit);
    let files = chain_files(&path).unwrap();
    assert_eq!(verify(&files, false, None).unwrap().lines, 15);

    // A whole file removed, or two swapped, is named.
    let without_second: Vec<_> = files
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, f)| f.clone())
        .collect();
    let e = verify(&without_second, false, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("where") && e.contains("was next"), "{e}");
    let mut swapped = files.clone();
    swapped.swap(0, 1);
    let e = verify(&swapped, false, None).unwrap_err().to_string();
    assert!(e.contains("does not start a chain"), "{e}");
    // Old files removed on purpose: --partial accepts a chain that starts later.
    let e = verify(&files[1..], false, None).unwrap_err().to_string();
    assert!(e.contains("--partial"), "{e}");
    let v = verify(&files[1..], true, None).unwrap();
    assert!(v.first_seq > 1 && v.head.seq == 15, "{v:?}");
    // A changed line in a rotated file breaks the link into the next file.
    let mut first = lines(&files[0]);
    let last = first.len() - 1;
    first[last] = first[last].replace("\"call\"", "\"cal1\"");
    save(&files[0], &first);
    let e = verify(&files, false, None).unwrap_err().to_string();
    assert!(
        e.contains("does not carry the hash of the last line of the file before it"),
        "{e}"
    );
}

#[test]
fn many_writers_at_once_make_one_gapless_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = Arc::new(Audit::open(settings(&path, None)).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let audit = audit.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    audit
                        .submit(event(t * 100 + i))
                        .blocking_recv()
                        .unwrap()
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every acknowledged line is on disk when its caller hears back.
    assert_eq!(check(&path).unwrap(), 400);
    let mut tools: Vec<_> = lines(&path)
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["tool"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    tools.sort();
    tools.dedup();
    assert_eq!(tools.len(), 400, "no line lost or written twice");
}

#[test]
fn a_head_kept_elsewhere_catches_cut_lines_and_a_rewritten_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = Audit::open(settings(&path, None)).unwrap();
    write_to(&audit, 6);
    let head = audit.head().borrow().clone();
    assert_eq!(head.seq, 6);
    assert_eq!(Head::from_json(&head.to_json()).unwrap(), head);
    drop(audit);
    let files = [path.clone()];
    assert_eq!(verify(&files, false, Some(&head)).unwrap().head, head);
    let good = lines(&path);
    // The newest two lines cut: the file alone is still a valid chain, but not the head's.
    save(&path, &good[..4]);
    assert_eq!(check(&path).unwrap(), 4);
    let e = verify(&files, false, Some(&head)).unwrap_err().to_string();
    assert!(
        e.contains("the newest lines were cut: the files end at seq 4"),
        "{e}"
    );
    // The tail cut and written again from seq 5 with other content.
    save(&path, &good[..4]);
    write(&path, 2);
    let e = verify(&files, false, Some(&head)).unwrap_err().to_string();
    assert!(
        e.contains("line 6 is not the line whose hash etcd holds"),
        "{e}"
    );
}

#[test]
fn with_a_sync_interval_a_line_is_in_the_file_when_acknowledged_and_synced_soon_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = Audit::open(Settings {
        sync_interval: Some(std::time::Duration::from_millis(50)),
        ..settings(&path, Some(2048))
    })
    .unwrap();
    let head = audit.head();
    for i in 0..40 {
        audit.submit(event(i)).blocking_recv().unwrap().unwrap();
        // Written before the answer: a crash of this process after it loses nothing.
        let files = chain_files(&path).unwrap();
        assert_eq!(verify(&files, false, None).unwrap().head.seq, i as u64 + 1);
    }
    // The head (what is on disk) follows within the interval, without another line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while head.borrow().seq < 40 {
        assert!(std::time::Instant::now() < deadline, "never synced");
        std::thread::yield_now();
    }
    assert!(chain_files(&path).unwrap().len() >= 2, "rotated on the way");
}
