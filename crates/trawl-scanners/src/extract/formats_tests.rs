//! 7z and cab archives are made by the real `7zz` and `gcab`; RAR cannot be
//! written by free tools, so the RAR 4 archive is laid out here, stored
//! (method 0x30), byte for byte as the format's technote describes.

use std::path::Path;
use std::process::Command;

use super::tests::{extractor, run};

/// `7zz a` of `(name, bytes)` members, with extra switches (e.g. a password).
fn seven_zip(members: &[(&str, &[u8])], switches: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for (name, data) in members {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    let out = dir.path().join("a.7z");
    let status = Command::new("7zz")
        .current_dir(&src)
        .args(["a", "-bd", "-y"])
        .args(switches)
        .arg(&out)
        .args(members.iter().map(|(n, _)| *n))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("7zz (apt-get install 7zip)");
    assert!(status.success());
    std::fs::read(out).unwrap()
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

/// One RAR 4 block: CRC16 (low half of the CRC32 of what follows), then the header.
fn block(kind: u8, flags: u16, rest: &[u8]) -> Vec<u8> {
    let size = (7 + rest.len()) as u16;
    let mut head = vec![kind];
    head.extend(flags.to_le_bytes());
    head.extend(size.to_le_bytes());
    head.extend(rest);
    let mut out = (crc32(&head) as u16).to_le_bytes().to_vec();
    out.extend(head);
    out
}

/// A RAR 4 archive of stored members.
fn rar4(members: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = b"Rar!\x1a\x07\x00".to_vec();
    out.extend(block(0x73, 0, &[0; 6]));
    for (name, data) in members {
        let mut h = Vec::new();
        h.extend((data.len() as u32).to_le_bytes()); // packed size
        h.extend((data.len() as u32).to_le_bytes()); // unpacked size
        h.push(3); // host: Unix
        h.extend(crc32(data).to_le_bytes());
        h.extend(0x5a21_0000u32.to_le_bytes()); // DOS time: 2025-01-01
        h.push(20); // version needed: 2.0
        h.push(0x30); // stored
        h.extend((name.len() as u16).to_le_bytes());
        h.extend(0o100644u32.to_le_bytes());
        h.extend(*name);
        // 0x8000: a data area follows the header.
        out.extend(block(0x74, 0x8000, &h));
        out.extend(*data);
    }
    out.extend(block(0x7b, 0x4000, &[]));
    out
}

/// RAR 5's variable-length integers: 7 bits a byte, high bit "more follows".
fn vint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// One RAR 5 header: CRC32 of what follows, its size, then type and fields.
fn header5(fields: &[u8]) -> Vec<u8> {
    let mut sized = Vec::new();
    vint(fields.len() as u64, &mut sized);
    sized.extend(fields);
    let mut out = crc32(&sized).to_le_bytes().to_vec();
    out.extend(sized);
    out
}

/// A RAR 5 archive of stored members.
fn rar5(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"Rar!\x1a\x07\x01\x00".to_vec();
    out.extend(header5(&[1, 0, 0])); // main: type 1, no flags, archive flags 0
    for (name, data) in members {
        let mut h = Vec::new();
        for n in [2, 0x02] {
            vint(n, &mut h); // type 2 (file), flags: a data area follows
        }
        vint(data.len() as u64, &mut h); // data size
        vint(0x04, &mut h); // file flags: data CRC32 present
        vint(data.len() as u64, &mut h); // unpacked size
        vint(0o644, &mut h); // attributes: permissions only, no file kind
        h.extend(crc32(data).to_le_bytes());
        vint(0, &mut h); // compression: version 0, method 0 (store)
        vint(1, &mut h); // host: Unix
        vint(name.len() as u64, &mut h);
        h.extend(name.as_bytes());
        out.extend(header5(&h));
        out.extend(*data);
    }
    out.extend(header5(&[5, 0, 0])); // end of archive
    out
}

#[test]
fn seven_zip_members_become_children_and_names_stay_data() {
    let z = seven_zip(&[("a.txt", b"alpha"), ("dir/b.bin", &[0u8, 1, 2, 3])], &[]);
    let out = run(&extractor(""), "x.7z", 0, &z).unwrap();
    assert_eq!(out.data["archive"], "7z");
    let mut got: Vec<(&str, &[u8])> = out
        .children
        .iter()
        .map(|c| (c.name.as_str(), c.data.as_slice()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("a.txt", &b"alpha"[..]), ("dir/b.bin", &[0, 1, 2, 3])]
    );
    assert_eq!(out.data["truncated"], false);
    assert!(!Path::new("a.txt").exists(), "nothing written to disk");
}

#[test]
fn rar_members_become_children_with_hostile_names_as_data() {
    let r = rar4(&[
        (b"readme.txt", b"hello from rar"),
        (b"../../etc/cron.d/x", b"* * * * * root id"),
        (b"caf\xe9.bin", b"latin-1 name"),
    ]);
    let out = run(&extractor(""), "x.rar", 0, &r).unwrap();
    assert_eq!(out.data["archive"], "rar", "{}", out.data);
    let names: Vec<&str> = out.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names[..2],
        ["readme.txt", "../../etc/cron.d/x"],
        "{}",
        out.data
    );
    assert_eq!(out.children[0].data, b"hello from rar");
    assert_eq!(out.children.len(), 3, "{}", out.data);
    assert_eq!(out.children[2].data, b"latin-1 name");
}

#[test]
fn cab_members_become_children() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("setup.inf"),
        b"[Version]\nSignature=$CHICAGO$\n",
    )
    .unwrap();
    let status = Command::new("gcab")
        .current_dir(dir.path())
        .args(["-c", "-z", "x.cab", "setup.inf"])
        .status()
        .expect("gcab (apt-get install gcab)");
    assert!(status.success());
    let cab = std::fs::read(dir.path().join("x.cab")).unwrap();
    let out = run(&extractor(""), "x.cab", 0, &cab).unwrap();
    assert_eq!(out.data["archive"], "cab", "{}", out.data);
    assert_eq!(out.children[0].name, "setup.inf");
    assert_eq!(out.children[0].data, b"[Version]\nSignature=$CHICAGO$\n");
}

#[test]
fn rar5_members_become_children() {
    let r = rar5(&[("one.txt", b"first"), ("/abs/two.bin", b"second")]);
    let out = run(&extractor(""), "x.rar", 0, &r).unwrap();
    assert_eq!(out.data["archive"], "rar", "{}", out.data);
    let got: Vec<(&str, &[u8])> = out
        .children
        .iter()
        .map(|c| (c.name.as_str(), c.data.as_slice()))
        .collect();
    assert_eq!(
        got,
        [("one.txt", &b"first"[..]), ("/abs/two.bin", &b"second"[..])],
        "{}",
        out.data
    );
}

#[test]
fn seven_zip_limits_apply_bomb_tree_budget_and_passwords() {
    let zeros = vec![0u8; 20 * 1024 * 1024];
    let bomb = seven_zip(&[("zeros.bin", &zeros)], &[]);
    assert!(bomb.len() < 100_000, "{}", bomb.len());
    let out = run(&extractor(""), "bomb.7z", 0, &bomb).unwrap();
    assert!(out.children.is_empty());
    let why = out.data["truncated_reason"].as_str().unwrap();
    assert!(why.contains("max_ratio (200)"), "{why}");

    let files: Vec<(String, Vec<u8>)> = (0..6).map(|i| (format!("f{i}"), vec![i; 10])).collect();
    let members: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
    let many = seven_zip(&members, &[]);
    let out = run(&extractor("max_children = 4"), "many.7z", 0, &many).unwrap();
    assert_eq!(out.children.len(), 4);
    assert!(out.data["truncated_reason"]
        .as_str()
        .unwrap()
        .contains("max_children (4)"));

    // AES on the data only, then on the names too: the configured password
    // opens both; without it the member is counted and the result says why.
    for switches in [&["-pinfected"][..], &["-pinfected", "-mhe=on"]] {
        let locked = seven_zip(&[("secret.txt", b"hidden")], switches);
        let out = run(&extractor(""), "locked.7z", 0, &locked).unwrap();
        assert_eq!(out.children.len(), 1, "{switches:?}: {}", out.data);
        assert_eq!(out.children[0].name, "secret.txt");
        assert_eq!(out.children[0].data, b"hidden");
        assert_eq!(out.data["password"], "infected", "{}", out.data);
        assert_eq!(out.data["truncated"], false, "{}", out.data);

        let out = run(
            &extractor("passwords = [\"wrong\", \"also wrong\"]"),
            "locked.7z",
            0,
            &locked,
        )
        .unwrap();
        assert!(out.children.is_empty(), "{switches:?}: {}", out.data);
        assert_eq!(out.data["encrypted"], 1, "{switches:?}: {}", out.data);
        assert_eq!(
            out.data["truncated_reason"], "encrypted, and no configured password opens it",
            "{}",
            out.data
        );
    }
}

#[test]
fn truncated_seven_zip_and_rar_are_errors_not_panics() {
    let z = seven_zip(&[("a.txt", &[7u8; 5000])], &[]);
    let r = rar4(&[(b"a.txt", &[7u8; 5000])]);
    for (name, cut) in [("a.7z", &z[..z.len() / 2]), ("a.rar", &r[..r.len() / 2])] {
        match run(&extractor(""), name, 0, cut) {
            Ok(out) => {
                assert!(out.children.is_empty(), "{name}: {}", out.data);
                assert_eq!(out.data["truncated"], true, "{name}: {}", out.data);
            }
            Err(e) => assert!(e.to_string().contains("unreadable"), "{name}: {e}"),
        }
    }
}

#[test]
fn a_rar_member_larger_than_the_room_left_is_refused_unread() {
    let r = rar4(&[(b"small.txt", b"fits"), (b"big.bin", &[9u8; 5000])]);
    let out = run(&extractor("max_total_bytes = 1000"), "x.rar", 0, &r).unwrap();
    let names: Vec<&str> = out.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["small.txt"], "{}", out.data);
    let why = out.data["truncated_reason"].as_str().unwrap();
    assert!(why.contains("big.bin: max_total_bytes (1000)"), "{why}");
}

#[test]
fn cab_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..5).map(|i| format!("f{i}.txt")).collect();
    for n in &names {
        std::fs::write(dir.path().join(n), n.repeat(10)).unwrap();
    }
    std::fs::write(dir.path().join("zeros.bin"), vec![0u8; 4 << 20]).unwrap();
    let status = Command::new("gcab")
        .current_dir(dir.path())
        .args(["-c", "-z", "many.cab"])
        .args(&names)
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("gcab")
        .current_dir(dir.path())
        .args(["-c", "-z", "bomb.cab", "zeros.bin"])
        .status()
        .unwrap();
    assert!(status.success());
    let many = std::fs::read(dir.path().join("many.cab")).unwrap();
    let out = run(&extractor("max_children = 3"), "many.cab", 0, &many).unwrap();
    assert_eq!(out.children.len(), 3, "{}", out.data);
    assert!(out.data["truncated_reason"]
        .as_str()
        .unwrap()
        .contains("max_children (3)"));
    let bomb = std::fs::read(dir.path().join("bomb.cab")).unwrap();
    assert!(bomb.len() < 20_000, "{}", bomb.len());
    let out = run(&extractor(""), "bomb.cab", 0, &bomb).unwrap();
    assert!(out.children.is_empty(), "{}", out.data);
    let why = out.data["truncated_reason"].as_str().unwrap();
    assert!(why.contains("max_ratio (200)"), "{why}");
}
