use super::*;
use crate::test_support::{append, component, Bench};
use std::fs;

const HEADER: &str = "#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\tfiles
#open\t2024-06-03-09-00-00
#fields\tts\tfuid\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tsource\tdepth\tanalyzers\tmime_type\tfilename\tduration\tlocal_orig\tis_orig\tseen_bytes\ttotal_bytes\tmissing_bytes\toverflow_bytes\ttimedout\tparent_fuid\tmd5\tsha1\tsha256\textracted\textracted_cutoff\textracted_size
#types\ttime\tstring\tstring\taddr\tport\taddr\tport\tstring\tcount\tset[string]\tstring\tstring\tinterval\tbool\tbool\tcount\tcount\tcount\tcount\tbool\tstring\tstring\tstring\tstring\tstring\tbool\tcount
";

/// A files.log line for `name`, sent by the responder 198.51.100.7:80.
fn tsv_line(fuid: &str, name: &str, filename: &str, cutoff: bool) -> String {
    let cut = if cutoff { "T\t3000" } else { "F\t-" };
    format!(
        "1717405200.673430\t{fuid}\tCTENzA7H2P7S5Qk1\t10.1.2.3\t51234\t198.51.100.7\t80\tHTTP\t0\tEXTRACT,MD5,SHA1,SHA256\tapplication/x-dosexec\t{filename}\t0.01\t-\tF\t100\t100\t0\t0\tF\t-\t44d88612fea8a8f36de82e1278abb02f\t3395856ce81f2b7382dee72602f798b642f14140\t275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f\t{name}\t{cut}\n"
    )
}

struct Sensor {
    _dir: tempfile::TempDir,
    extract: PathBuf,
    log: PathBuf,
    data: tempfile::TempDir,
}

fn sensor() -> Sensor {
    let dir = tempfile::tempdir().unwrap();
    let extract = dir.path().join("extract_files");
    fs::create_dir(&extract).unwrap();
    Sensor {
        log: dir.path().join("files.log"),
        extract,
        _dir: dir,
        data: tempfile::tempdir().unwrap(),
    }
}

impl Sensor {
    fn config(&self, extra: &str) -> Component {
        component(
            "zeek",
            &self.extract,
            &format!("files_log = '{}'\n{extra}", self.log.display()),
        )
    }

    fn source(&self, extra: &str) -> Arc<dyn Source> {
        ZeekFactory
            .build(&self.config(extra), self.data.path())
            .unwrap()
    }

    /// Zeek's order: the file written and closed, then its log line.
    fn extract(&self, fuid: &str, filename: &str, body: &[u8]) -> String {
        let name = format!("extract-1717405200.67343-HTTP-{fuid}");
        fs::write(self.extract.join(&name), body).unwrap();
        append(&self.log, &tsv_line(fuid, &name, filename, false));
        name
    }
}

#[tokio::test]
async fn a_file_is_published_when_files_log_says_it_is_done() {
    let s = sensor();
    append(&s.log, HEADER);
    let b = Bench::new().await;
    let run = b.start(s.source(""));
    // Written but not logged yet: still open in Zeek as far as trawl knows.
    let pending = "extract-1717405201.5-HTTP-FPending1";
    fs::write(s.extract.join(pending), b"partial").unwrap();
    s.extract("FAbc123", "Payroll\\\\2009.xlsx", b"first");
    let e = &b.events(1).await[0];
    assert_eq!(e.meta.filename.as_deref(), Some("Payroll\\2009.xlsx"));
    assert_eq!(e.meta.mime.as_deref(), Some("application/x-dosexec"));
    let flow = e.meta.flow.as_ref().unwrap();
    assert_eq!(flow.src_ip.as_deref(), Some("198.51.100.7"), "the sender");
    assert_eq!(flow.dest_port, Some(51234));
    assert_eq!(flow.app_proto.as_deref(), Some("http"));
    assert_eq!(
        e.meta.hashes["md5"], "44d88612fea8a8f36de82e1278abb02f",
        "sensor hashes"
    );
    assert_eq!(e.meta.fields["fuid"], "FAbc123");
    assert_eq!(e.meta.fields["seen_bytes"], 100);
    assert_eq!(
        e.meta.fields["analyzers"],
        serde_json::json!(["EXTRACT", "MD5", "SHA1", "SHA256"])
    );
    assert_eq!(e.meta.fields["extracted_cutoff"], false);
    assert!(
        !e.meta.fields.contains_key("local_orig"),
        "unset fields are left out"
    );
    b.nothing_more().await;

    // Cut off at Zeek's extraction limit: marked on the payload.
    let name = "extract-1717405202.1-HTTP-FCut";
    fs::write(s.extract.join(name), b"cut").unwrap();
    append(&s.log, &tsv_line("FCut", name, "-", true));
    let e = &b.events(1).await[0];
    assert_eq!(e.meta.fields["extracted_cutoff"], true);
    assert_eq!(e.meta.fields["extracted_size"], 3000);
    assert_eq!(e.meta.filename.as_deref(), Some(name), "no sensor filename");
    run.stop().await;
}

#[tokio::test]
async fn json_lines_unrolled_duplicates_and_hostile_names() {
    let s = sensor();
    let b = Bench::new().await;
    let run = b.start(s.source(""));
    fs::write(s.extract.join("HTTP-FBbQxG1GXLXgmWhbk9.exe"), b"MZ").unwrap();
    let line = r#"{"ts":1596820191.969902,"fuid":"FBbQxG1GXLXgmWhbk9","uid":"CzoFRWTQ6YIzfFXHk","id.orig_h":"192.168.4.37","id.orig_p":58264,"id.resp_h":"23.195.64.241","id.resp_p":80,"source":"HTTP","depth":0,"analyzers":["EXTRACT","PE"],"mime_type":"application/x-dosexec","duration":0.015498876571655273,"is_orig":false,"seen_bytes":179272,"total_bytes":179272,"missing_bytes":0,"overflow_bytes":0,"timedout":false,"extracted":"HTTP-FBbQxG1GXLXgmWhbk9.exe","extracted_cutoff":false}"#;
    // Zeek ≥ 5.1 logs a file seen on two connections twice.
    append(&s.log, &format!("{line}\n{line}\n"));
    append(&s.log, "{\"extracted\": \"../../etc/passwd\"}\n{not json\n");
    let e = &b.events(1).await[0];
    assert_eq!(
        e.meta.flow.as_ref().unwrap().src_ip.as_deref(),
        Some("23.195.64.241")
    );
    assert_eq!(e.meta.fields["timedout"], false);
    b.nothing_more().await;
    run.stop().await;
}

#[tokio::test]
async fn restarts_resume_the_log_without_repeats_or_gaps() {
    let s = sensor();
    append(&s.log, HEADER);
    let b = Bench::new().await;
    let src = s.source("");
    let run = b.start(src.clone());
    s.extract("F1", "one", b"1");
    s.extract("F2", "two", b"2");
    assert_eq!(b.names(2).await, ["one", "two"]);
    run.stop().await;

    // Logged while trawl was down; the header is far behind the resume point.
    s.extract("F3", "three", b"3");
    let run = b.start(src);
    s.extract("F4", "four", b"4");
    assert_eq!(b.names(2).await, ["four", "three"]);
    b.nothing_more().await;
    run.stop().await;
}

#[tokio::test]
async fn without_a_log_files_complete_by_quiet_period() {
    let s = sensor();
    let b = Bench::new().await;
    let c = component("zeek", &s.extract, "settle = '200ms'\n");
    let run = b.start(ZeekFactory.build(&c, s.data.path()).unwrap());
    fs::write(
        s.extract
            .join("extract-1240198114.648099-FTP_DATA-FHUsSu3rWdP07eRE4l"),
        b"x",
    )
    .unwrap();
    let e = &b.events(1).await[0];
    assert_eq!(e.meta.fields["fuid"], "FHUsSu3rWdP07eRE4l");
    assert_eq!(
        e.meta.flow.as_ref().unwrap().app_proto.as_deref(),
        Some("ftp-data")
    );
    run.stop().await;
}

#[tokio::test]
async fn an_unlogged_file_is_published_after_metadata_wait_and_not_again() {
    let s = sensor();
    append(&s.log, HEADER);
    let b = Bench::new().await;
    let run = b.start(s.source("metadata_wait = '300ms'\n"));
    let name = "extract-1717405200.1-SMB-FLate";
    fs::write(s.extract.join(name), b"late").unwrap();
    assert_eq!(b.names(1).await, [name]);
    // The line arrives after all: the file is not published twice.
    append(&s.log, &tsv_line("FLate", name, "late.doc", false));
    b.nothing_more().await;
    run.stop().await;
}

#[test]
fn pre_5_1_logs_parse_by_their_own_header() {
    let mut h = None;
    for line in [
        "#separator \\x09",
        "#fields\tts\tfuid\ttx_hosts\trx_hosts\tconn_uids\tsource\tdepth\tanalyzers\tmime_type\tfilename\tduration\tlocal_orig\tis_orig\tseen_bytes\ttotal_bytes\tmissing_bytes\toverflow_bytes\ttimedout\tparent_fuid\tmd5\tsha1\tsha256\textracted\textracted_cutoff\textracted_size",
        "#types\ttime\tstring\tset[addr]\tset[addr]\tset[string]\tstring\tcount\tset[string]\tstring\tstring\tinterval\tbool\tbool\tcount\tcount\tcount\tcount\tbool\tstring\tstring\tstring\tstring\tstring\tbool\tcount",
    ] {
        TsvHeader::update(&mut h, line.as_bytes());
    }
    let line = "1240198114.648099\tFHUsSu3rWdP07eRE4l\t98.114.205.102\t192.150.11.111\tCDv7nk2O4Q6K7uaOgb\tFTP_DATA\t0\tPE,EXTRACT,MD5,SHA1\tapplication/x-dosexec\t-\t9.767306\tF\tT\t158720\t-\t0\t0\tF\t-\t14a09a48ad23fe0ea5a180bee8cb750a\tac3cdd673f5126bc49faa72fb52284f513929db4\t-\textract-1240198114.648099-FTP_DATA-FHUsSu3rWdP07eRE4l\tF\t-";
    let record = h.unwrap().parse(line.as_bytes()).unwrap();
    let meta = files_log_meta(&record);
    assert_eq!(
        meta.fields["tx_hosts"],
        serde_json::json!(["98.114.205.102"])
    );
    assert_eq!(meta.hashes.len(), 2, "sha256 unset before Zeek 8.1");
    assert_eq!(
        record["extracted"],
        "extract-1240198114.648099-FTP_DATA-FHUsSu3rWdP07eRE4l"
    );
    assert_eq!(record["ts"], 1240198114.648099);
    assert!(TsvHeader::default()
        .parse(b"a\tb")
        .unwrap_err()
        .contains("#fields"));
}

proptest::proptest! {
    #[test]
    fn any_files_log_bytes_parse_without_panicking(
        lines in proptest::collection::vec(
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            0..12,
        )
    ) {
        let mut header = None;
        for line in HEADER.lines().map(str::as_bytes).chain(lines.iter().map(Vec::as_slice)) {
            if line.starts_with(b"#") {
                TsvHeader::update(&mut header, line);
            } else if let Some(h) = &header {
                if let Ok(record) = h.parse(line) {
                    let _ = files_log_meta(&record);
                }
            }
        }
    }

    #[test]
    fn any_json_files_log_record_becomes_metadata_without_panicking(
        record in crate::test_support::json_value()
    ) {
        if let serde_json::Value::Object(map) = record {
            let _ = files_log_meta(&map);
        }
    }
}
