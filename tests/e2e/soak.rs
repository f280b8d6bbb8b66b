//! The soak drill: payloads through JetStream while the scanner and store
//! nodes are killed -9 at random every 10–20 s and started again, then every
//! datastore reconciled per worker: nothing lost, nothing twice.
//! `TRAWL_SOAK_PAYLOADS` sets the count: `tests/soak.sh` runs 20,000; the
//! test suite runs a smaller drill with the same kills.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use serde_json::json;

use crate::harness::*;
use trawl_testkit::NatsServer;
use trawl_testkit::{es_client, es_count, StoreServer};

use crate::harness::rt;

const WORKERS: [&str; 2] = ["hash", "filetype"];

/// A node's config and its running process (none while it is down).
struct Role {
    name: &'static str,
    config: PathBuf,
    process: Option<Proc>,
}

fn start(dir: &Path, config: &Path, name: &str) -> Proc {
    Proc::logging_to(
        trawl()
            .args(["node", "--config"])
            .arg(config)
            .stdout(Stdio::null()),
        &dir.join(format!("{name}.log")),
    )
}

/// A small pseudo-random sequence (no seed from outside: the drill's kill
/// times differ per run through the clock).
struct Dice(u64);

impl Dice {
    fn roll(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn payloads_through_random_kills_are_stored_once_each_in_every_datastore() {
    let payloads: usize = std::env::var("TRAWL_SOAK_PAYLOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let nats = NatsServer::start();
    let es = StoreServer::elasticsearch();
    let mongo = StoreServer::mongodb();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("inbox")).unwrap();
    let config = |name: &str, roles: String| {
        let cfg = d.join(format!("{name}.toml"));
        fs::write(
            &cfg,
            format!(
                "version = 1\n[node]\nname = \"{name}\"\ndata_dir = \"state-{name}\"\nshutdown_grace = \"10s\"\n\
                 [transport]\ntype = \"jetstream\"\nservers = [\"{}\"]\n{roles}",
                nats.url()
            ),
        )
        .unwrap();
        cfg
    };
    let scanner = "[workers.hash]\ntype = \"hash\"\ntimeout = \"5s\"\n\
                   [workers.filetype]\ntype = \"filetype\"\ntimeout = \"5s\"\n"
        .to_owned();
    let store = format!(
        "[connectors.search]\ntype = \"elasticsearch\"\nurls = [\"{}\"]\nflush_interval = \"200ms\"\n\
         [connectors.mongo]\ntype = \"mongodb\"\nuri = \"{}\"\nflush_interval = \"200ms\"\n\
         [connectors.local]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"200ms\"\n",
        es.url(),
        mongo.mongodb_uri()
    );
    let sensor = "[sources.inbox]\ntype = \"dir\"\npath = \"inbox\"\nsettle = \"200ms\"\npoll_interval = \"100ms\"\n"
        .to_owned();
    let mut roles = vec![
        Role {
            name: "store",
            config: config("store", store),
            process: None,
        },
        Role {
            name: "scanner-a",
            config: config("scanner-a", scanner.clone()),
            process: None,
        },
        Role {
            name: "scanner-b",
            config: config("scanner-b", scanner),
            process: None,
        },
    ];
    for r in &mut roles {
        r.process = Some(start(d, &r.config, r.name));
    }
    let roles = Arc::new(Mutex::new(roles));
    let sensor_cfg = config("sensor", sensor);
    let sensor = start(d, &sensor_cfg, "sensor");

    // Kill one of the scanners or the store every 10–20 s; it comes back at once.
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (roles, done, kills) = (roles.clone(), done.clone(), kills.clone());
        let dir = d.to_path_buf();
        std::thread::spawn(move || {
            let mut dice = Dice(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1,
            );
            while !done.load(Ordering::SeqCst) {
                let wait = Instant::now() + Duration::from_millis(10_000 + dice.roll(10_000));
                while Instant::now() < wait {
                    if done.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let mut roles = roles.lock().unwrap();
                let n = roles.len() as u64;
                let r = &mut roles[dice.roll(n) as usize];
                r.process.take().unwrap().kill9();
                r.process = Some(start(&dir, &r.config, r.name));
                kills.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // Files arrive over the first 30 s at least, so the kills land mid-run.
    let started = Instant::now();
    let batches = 30.max(payloads / 500);
    for b in 0..batches {
        for i in (b * payloads / batches)..((b + 1) * payloads / batches) {
            fs::write(
                d.join("inbox").join(format!("f{i:06}")),
                noise(i as u64, 100 + (i * 37) % 3000),
            )
            .unwrap();
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let db = d.join("results.db");
    let expected = payloads * WORKERS.len();
    let within = Duration::from_secs(180) + Duration::from_millis(30 * payloads as u64);
    let sqlite_rows = || rows(&db).len();
    wait_for("every result in SQLite", within, || {
        sqlite_rows() >= expected
    });
    let rt = rt();
    let client = es_client(&es.url());
    let es_of = |w: &str| {
        rt.block_on(es_count(
            &client,
            &format!("trawl-{w}"),
            json!({"match_all": {}}),
        ))
    };
    let mongo_of = |w: &str| {
        rt.block_on(async {
            mongodb::Client::with_uri_str(mongo.mongodb_uri())
                .await
                .unwrap()
                .database("trawl")
                .collection::<mongodb::bson::Document>(w)
                .count_documents(doc! {})
                .await
                .unwrap() as usize
        })
    };
    wait_for("every result in the other stores", within, || {
        WORKERS
            .iter()
            .all(|w| es_of(w) as usize >= payloads && mongo_of(w) >= payloads)
    });
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    killer.join().unwrap();
    // Let redeliveries of the killed nodes' last work land before counting.
    std::thread::sleep(Duration::from_secs(3));
    sensor.terminate();
    for r in roles.lock().unwrap().iter_mut() {
        r.process.take().unwrap().terminate();
    }

    let stored = rows(&db);
    let mut distinct = std::collections::BTreeSet::new();
    for r in &stored {
        assert_eq!(r.outcome, "ok", "{r:?}");
        distinct.insert((r.filename.clone(), r.worker.clone()));
    }
    assert_eq!(stored.len(), expected, "SQLite: nothing twice");
    assert_eq!(distinct.len(), expected, "SQLite: nothing lost");
    for w in WORKERS {
        assert_eq!(es_of(w) as usize, payloads, "Elasticsearch trawl-{w}");
        assert_eq!(mongo_of(w), payloads, "MongoDB {w}");
    }
    let kills = kills.load(Ordering::SeqCst);
    eprintln!(
        "soak: {payloads} payloads × {} workers through {kills} kill -9s in {:.1} s: \
         SQLite {expected}, Elasticsearch {expected}, MongoDB {expected}; 0 lost, 0 duplicated",
        WORKERS.len(),
        elapsed.as_secs_f64()
    );
    assert!(kills >= 1, "the drill killed nothing");
}
