//! `trawl ui` over a store `trawl scan` wrote: every route over HTTP, and
//! the page in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`) as an analyst uses it.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use trawl_testkit::{free_port, listening};

use crate::harness::{eicar, run, stderr, trawl, wait_for, Proc};

const XSS_NAME: &str = "<img src=x onerror=alert(1)>.exe";

/// A store with a carved EICAR, a zip holding EICAR, and a file whose name
/// is markup, scanned by hash, filetype, yara and extract.
fn scanned_store(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("eicar.com"), eicar()).unwrap();
    fs::write(data.join(XSS_NAME), b"a name that is markup").unwrap();
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z: z.writestr('inner/eicar.com', sys.stdin.buffer.read())",
        ])
        .arg(data.join("sample.zip"))
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3");
    python.stdin.take().unwrap().write_all(&eicar()).unwrap();
    let zipped = python.wait_with_output().unwrap();
    assert!(zipped.status.success());
    let rules = dir.join("eicar.yar");
    fs::write(
        &rules,
        "rule EICAR_Test_File { strings: $a = \"EICAR-STANDARD-ANTIVIRUS-TEST-FILE\" condition: $a }\n",
    )
    .unwrap();
    let db = dir.join("trawl.db");
    let out = run(trawl()
        .current_dir(dir)
        .args(["scan", "data", "--archive", "archive", "--db"])
        .arg(&db)
        .args(["--workers", "hash,filetype,yara,extract", "--rules"])
        .arg(&rules));
    assert!(out.status.success(), "{}", stderr(&out));
    db
}

/// `trawl ui` on a free loopback port, once it answers.
fn serve(db: &Path) -> (Proc, u16) {
    let port = free_port();
    let ui = Proc::spawn(
        trawl()
            .args(["ui", "--db"])
            .arg(db)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null()),
    );
    wait_for("the results page", Duration::from_secs(30), || {
        listening(port)
    });
    (ui, port)
}

/// `GET path`: the status code and the body.
pub(crate) fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

fn get_json(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = get(port, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn eicar_sha256() -> String {
    trawl_core::sha256_hex(&eicar())
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

#[test]
fn every_route_answers_from_the_store_and_shows_names_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let db = scanned_store(dir.path());
    let (ui, port) = serve(&db);
    let sha = eicar_sha256();

    let (status, home) = get(port, "/");
    assert_eq!(status, 200);
    assert!(
        home.contains("Overview") && home.contains("EICAR_Test_File"),
        "{home}"
    );
    assert!(
        home.contains("&lt;img src=x onerror=alert(1)&gt;.exe"),
        "{home}"
    );
    assert!(!home.contains("<img"), "a name is never markup: {home}");

    // The carved file and the zip's member: the same bytes, two sightings.
    for q in [
        sha.clone(),
        md5_hex(&eicar()),
        "EICAR_Test_File".into(),
        "eicar".into(),
    ] {
        let (status, page) = get(port, &format!("/?q={q}"));
        assert_eq!(status, 200);
        assert!(page.contains("2 file(s)"), "{q}: {page}");
        assert!(page.contains(&format!("/file/{sha}")), "{q}: {page}");
    }
    // By mime type and by sensor (`trawl scan` names the host's; here "vm"
    // or whatever this machine is called, the same for every file).
    let (_, zips) = get(port, "/?q=application/zip");
    assert!(
        zips.contains("1 file(s)") && zips.contains("sample.zip"),
        "{zips}"
    );
    let sensor = get_json(port, "/api/search")["hits"][0]["sensor"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        get_json(port, &format!("/api/search?q={sensor}"))["total"],
        4
    );
    let (_, none) = get(port, "/?q=no-such-thing");
    assert!(none.contains("0 file(s)"), "{none}");

    let (status, file) = get(port, &format!("/file/{sha}"));
    assert_eq!(status, 200);
    assert!(
        file.contains("EICAR_Test_File") && file.contains("seen 2 time(s)"),
        "{file}"
    );
    assert!(
        file.contains("id=\"lineage\"") && file.contains("sample.zip"),
        "{file}"
    );

    let found = get_json(port, &format!("/api/search?q={sha}"));
    assert_eq!(found["total"], 2, "{found}");
    assert_eq!(found["hits"][0]["rules"][0], "EICAR_Test_File", "{found}");
    let view = get_json(port, &format!("/api/file/{sha}"));
    assert_eq!(view["sightings"].as_array().unwrap().len(), 2, "{view}");
    let names: Vec<&str> = view["lineage"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["filename"].as_str())
        .collect();
    assert_eq!(names, ["sample.zip", "inner/eicar.com"], "{view}");
    let overview = get_json(port, "/api/overview");
    assert_eq!(
        overview["files"], 4,
        "three files and a zip member: {overview}"
    );

    let (status, _) = get(port, "/file/0000");
    assert_eq!(status, 404);
    let (status, body) = get(port, "/api/file/0000");
    assert_eq!((status, body.contains("no such file")), (404, true));

    // A replay writes to the store while the page serves it; the file's
    // page then shows the replay's result beside the original.
    let out = run(trawl()
        .current_dir(dir.path())
        .args(["replay", "--archive", "archive", "--db"])
        .arg(&db)
        .args(["--rules", "eicar.yar", "--since", "1d"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let view = get_json(port, &format!("/api/file/{sha}"));
    let replayed: Vec<&serde_json::Value> = view["sightings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["findings"].as_array().unwrap())
        .filter(|f| f["replay_id"].is_string())
        .collect();
    assert!(
        replayed.iter().any(|f| f["worker"] == "yara"),
        "the replay's yara result: {view}"
    );
    let (_, file) = get(port, &format!("/file/{sha}"));
    assert!(file.contains("replay "), "{file}");
    drop(ui);

    // From a node's config: the store its sqlite connector writes.
    let cfg = dir.path().join("node.toml");
    fs::write(
        &cfg,
        "version = 1\n[node]\nname = \"n\"\n[transport]\ntype = \"memory\"\n\
         [connectors.db]\ntype = \"sqlite\"\npath = \"trawl.db\"\n",
    )
    .unwrap();
    let port = free_port();
    let _ui = Proc::spawn(
        trawl()
            .args(["ui", "--config"])
            .arg(&cfg)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null()),
    );
    wait_for("the page from a config", Duration::from_secs(30), || {
        listening(port)
    });
    assert_eq!(get_json(port, "/api/overview")["files"], 4);

    let out = run(trawl().args(["ui", "--db", "/no/such/trawl.db"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/no/such/trawl.db"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_analyst_finds_a_file_and_its_archive_in_chromium() {
    use fantoccini::{ClientBuilder, Locator};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let db = scanned_store(dir.path());
    let (_ui, port) = serve(&db);
    let driver_port = free_port();
    let _driver = Proc::spawn(
        Command::new("chromedriver")
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null()),
    );
    wait_for("chromedriver", Duration::from_secs(30), || {
        listening(driver_port)
    });
    let sha = eicar_sha256();
    let base = format!("http://127.0.0.1:{port}");
    crate::harness::rt().block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--window-size=1280,1000"]}),
        );
        let http = hyper_util::client::legacy::connect::HttpConnector::new();
        let c = ClientBuilder::new(http)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .expect("a Chromium session");

        c.goto(&format!("{base}/")).await.unwrap();
        if let Ok(path) = std::env::var("TRAWL_UI_SCREENSHOT") {
            fs::write(path, c.screenshot().await.unwrap()).unwrap();
        }
        // The name that is markup reads as text and made no element.
        let main = c.find(Locator::Css("main")).await.unwrap();
        assert!(main.text().await.unwrap().contains(XSS_NAME));
        let images = c
            .execute("return document.images.length", vec![])
            .await
            .unwrap();
        assert_eq!(images, json!(0));

        // Type the sha256 into the search box and open the first file.
        let q = c.find(Locator::Id("q")).await.unwrap();
        q.send_keys(&sha).await.unwrap();
        c.find(Locator::Css("header button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        // The overview lists files too: wait for the results page itself.
        c.wait()
            .for_element(Locator::XPath("//h2[contains(., 'file(s) for')]"))
            .await
            .unwrap();
        c.find(Locator::Css("#hits a"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let yara = c
            .wait()
            .for_element(Locator::Css("h4.finding[data-worker=yara]"))
            .await
            .unwrap();
        assert!(yara.text().await.unwrap().contains("EICAR_Test_File"));
        let lineage = c.find(Locator::Id("lineage")).await.unwrap();
        let tree = lineage.text().await.unwrap();
        assert!(
            tree.contains("sample.zip") && tree.contains("inner/eicar.com"),
            "{tree}"
        );

        // From the member to its archive, whose unpacking lists it.
        c.find(Locator::LinkText("sample.zip"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let unpacked = c
            .wait()
            .for_element(Locator::XPath("//pre[contains(., '\"archive\": \"zip\"')]"))
            .await
            .unwrap();
        assert!(unpacked.text().await.unwrap().contains("inner/eicar.com"));
        c.close().await.unwrap();
    });
}
