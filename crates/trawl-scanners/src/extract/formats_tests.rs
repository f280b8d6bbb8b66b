//! 7z and cab archives are made by the real `7zz` and `gcab`.

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
fn truncated_seven_zip_is_an_error_not_a_panic() {
    let z = seven_zip(&[("a.txt", &[7u8; 5000])], &[]);
    truncated_is_an_error_not_a_panic("a.7z", &z);
}

/// The first half of an archive gives an error or a truncated result, no panic.
pub(super) fn truncated_is_an_error_not_a_panic(name: &str, whole: &[u8]) {
    let cut = &whole[..whole.len() / 2];
    match run(&extractor(""), name, 0, cut) {
        Ok(out) => {
            assert!(out.children.is_empty(), "{name}: {}", out.data);
            assert_eq!(out.data["truncated"], true, "{name}: {}", out.data);
        }
        Err(e) => assert!(e.to_string().contains("unreadable"), "{name}: {e}"),
    }
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
