//! RAR cannot be written by free tools, so the RAR 4 and 5 archives are laid
//! out here, stored (method 0x30), byte for byte as the formats' technotes
//! describe.

use super::formats_tests::truncated_is_an_error_not_a_panic;
use super::tests::{extractor, run};

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
fn truncated_rar_is_an_error_not_a_panic() {
    let r = rar4(&[(b"a.txt", &[7u8; 5000])]);
    truncated_is_an_error_not_a_panic("a.rar", &r);
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
