//! `[node] listen`: a running node's metrics and health, scraped over HTTP.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use trawl_testkit::{free_port, noise, wait_for, NatsServer, StoreServer};

use crate::harness::{rows, run, start_node, status_counters, stderr, trawl};

/// `(status, body)` of `GET path` on the node's endpoint; `None` while
/// nothing answers there.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Every sample of `/metrics`: the series name with its labels (without the
/// node's, which every series carries), and its value.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let (status, body) = get(port, "/metrics").expect("metrics served");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("name value");
            assert!(series.contains("node=\"edge-1\""), "{series}");
            let series = series
                .replace("node=\"edge-1\",", "")
                .replace(",node=\"edge-1\"", "")
                .replace("{node=\"edge-1\"}", "");
            (series, value.parse().expect("a number"))
        })
        .collect()
}

fn config(dir: &Path, nats: &NatsServer, port: u16) -> std::path::PathBuf {
    fs::create_dir_all(dir.join("inbox")).unwrap();
    let cfg = dir.join("node.toml");
    fs::write(
        &cfg,
        format!(
            "version = 1\n[node]\nname = \"edge-1\"\ndata_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n\
             [transport]\ntype = \"jetstream\"\nservers = [\"{}\"]\n\
             [sources.inbox]\ntype = \"dir\"\npath = \"inbox\"\nsettle = \"200ms\"\npoll_interval = \"100ms\"\n\
             [workers.hash]\ntype = \"hash\"\n[workers.filetype]\ntype = \"filetype\"\n\
             [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
            nats.url()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn a_running_node_serves_the_counts_of_what_it_was_given_and_its_health() {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), &nats, port);
    let node = start_node(&cfg);
    wait_for("the health endpoint", Duration::from_secs(60), || {
        get(port, "/healthz").is_some_and(|(s, _)| s == 200)
    });

    let sizes = [10usize, 1000, 70_000, 300_000, 5];
    for (i, len) in sizes.iter().enumerate() {
        fs::write(
            dir.path().join(format!("inbox/f{i}")),
            noise(i as u64, *len),
        )
        .unwrap();
    }
    let db = dir.path().join("results.db");
    wait_for("every result stored", Duration::from_secs(60), || {
        rows(&db).len() == 2 * sizes.len()
    });
    let files = sizes.len() as f64;
    wait_for("the counts on /metrics", Duration::from_secs(30), || {
        scrape(port)
            .get("trawl_connector_results_total{connector=\"db\"}")
            .is_some_and(|&n| n == 2.0 * files)
    });
    let m = scrape(port);
    let at = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in {:#?}", m.keys().collect::<Vec<_>>()))
    };
    assert_eq!(at("trawl_source_files_total{source=\"inbox\"}"), files);
    assert_eq!(
        at("trawl_source_bytes_total{source=\"inbox\"}"),
        sizes.iter().sum::<usize>() as f64
    );
    for group in ["hash", "filetype"] {
        let g = format!("group=\"{group}\"");
        assert_eq!(
            at(&format!(
                "trawl_worker_payloads_total{{{g},outcome=\"ok\"}}"
            )),
            files
        );
        assert_eq!(
            at(&format!("trawl_worker_scan_seconds_count{{{g}}}")),
            files
        );
        assert_eq!(at(&format!("trawl_worker_in_flight{{{g}}}")), 0.0);
        assert!(
            m.keys()
                .any(|k| k.starts_with("trawl_worker_info{") && k.contains(&g)),
            "{group} runs what?"
        );
    }
    assert_eq!(at("trawl_connector_refused_total{connector=\"db\"}"), 0.0);
    assert!(at("trawl_connector_write_seconds_count{connector=\"db\"}") > 0.0);
    wait_for("the consumers' backlog", Duration::from_secs(30), || {
        scrape(port)
            .iter()
            .any(|(k, &v)| k.starts_with("trawl_consumer_pending{") && v == 0.0)
    });

    // `trawl status` shows the node's counters, the same numbers.
    let mut shown = BTreeMap::new();
    wait_for(
        "the node's counters in status",
        Duration::from_secs(30),
        || {
            shown = status_counters(&cfg).remove("edge-1").unwrap_or_default();
            shown.get("stored") == Some(&(2 * sizes.len() as u64))
        },
    );
    let as_shown = |k: &str| shown[k] as f64;
    assert_eq!(
        as_shown("published"),
        at("trawl_source_files_total{source=\"inbox\"}")
    );
    assert_eq!(as_shown("ok"), 2.0 * files);
    assert_eq!(
        as_shown("error") + as_shown("timeout") + as_shown("refused"),
        0.0
    );
    assert_eq!(
        as_shown("stored"),
        at("trawl_connector_results_total{connector=\"db\"}")
    );

    // Another node cannot take the address: it says which key.
    let other = tempfile::tempdir().unwrap();
    let out = run(trawl()
        .args(["node", "--config"])
        .arg(config(other.path(), &nats, port)));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("node.listen: cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );

    // The broker goes away: the node is unhealthy, and says why; back: healthy.
    nats.kill();
    wait_for(
        "503 while the broker is away",
        Duration::from_secs(60),
        || get(port, "/healthz").is_some_and(|(s, body)| s == 503 && body.contains("transport: ")),
    );
    nats.restart();
    wait_for("200 once it is back", Duration::from_secs(90), || {
        get(port, "/healthz").is_some_and(|(s, _)| s == 200)
    });
    let out = node.terminate();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_listen_address_that_is_not_one_is_named_by_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    fs::write(&cfg, "version = 1\n[node]\nlisten = \"localhost\"\n").unwrap();
    let out = run(trawl().args(["config", "check"]).arg(&cfg));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("node.listen: "), "{}", stderr(&out));
}

#[test]
fn a_datastore_gone_while_nothing_is_written_makes_the_node_unhealthy() {
    let mut es = StoreServer::elasticsearch();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("node.toml");
    fs::write(
        &cfg,
        format!(
            "version = 1\n[node]\nname = \"edge-1\"\nlisten = \"127.0.0.1:{port}\"\n\
             [workers.hash]\ntype = \"hash\"\n\
             [connectors.search]\ntype = \"elasticsearch\"\nurls = [\"{}\"]\n",
            es.url()
        ),
    )
    .unwrap();
    let node = start_node(&cfg);
    wait_for("the health endpoint", Duration::from_secs(60), || {
        get(port, "/healthz").is_some_and(|(s, _)| s == 200)
    });
    es.stop();
    wait_for("503 naming the store", Duration::from_secs(60), || {
        get(port, "/healthz")
            .is_some_and(|(s, body)| s == 503 && body.starts_with("connectors.search: "))
    });
    es.restart();
    wait_for("200 once it answers again", Duration::from_secs(60), || {
        get(port, "/healthz").is_some_and(|(s, _)| s == 200)
    });
    let out = node.terminate();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Messages that decode to nothing are set aside, and counted where an
/// operator looks: per worker group for payload events, per connector for
/// results.
#[test]
fn undecodable_messages_are_counted_as_set_aside() {
    use crate::brokers::Broker as _;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let node = start_node(&config(dir.path(), &nats, port));
    wait_for("the health endpoint", Duration::from_secs(60), || {
        get(port, "/healthz").is_some_and(|(s, _)| s == 200)
    });
    nats.inject(true, b"\xc1\xff not msgpack".to_vec());
    nats.inject(false, b"\xc1\xff not msgpack".to_vec());
    let set_aside = [
        "trawl_worker_payloads_total{group=\"hash\",outcome=\"set_aside\"}",
        "trawl_worker_payloads_total{group=\"filetype\",outcome=\"set_aside\"}",
        "trawl_connector_refused_total{connector=\"db\"}",
    ];
    wait_for("the set-aside counts", Duration::from_secs(30), || {
        let m = scrape(port);
        set_aside.iter().all(|s| m.get(*s) == Some(&1.0))
    });
    assert_eq!(nats.dead_reasons().len(), 3);
    let out = node.terminate();
    assert!(out.status.success(), "{}", stderr(&out));
}
