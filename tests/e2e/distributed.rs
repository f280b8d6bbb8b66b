//! trawl across processes over a real broker: every role its own `trawl
//! node`. The drills every transport must pass run over both JetStream
//! (nats-server) and RabbitMQ; what only one of them has is tested on it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::brokers::Broker;
use crate::harness::*;
use trawl_testkit::{make_certs, nats_jwt, NatsServer, RabbitServer};

const STORE: &str =
    "[connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n";

on_both_transports!(
    separate_processes_share_work_and_store_each_result_once,
    a_scanner_killed_mid_run_loses_and_duplicates_nothing,
    a_broker_restart_mid_run_loses_nothing,
    garbage_on_the_payload_exchange_is_set_aside_while_the_rest_flows,
    a_store_that_fails_for_a_while_gets_every_result_once,
    a_payload_past_max_deliver_becomes_an_error_result_and_a_dead_letter,
    a_group_on_another_node_runs_only_on_what_yara_matched,
);

pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    /// The `[transport]` table's lines.
    transport: String,
    /// `trawl status` rows: payloads, results, dead letters.
    rows: [&'static str; 3],
    /// See [`Broker::queues_first`].
    queues_first: bool,
}

impl Cluster {
    pub(crate) fn new(broker: &dyn Broker) -> Self {
        Self::with_transport(broker, "")
    }

    /// With extra `[transport]` lines (auth, TLS).
    fn with_transport(broker: &dyn Broker, extra: &str) -> Self {
        Self::with_table(format!("{}{extra}\n", broker.transport()), broker)
    }

    /// JetStream over several servers of one cluster.
    fn on_servers(servers: &[&NatsServer], extra: &str) -> Self {
        let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
        Self::with_table(
            format!(
                "type = \"jetstream\"\nservers = [\"{}\"]\ninline_limit = 4096\n{extra}\n",
                urls.join("\", \"")
            ),
            servers[0],
        )
    }

    /// `transport` lines for a transport on `broker`.
    fn with_table(transport: String, broker: &dyn Broker) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("inbox")).unwrap();
        Cluster {
            dir,
            transport,
            rows: broker.rows(),
            queues_first: broker.queues_first(),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a node config with the given role tables and start it.
    pub(crate) fn node(&self, name: &str, roles: &str) -> Proc {
        Proc::spawn(
            trawl()
                .args(["node", "--config"])
                .arg(self.config(name, roles))
                .stdout(Stdio::null()),
        )
    }

    pub(crate) fn config(&self, name: &str, roles: &str) -> PathBuf {
        let cfg = self.path(&format!("{name}.toml"));
        fs::write(
            &cfg,
            format!(
                "version = 1\n[node]\nname = \"{name}\"\ndata_dir = \"state-{name}\"\nshutdown_grace = \"10s\"\n\
                 [transport]\n{}\n{roles}",
                self.transport
            ),
        )
        .unwrap();
        cfg
    }

    pub(crate) fn sensor(&self) -> Proc {
        self.node(
            "sensor",
            "[sources.inbox]\ntype = \"dir\"\npath = \"inbox\"\nsettle = \"200ms\"\npoll_interval = \"100ms\"\n",
        )
    }

    fn yara(&self, name: &str) -> Proc {
        self.node(
            name,
            &format!(
                "[workers.yara]\ntype = \"yara\"\nrules = \"{}\"\nconcurrency = 2\ntimeout = \"5s\"\n",
                repo().join("rules").display()
            ),
        )
    }

    fn hasher(&self) -> Proc {
        self.node(
            "hasher",
            // As short as yara's: work a lost server or node held comes back
            // after the ack deadline (timeout + margins), not a minute later.
            "[workers.hash]\ntype = \"hash\"\nconcurrency = 2\ntimeout = \"5s\"\n",
        )
    }

    pub(crate) fn store(&self) -> Proc {
        self.node("store", STORE)
    }

    pub(crate) fn db(&self) -> PathBuf {
        self.path("results.db")
    }

    /// Wait until `trawl status` lists every named consumer group: on
    /// RabbitMQ a group gets the payloads published after its queue is made.
    fn await_groups(&self, groups: &[&str]) {
        if !self.queues_first {
            return;
        }
        wait_for("the consumer groups", Duration::from_secs(60), || {
            let text = stdout(&status(self));
            groups.iter().all(|g| text.contains(g))
        });
    }

    /// Wait until `trawl status` counts `members` nodes consuming `group`'s
    /// queue: a node whose consumer is not there yet gets none of the work
    /// published meanwhile (JetStream consumers are pulled from, and have no
    /// members to count).
    fn await_members(&self, group: &str, members: usize) {
        if !self.queues_first {
            return;
        }
        wait_for(
            &format!("{members} members of {group}"),
            Duration::from_secs(60),
            || {
                stdout(&status(self)).lines().any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.get(1) == Some(&group)
                        && cols.last().and_then(|n| n.parse::<usize>().ok()) >= Some(members)
                })
            },
        );
    }

    /// A store, a hasher, a yara node per name, then the sensor.
    fn start(&self, yaras: &[&str]) -> Nodes {
        let store = self.store();
        let hasher = self.hasher();
        let yara = yaras.iter().map(|name| self.yara(name)).collect();
        self.await_groups(&["worker-yara", "worker-hash", "connector-db"]);
        self.await_members("worker-yara", yaras.len());
        Nodes {
            store,
            hasher,
            yara,
            sensor: self.sensor(),
        }
    }

    /// Wait until `total` results are stored, then check nothing more arrives
    /// and that each of `files` files has exactly one result per worker.
    fn expect_results(&self, total: usize, files: usize, within: Duration) {
        wait_for(&format!("{total} results"), within, || {
            count(&self.db()) >= total
        });
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(count(&self.db()), total, "no duplicates");
        assert_exactly_once(&self.db(), files);
    }

    fn drop_files(&self, n: usize, offset: usize) {
        for i in offset..offset + n {
            let data = if i == offset {
                eicar()
            } else {
                noise(i as u64, 200 + (i * 37) % 9000)
            };
            fs::write(self.path("inbox").join(format!("f{i:04}")), data).unwrap();
        }
    }

    /// A scanner node whose one slot takes long over every file: a rule
    /// walks every byte (longer than the broker's statistics take to show
    /// the scan under way). One delivery per payload.
    fn slow_scanner(&self, name: &str, timeout: &str) -> Proc {
        let rules = self.path("slow.yar");
        fs::write(
            &rules,
            "rule Slow { condition: for all i in (0..filesize - 1) : (for all j in (0..4095) : (uint8(i) <= 255 + j)) }\n",
        )
        .unwrap();
        self.node(
            name,
            &format!(
                "[workers.yara]\ntype = \"yara\"\nrules = \"{}\"\nconcurrency = 1\ntimeout = \"{timeout}\"\nmax_deliver = 1\n",
                rules.display()
            ),
        )
    }

    /// A store, a sensor and a slow scanner; one large file, whose scanner
    /// is killed mid-scan and replaced by another: the nodes running, the
    /// store, the sensor and the second scanner.
    fn cut_off_a_scan(&self, timeout: &str) -> [Proc; 3] {
        let store = self.store();
        let first = self.slow_scanner("yara-a", timeout);
        self.await_groups(&["worker-yara", "connector-db"]);
        let sensor = self.sensor();
        fs::write(self.path("inbox").join("big.bin"), noise(9, 8 << 20)).unwrap();
        wait_for("the scan under way", Duration::from_secs(30), || {
            self.ack_pending("worker-yara") == "1"
        });
        first.kill9();
        [store, sensor, self.slow_scanner("yara-b", timeout)]
    }

    /// `trawl status`'s count of `group`'s payloads delivered and not yet
    /// acknowledged.
    fn ack_pending(&self, group: &str) -> String {
        stdout(&status(self))
            .lines()
            .find(|l| l.contains(group))
            .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
            .unwrap_or_default()
    }

    /// `trawl status`'s message count of the dead letters.
    fn dead_letters(&self) -> String {
        stdout(&status(self))
            .lines()
            .find(|l| l.starts_with(self.rows[2]))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .unwrap_or_default()
    }
}

pub(crate) fn count(db: &Path) -> usize {
    if !db.exists() {
        return 0;
    }
    rusqlite::Connection::open(db)
        .and_then(|c| c.query_row("SELECT count(*) FROM results", [], |r| r.get::<_, i64>(0)))
        .map(|n| n as usize)
        .unwrap_or(0)
}

struct Nodes {
    store: Proc,
    hasher: Proc,
    yara: Vec<Proc>,
    sensor: Proc,
}

impl Nodes {
    /// SIGTERM every node, sources first; each must exit cleanly.
    fn stop(self) {
        self.sensor.terminate();
        for y in self.yara {
            y.terminate();
        }
        self.hasher.terminate();
        self.store.terminate();
    }
}

/// filename → worker → rows.
type PerFile = BTreeMap<String, BTreeMap<String, usize>>;
/// worker → the nodes that produced its results.
type Producers = BTreeMap<String, BTreeSet<String>>;

fn tally(db: &Path) -> (PerFile, Producers) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT filename, worker, node FROM results")
        .unwrap();
    let mut per_file = PerFile::new();
    let mut nodes = Producers::new();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (file, worker, node) = row.unwrap();
        *per_file
            .entry(file)
            .or_default()
            .entry(worker.clone())
            .or_default() += 1;
        nodes.entry(worker).or_default().insert(node);
    }
    (per_file, nodes)
}

fn assert_exactly_once(db: &Path, files: usize) {
    let (per_file, _) = tally(db);
    assert_eq!(per_file.len(), files, "every file has results");
    for (file, workers) in &per_file {
        assert_eq!(workers.get("yara"), Some(&1), "{file}: {workers:?}");
        assert_eq!(workers.get("hash"), Some(&1), "{file}: {workers:?}");
    }
}

/// `trawl status` exited 2 because it could not reach the server.
fn assert_unreachable(out: &std::process::Output) {
    assert_eq!(out.status.code(), Some(2), "{}{}", stdout(out), stderr(out));
    assert!(
        stderr(out).contains("cannot reach the \"jetstream\" transport"),
        "{}",
        stderr(out)
    );
}

fn status(c: &Cluster) -> std::process::Output {
    run(trawl()
        .args(["status", "--config"])
        .arg(c.path("store.toml")))
}

fn separate_processes_share_work_and_store_each_result_once(broker: &mut dyn Broker) {
    let c = Cluster::new(broker);
    let nodes = c.start(&["yara-a", "yara-b"]);
    c.drop_files(500, 0);
    c.expect_results(1000, 500, Duration::from_secs(120));
    let (_, producers) = tally(&c.db());
    assert_eq!(
        producers["yara"],
        BTreeSet::from(["yara-a".to_owned(), "yara-b".to_owned()]),
        "both yara processes did work"
    );
    assert_eq!(producers["hash"], BTreeSet::from(["hasher".to_owned()]));
    let eicar_hit: String = one(
        &c.db(),
        "SELECT rule FROM yara_matches WHERE filename = 'f0000'",
        [],
    );
    assert_eq!(eicar_hit, "EICAR_Test_File");

    // The backlog is visible per worker group and connector.
    let out = status(&c);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for name in [
        c.rows[0],
        c.rows[1],
        "worker-yara",
        "worker-hash",
        "connector-db",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    // Each node's counters: what it published, scanned and stored.
    let mut shown = BTreeMap::new();
    let of = |shown: &BTreeMap<String, BTreeMap<String, u64>>, node: &str, k: &str| {
        shown.get(node).and_then(|c| c.get(k)).copied().unwrap_or(0)
    };
    wait_for(
        "every node's counters in status",
        Duration::from_secs(60),
        || {
            shown = status_counters(&c.path("store.toml"));
            // Each node announces on its own clock: all must have caught up.
            of(&shown, "store", "stored") == 1000
                && of(&shown, "yara-a", "ok") + of(&shown, "yara-b", "ok") == 500
                && of(&shown, "sensor", "published") == 500
                && of(&shown, "hasher", "ok") == 500
        },
    );
    assert_eq!(
        of(&shown, "yara-a", "error") + of(&shown, "yara-b", "error"),
        0
    );
    nodes.stop();
}

fn a_scanner_killed_mid_run_loses_and_duplicates_nothing(broker: &mut dyn Broker) {
    let c = Cluster::new(broker);
    let mut nodes = c.start(&["yara-a", "yara-b"]);
    c.drop_files(300, 0);
    wait_for("first results", Duration::from_secs(60), || {
        count(&c.db()) >= 100
    });
    nodes.yara.remove(0).kill9();
    c.expect_results(600, 300, Duration::from_secs(120));
    nodes.stop();
}

fn a_broker_restart_mid_run_loses_nothing(broker: &mut dyn Broker) {
    let c = Cluster::new(broker);
    let nodes = c.start(&["yara-a"]);
    c.drop_files(150, 0);
    wait_for("first results", Duration::from_secs(60), || {
        count(&c.db()) >= 50
    });
    broker.outage();
    c.drop_files(150, 150);
    c.expect_results(600, 300, Duration::from_secs(150));
    nodes.stop();
}

fn garbage_on_the_payload_exchange_is_set_aside_while_the_rest_flows(broker: &mut dyn Broker) {
    let c = Cluster::new(broker);
    let nodes = c.start(&["yara-a"]);
    // What the nodes make (streams, exchanges) is there to publish to.
    wait_for("the nodes' streams", Duration::from_secs(60), || {
        status(&c).status.success()
    });
    broker.inject(true, b"\xc1\xff not msgpack".to_vec());
    for (payload, message) in crafted_messages() {
        broker.inject(payload, message);
    }
    c.drop_files(5, 0);
    c.expect_results(10, 5, Duration::from_secs(60));
    // One copy per worker group that received each payload, one from the
    // connector for the result; the nodes kept working.
    wait_for("garbage set aside", Duration::from_secs(30), || {
        c.dead_letters() == "5"
    });
    nodes.stop();
    let reasons = broker.dead_reasons();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("lineage.root_id") || r.contains("id: not a ULID")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("unknown variant")),
        "{reasons:?}"
    );
    assert!(reasons.iter().all(|r| !r.contains(['\r', '\n'])));
}

/// Messages a hostile publisher could send that decode far enough to be
/// dangerous (`true`: a payload event): a payload whose id is a path, a
/// result whose decode error echoes a CR/LF.
fn crafted_messages() -> Vec<(bool, Vec<u8>)> {
    let mut payload = trawl_core::PayloadEvent::new_root(
        trawl_core::sha256_hex(b"x"),
        1,
        trawl_core::BlobRef::Inline(b"x".to_vec()),
        trawl_core::SourceInfo {
            kind: trawl_core::SourceKind::Dir,
            sensor: "evil".into(),
            path: None,
        },
    );
    payload.id = "../../tmp/owned\n-o\n/etc/x".into();
    let result = trawl_core::ResultEvent::new(
        payload.summary(),
        trawl_core::WorkerInfo::new("hash", "1"),
        trawl_core::Outcome::ok(),
        serde_json::Value::Null,
        payload.ingested_at,
        "evil",
    );
    let mut result = serde_json::to_value(&result).unwrap();
    result["outcome"]["status"] = "ok\r\nTrawl-Forged: 1".into();
    vec![
        (true, trawl_core::wire::encode(&payload).unwrap()),
        (false, trawl_core::wire::encode(&result).unwrap()),
    ]
}

fn a_store_that_fails_for_a_while_gets_every_result_once(broker: &mut dyn Broker) {
    let c = Cluster::new(broker);
    let Nodes {
        store,
        hasher,
        yara,
        sensor,
    } = c.start(&["yara-a"]);
    c.drop_files(20, 0);
    wait_for("first batch stored", Duration::from_secs(60), || {
        count(&c.db()) >= 40
    });
    // Another writer holds the database: every write times out as busy.
    let lock = rusqlite::Connection::open(c.db()).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    c.drop_files(100, 20);
    std::thread::sleep(Duration::from_secs(8));
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    c.expect_results(240, 120, Duration::from_secs(90));
    let log = String::from_utf8_lossy(&store.terminate().stderr).into_owned();
    assert!(log.contains("datastore unavailable; retrying"), "{log}");
    sensor.terminate();
    for p in yara.into_iter().chain([hasher]) {
        p.terminate();
    }
}

fn a_payload_past_max_deliver_becomes_an_error_result_and_a_dead_letter(broker: &mut dyn Broker) {
    let c = Cluster::new(broker);
    // Delivered again (after the ack deadline, or at once when the
    // connection drops), past max_deliver: recorded, set aside.
    let [store, sensor, second] = c.cut_off_a_scan("20s");
    wait_for("the error result", Duration::from_secs(60), || {
        count(&c.db()) == 1
    });
    let (outcome, message): (String, String) = rusqlite::Connection::open(c.db())
        .unwrap()
        .query_row("SELECT outcome, message FROM results", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(outcome, "error");
    assert!(
        message.starts_with("gave up after 1 deliveries"),
        "{message}"
    );
    wait_for("the payload set aside", Duration::from_secs(10), || {
        c.dead_letters() == "1"
    });
    for node in [sensor, second, store] {
        node.terminate();
    }
}

fn a_group_on_another_node_runs_only_on_what_yara_matched(broker: &mut dyn Broker) {
    let c = Cluster::new(broker);
    let store = c.store();
    let yara = c.yara("yara-a");
    let on_matches = c.node("on-matches", crate::scanners::ON_MATCHES);
    c.await_groups(&["worker-yara", "worker-pe", "worker-hash", "connector-db"]);
    let sensor = c.sensor();
    crate::scanners::drop_match_corpus(&c.path("inbox"));
    crate::scanners::assert_ran_on_matches_only(&c.db());
    // Both groups read the results, and are caught up.
    let status = stdout(&status(&c));
    for group in ["worker-pe", "worker-hash"] {
        assert!(
            status.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() == 6 && cols[..3] == [c.rows[1], group, "0"]
            }),
            "{group}: {status}"
        );
    }
    for p in [sensor, on_matches, yara, store] {
        p.terminate();
    }
}

#[test]
fn user_password_and_token_auth_from_the_environment() {
    let nats = NatsServer::start_with(&["--user", "trawl", "--pass", "s3cret"]);
    let c = Cluster::with_transport(
        &nats,
        "user = \"trawl\"\npassword = \"${TRAWL_E2E_NATS_PASSWORD}\"",
    );
    // The store node makes the streams that status reports on.
    let store = Proc::spawn(
        trawl()
            .env("TRAWL_E2E_NATS_PASSWORD", "s3cret")
            .args(["node", "--config"])
            .arg(c.config("store", STORE))
            .stdout(Stdio::null()),
    );
    let status_with = |password: &str| {
        run(trawl()
            .env("TRAWL_E2E_NATS_PASSWORD", password)
            .args(["status", "--config"])
            .arg(c.path("store.toml")))
    };
    wait_for(
        "status with the right password",
        Duration::from_secs(30),
        || status_with("s3cret").status.success(),
    );
    store.terminate();
    let out = status_with("wrong");
    assert_unreachable(&out);

    let nats = NatsServer::start_with(&["--auth", "t0ken"]);
    let c = Cluster::with_transport(&nats, "token = \"t0ken\"");
    let store = c.store();
    wait_for("status with the token", Duration::from_secs(30), || {
        status(&c).status.success()
    });
    store.terminate();
}

#[test]
fn a_three_server_cluster_with_r3_streams_survives_losing_a_server() {
    let mut servers = trawl_testkit::cluster();
    let c = Cluster::on_servers(&servers.iter().collect::<Vec<_>>(), "replicas = 3");
    let nodes = c.start(&["yara-a"]);
    // A new cluster elects its JetStream leaders before nodes can make
    // their streams: slow on a loaded machine, and not what this tests.
    wait_for("the replicated streams", Duration::from_secs(120), || {
        status(&c).status.success()
    });
    c.drop_files(100, 0);
    wait_for("first results", Duration::from_secs(180), || {
        count(&c.db()) >= 60
    });
    servers[0].kill();
    c.drop_files(100, 100);
    c.expect_results(400, 200, Duration::from_secs(180));
    nodes.stop();
}

#[test]
fn mutual_tls_with_a_ca_and_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let cert = |name: &str| certs.path().join(name).display().to_string();
    let nats = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        &cert("server.pem"),
        "--tlskey",
        &cert("server-key.pem"),
        "--tlscacert",
        &cert("ca.pem"),
        "--tlsverify",
    ]);
    let tls = format!(
        "tls_required = true\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}",
        cert("ca.pem"),
        cert("client.pem"),
        cert("client-key.pem")
    );
    let c = Cluster::with_transport(&nats, &tls);
    let nodes = c.start(&["yara-a"]);
    c.drop_files(10, 0);
    c.expect_results(20, 10, Duration::from_secs(60));
    nodes.stop();

    // Without a client certificate the server refuses the connection.
    let without = Cluster::with_transport(
        &nats,
        &format!("tls_required = true\ntls_ca = {:?}", cert("ca.pem")),
    );
    let store = without.store();
    let out = status(&without);
    assert_unreachable(&out);
    drop(store);
}

#[test]
fn nkey_authentication_with_a_seed_from_the_environment() {
    let user = nkeys::KeyPair::new_user();
    let conf = tempfile::tempdir().unwrap();
    let conf_file = conf.path().join("auth.conf");
    fs::write(
        &conf_file,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let nats = NatsServer::start_with(&["-c", &conf_file.display().to_string()]);
    let c = Cluster::with_transport(&nats, "nkey = \"${TRAWL_E2E_NKEY_SEED}\"");
    let seed = user.seed().unwrap();
    let status_with = |seed: &str| {
        run(trawl()
            .env("TRAWL_E2E_NKEY_SEED", seed)
            .args(["status", "--config"])
            .arg(c.path("store.toml")))
    };
    let store = Proc::spawn(
        trawl()
            .env("TRAWL_E2E_NKEY_SEED", &seed)
            .args(["node", "--config"])
            .arg(c.config("store", STORE))
            .stdout(Stdio::null()),
    );
    wait_for("status with the seed", Duration::from_secs(30), || {
        status_with(&seed).status.success()
    });
    store.terminate();
    let other = nkeys::KeyPair::new_user().seed().unwrap();
    let out = status_with(&other);
    assert_unreachable(&out);
}

#[test]
fn a_credentials_file_authenticates_against_an_operator_mode_server() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "op",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "trawl",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    // JetStream needs a system account to run in operator mode.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        "sensor",
        serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    let conf = tempfile::tempdir().unwrap();
    fs::write(conf.path().join("op.jwt"), &operator_jwt).unwrap();
    let conf_file = conf.path().join("operator.conf");
    fs::write(
        &conf_file,
        format!(
            "operator: \"{}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
             resolver_preload: {{ {}: \"{account_jwt}\", {sys}: \"{system_jwt}\" }}\n",
            conf.path().join("op.jwt").display(),
            account.public_key(),
            sys = system.public_key(),
        ),
    )
    .unwrap();
    let creds = conf.path().join("sensor.creds");
    let write_creds = |seed: &str| {
        fs::write(
            &creds,
            format!(
                "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .unwrap()
    };
    write_creds(&user.seed().unwrap());
    let nats = NatsServer::start_with(&["-c", &conf_file.display().to_string()]);
    let c = Cluster::with_transport(&nats, "creds = \"${TRAWL_E2E_CREDS}\"");
    let with_creds = |cmd: &mut std::process::Command| {
        cmd.env("TRAWL_E2E_CREDS", &creds);
    };
    let spawn = |name: &str, roles: &str| {
        let mut cmd = trawl();
        with_creds(&mut cmd);
        cmd.args(["node", "--config"])
            .arg(c.config(name, roles))
            .stdout(Stdio::null());
        Proc::spawn(&mut cmd)
    };
    let store = spawn("store", STORE);
    let hasher = spawn("hasher", "[workers.hash]\ntype = \"hash\"\n");
    let sensor = spawn(
        "sensor",
        "[sources.inbox]\ntype = \"dir\"\npath = \"inbox\"\nsettle = \"200ms\"\npoll_interval = \"100ms\"\n",
    );
    c.drop_files(10, 0);
    wait_for("10 results", Duration::from_secs(60), || {
        count(&c.db()) >= 10
    });
    for p in [sensor, hasher, store] {
        p.terminate();
    }

    // The same JWT with a seed that is not its user's is refused.
    write_creds(&nkeys::KeyPair::new_user().seed().unwrap());
    let mut cmd = trawl();
    with_creds(&mut cmd);
    let out = run(cmd.args(["status", "--config"]).arg(c.path("store.toml")));
    assert_unreachable(&out);
}

/// A `[transport]` table for `nats` with `extra` lines.
fn jetstream_on(nats: &NatsServer, extra: &str) -> String {
    format!(
        "type = \"jetstream\"\nservers = [\"{}\"]\n{extra}",
        nats.url()
    )
}

async fn payload_stream(nats: &NatsServer) -> Option<async_nats::jetstream::stream::Info> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = js.get_stream("TRAWL_PAYLOADS").await.ok()?;
    Some(stream.info().await.unwrap().clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_are_made_by_nodes_and_never_changed_by_status_or_config_check() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made");
    let cfg = inbox_node_config_on(&made, &jetstream_on(&nats, "max_age = \"2h\""), STORE);
    let out = run(trawl().args(["status", "--config"]).arg(&cfg));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("TRAWL_PAYLOADS"), "{}", stderr(&out));
    assert!(
        payload_stream(&nats).await.is_none(),
        "status created a stream"
    );

    let node = start_node(&cfg);
    for _ in 0..300 {
        if payload_stream(&nats).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.terminate();
    let other = inbox_node_config_on(
        &dir.path().join("other"),
        &jetstream_on(&nats, "max_age = \"1h\"\nmax_bytes = 1000000"),
        STORE,
    );
    for args in [
        &["status", "--config"][..],
        &["config", "check", "--connect"],
    ] {
        let out = run(trawl().args(args).arg(&other));
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let info = payload_stream(&nats).await.unwrap();
    assert_eq!(info.config.max_age, Duration::from_secs(7200), "unchanged");
    assert_eq!(info.config.max_bytes, -1, "unchanged");
    assert_eq!(
        info.config.discard,
        async_nats::jetstream::stream::DiscardPolicy::New
    );
    assert_eq!(info.config.duplicate_window, Duration::from_secs(600));
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut blobs = js.get_stream("OBJ_TRAWL_BLOBS").await.unwrap();
    assert_eq!(
        blobs.info().await.unwrap().config.discard,
        async_nats::jetstream::stream::DiscardPolicy::New,
        "a full blob store refuses new bytes rather than drop stored chunks"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_payload_stream_holds_the_folder_and_forgets_no_payload() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    // Room for about ten 20 kB payloads; no worker drains it (a limits
    // stream keeps what was scanned until max_age anyway).
    let cfg = inbox_node_config_on(dir.path(), &jetstream_on(&nats, "max_bytes = 250000"), "");
    for i in 0..30 {
        fs::write(dir.path().join(format!("inbox/f{i:02}")), noise(i, 20_000)).unwrap();
    }
    let node = start_node(&cfg);
    let mut stored = 0;
    for _ in 0..300 {
        if let Some(info) = payload_stream(&nats).await {
            stored = info.state.messages;
            if stored >= 5 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = node.terminate();
    let info = payload_stream(&nats).await.unwrap();
    assert!(stored >= 5 && info.state.messages < 30, "{info:?}");
    assert_eq!(info.state.first_sequence, 1, "nothing stored was dropped");
    let log = String::from_utf8_lossy(&log.stderr);
    assert!(log.contains("holding the folder"), "{log}");
    let checkpoint = fs::read_to_string(dir.path().join("state/sources/inbox.checkpoint")).unwrap();
    let handled = checkpoint.lines().filter(|l| l.starts_with("E\t")).count();
    // Publishes cut short by the stop are made again, under the same ids,
    // by the next run (the server drops the repeats).
    assert!(
        handled as u64 <= info.state.messages,
        "only what the stream took is checkpointed\n{checkpoint}"
    );
}

#[test]
fn an_event_over_the_servers_message_limit_is_an_error_record_not_a_held_folder() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("filestore");
    // Two carved files; the sidecar of the first carries a 2 MB header, so
    // its event is over the server's 1 MiB message limit.
    for (i, (data, agent)) in [
        (b"first carved file".as_slice(), "A".repeat(2_000_000)),
        (b"second carved file".as_slice(), "curl/8".to_owned()),
    ]
    .into_iter()
    .enumerate()
    {
        let sha = trawl_core::sha256_hex(data);
        fs::create_dir_all(store.join(&sha[..2])).unwrap();
        fs::write(store.join(&sha[..2]).join(&sha), data).unwrap();
        let side = serde_json::json!({
            "src_ip": "10.1.1.1", "dest_ip": "10.2.2.2", "proto": "TCP",
            "http": {"http_user_agent": agent},
            "fileinfo": {"filename": format!("f{i}"), "state": "CLOSED", "stored": true, "sha256": sha},
        });
        fs::write(
            store.join(&sha[..2]).join(format!("{sha}.1.{i}.json")),
            side.to_string(),
        )
        .unwrap();
    }
    let cfg = dir.path().join("node.toml");
    fs::write(
        &cfg,
        format!(
            "version = 1\n[node]\nname = \"n\"\ndata_dir = \"state\"\n[transport]\n{}\n\
             [sources.suricata]\ntype = \"suricata\"\npath = \"filestore\"\npoll_interval = \"100ms\"\n\
             [workers.hash]\ntype = \"hash\"\n{STORE}",
            jetstream_on(&nats, "")
        ),
    )
    .unwrap();
    let node = start_node(&cfg);
    let db = dir.path().join("results.db");
    wait_for("both files on record", Duration::from_secs(60), || {
        rows(&db).len() >= 2
    });
    node.terminate();
    let rows = rows(&db);
    let second = rows
        .iter()
        .find(|r| r.filename.as_deref() == Some("f1"))
        .expect("the next file was not held back");
    assert_eq!(
        (second.worker.as_str(), second.outcome.as_str()),
        ("hash", "ok")
    );
    let first = rows
        .iter()
        .find(|r| r.filename.as_deref() == Some("f0"))
        .unwrap();
    assert_eq!(first.worker, "ingest");
    assert!(
        first.message.as_deref().unwrap().contains("message limit"),
        "{first:?}"
    );
}

#[test]
fn tls_settings_never_fall_back_to_plain_text() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let nats = NatsServer::start();
    let plain = Cluster::new(&nats);
    let store = plain.store();
    wait_for("streams made", Duration::from_secs(30), || {
        status(&plain).status.success()
    });
    // A CA with a `nats://` URL on a server without TLS: refused, not plain.
    let ca = certs.path().join("ca.pem").display().to_string();
    let tls = Cluster::with_transport(&nats, &format!("tls_ca = {ca:?}"));
    tls.config("store", STORE);
    let out = status(&tls);
    assert_unreachable(&out);
    drop(store);
}

#[test]
fn rabbitmq_credentials_come_from_the_environment_a_dead_server_is_passed_and_a_wrong_password_is_refused(
) {
    let rabbit = RabbitServer::start();
    rabbit.add_user("trawl", "s3cret");
    // The first server answers nobody: nodes go on to the next.
    let transport = format!(
        "type = \"rabbitmq\"\nservers = [\"amqp://127.0.0.1:{}/%2f\", \"{}\"]\nmanagement = \"{}\"\n",
        trawl_testkit::free_port(),
        rabbit.url_as("trawl", "${TRAWL_E2E_AMQP_PASSWORD}"),
        rabbit.management_url()
    );
    let c = Cluster::with_table(transport, &rabbit);
    let node_with = |name: &str, roles: &str, password: &str| {
        Proc::spawn(
            trawl()
                .env("TRAWL_E2E_AMQP_PASSWORD", password)
                .args(["node", "--config"])
                .arg(c.config(name, roles))
                .stdout(Stdio::null()),
        )
    };
    let status_with = |password: &str| {
        run(trawl()
            .env("TRAWL_E2E_AMQP_PASSWORD", password)
            .args(["status", "--config"])
            .arg(c.path("store.toml")))
    };
    let store = node_with("store", STORE, "s3cret");
    let hasher = node_with(
        "hasher",
        "[workers.hash]\ntype = \"hash\"\nconcurrency = 2\n",
        "s3cret",
    );
    wait_for("the queues", Duration::from_secs(60), || {
        let out = status_with("s3cret");
        let text = stdout(&out);
        text.contains("worker-hash") && text.contains("connector-db")
    });
    let sensor = node_with(
        "sensor",
        "[sources.inbox]\ntype = \"dir\"\npath = \"inbox\"\nsettle = \"200ms\"\npoll_interval = \"100ms\"\n",
        "s3cret",
    );
    c.drop_files(10, 0);
    wait_for("10 results", Duration::from_secs(60), || {
        count(&c.db()) == 10
    });

    // A wrong password is an error at once, naming the refusal; never a
    // node that waits forever for a broker that will not have it.
    let out = status_with("wrong");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("wrong"),
        "the password is not shown: {}",
        stderr(&out)
    );
    let refused = node_with("other", STORE, "wrong").wait();
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("ACCESS_REFUSED"),
        "{}",
        stderr(&refused)
    );
    for p in [sensor, hasher, store] {
        p.terminate();
    }
}

#[test]
fn rabbitmq_mutual_tls_with_a_ca_and_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let cert = |name: &str| certs.path().join(name).display().to_string();
    let rabbit = RabbitServer::start_with_tls(certs.path());
    let table = |client_cert: bool| {
        let mut t = format!(
            "type = \"rabbitmq\"\nservers = [\"{}\"]\nmanagement = \"{}\"\ntls_ca = {:?}\n",
            rabbit.tls_url(),
            rabbit.management_url(),
            cert("ca.pem")
        );
        if client_cert {
            t.push_str(&format!(
                "tls_cert = {:?}\ntls_key = {:?}\n",
                cert("client.pem"),
                cert("client-key.pem")
            ));
        }
        t
    };
    let c = Cluster::with_table(table(true), &rabbit);
    let nodes = c.start(&["yara-a"]);
    c.drop_files(10, 0);
    c.expect_results(20, 10, Duration::from_secs(60));
    nodes.stop();

    // Without a client certificate the broker refuses the connection.
    let without = Cluster::with_table(table(false), &rabbit);
    without.config("store", STORE);
    let out = status(&without);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// A group whose queue cannot be made as its node starts (another client
/// holds the name) holds up that group, not the node: the node keeps
/// trying, and the group consumes once the name is free.
#[test]
fn rabbitmq_a_group_that_cannot_consume_at_start_starts_later_and_loses_nothing() {
    use lapin::options::QueueDeclareOptions;
    let rabbit = RabbitServer::start();
    let c = Cluster::new(&rabbit);
    let rt = rt();
    let holder = rt.block_on(async {
        let conn = lapin::Connection::connect(&rabbit.url(), Default::default())
            .await
            .unwrap();
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        };
        conn.create_channel()
            .await
            .unwrap()
            .queue_declare(
                "trawl.payloads.worker-hash".into(),
                exclusive,
                Default::default(),
            )
            .await
            .unwrap();
        conn
    });
    let store = c.store();
    let yara = c.yara("yara");
    let mut hasher = c.hasher();
    c.await_groups(&["worker-yara", "connector-db"]);
    c.await_members("worker-yara", 1);
    std::thread::sleep(Duration::from_secs(3));
    assert!(hasher.running(), "{}", hasher.log());
    assert!(
        hasher
            .log()
            .contains("cannot start: transport unavailable: queue trawl.payloads.worker-hash")
            && hasher.log().contains("RESOURCE_LOCKED"),
        "the node says why the group waits: {}",
        hasher.log()
    );
    rt.block_on(holder.close(200, "released".into())).unwrap();
    c.await_members("worker-hash", 1);
    let sensor = c.sensor();
    c.drop_files(20, 0);
    c.expect_results(40, 20, Duration::from_secs(120));
    for p in [sensor, hasher, yara, store] {
        p.terminate();
    }
}

#[test]
fn rabbitmq_stores_larger_files_once_in_parts_that_every_group_of_a_node_reads_once() {
    let rabbit = RabbitServer::start();
    // A 1 MiB message limit: the 20 MiB file goes in 40 parts.
    let c = Cluster::with_transport(&rabbit, "max_message = 1048576");
    let store = c.store();
    let scanner = c.node(
        "scanner",
        "[workers.hash]\ntype = \"hash\"\n[workers.filetype]\ntype = \"filetype\"\n",
    );
    c.await_groups(&["worker-hash", "worker-filetype", "connector-db"]);
    let sensor = c.sensor();
    let files = [
        ("big.bin", noise(20, 20 << 20)),
        ("mid.bin", noise(21, 300 << 10)),
        ("small.txt", b"inline, inside its event".to_vec()),
    ];
    // Copies to check digests against: the sensor may remove what it read.
    fs::create_dir_all(c.path("copies")).unwrap();
    for (name, data) in &files {
        fs::write(c.path("copies").join(name), data).unwrap();
        fs::write(c.path("inbox").join(name), data).unwrap();
    }
    wait_for("6 results", Duration::from_secs(120), || {
        count(&c.db()) == 6
    });
    let rows = rows(&c.db());
    for (name, data) in &files {
        let file = c.path("copies").join(name);
        let of: Vec<_> = rows
            .iter()
            .filter(|r| r.filename.as_deref() == Some(*name))
            .collect();
        assert_eq!(of.len(), 2, "{name}: {of:?}");
        assert!(of.iter().all(|r| r.outcome == "ok"), "{name}: {of:?}");
        assert_eq!(of[0].sha256, trawl_core::sha256_hex(data));
        // Computed from the bytes the scanner read back.
        let hash = of.iter().find(|r| r.worker == "hash").unwrap();
        assert_eq!(
            hash.data["md5"],
            coreutils_digest("md5sum", &file),
            "{name}"
        );
    }
    // The two stored files were read from the broker once each; the other
    // group got them from the node.
    let log = stderr(&scanner.terminate());
    assert!(log.contains("from_store=2 shared=2"), "{log}");
    for p in [sensor, store] {
        p.terminate();
    }
}

/// The results stream refuses every message for longer than the payloads'
/// deliveries would last if each refusal handed them back (as a stream
/// does while it elects a leader, or when it is full): the scanners keep
/// the payloads and publish once the stream takes messages again, so no
/// completed scan becomes a "gave up" record.
#[test]
fn a_results_stream_that_refuses_for_a_while_costs_no_deliveries() {
    let nats = NatsServer::start();
    let c = Cluster::with_transport(&nats, "");
    let nodes = c.start(&["yara-a"]);
    // Every node has made its streams (which would undo the change below)
    // once a file went through.
    c.drop_files(1, 0);
    wait_for("the first results", Duration::from_secs(60), || {
        count(&c.db()) == 2
    });
    cap_stream(&nats, "TRAWL_RESULTS", 1);
    c.drop_files(10, 1);
    // Past five deliveries handed back a second apart (the default max_deliver).
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(count(&c.db()), 2, "the stream took results while full");
    cap_stream(&nats, "TRAWL_RESULTS", -1);
    c.expect_results(22, 11, Duration::from_secs(90));
    let not_ok: i64 = one(
        &c.db(),
        "SELECT count(*) FROM results WHERE outcome != 'ok'",
        [],
    );
    assert_eq!(not_ok, 0, "a completed scan was recorded as failed");
    nodes.stop();
}

/// A payload on its last delivery whose "gave up" record the results stream
/// refuses, on a node told to stop: no delivery would follow a hand-back,
/// so the payload is set aside, saying why, rather than lost.
#[test]
fn a_last_delivery_whose_record_cannot_be_stored_is_set_aside_when_its_node_stops() {
    let nats = NatsServer::start();
    let c = Cluster::with_transport(&nats, "");
    let [store, sensor, second] = last_record_refused(&nats, &c, &["TRAWL_RESULTS"]);
    assert_eq!(c.dead_letters(), "0");
    second.terminate();
    wait_for("the payload set aside", Duration::from_secs(10), || {
        c.dead_letters() == "1"
    });
    let reason = only_dead_reason(&nats);
    assert!(
        reason.starts_with("gave up after 1 deliveries")
            && reason.ends_with("(its record could not be stored)"),
        "{reason}"
    );
    for node in [sensor, store] {
        node.terminate();
    }
}

#[test]
fn a_last_delivery_that_cannot_be_set_aside_either_is_offered_again_and_set_aside_later() {
    let nats = NatsServer::start();
    let c = Cluster::with_transport(&nats, "");
    // Neither the record nor the dead letter can be stored.
    let [store, sensor, second] = last_record_refused(&nats, &c, &["TRAWL_RESULTS", "TRAWL_DLQ"]);
    let log = stderr(&second.terminate());
    assert!(log.contains("cannot set the payload aside"), "{log}");
    cap_stream(&nats, "TRAWL_RESULTS", -1);
    cap_stream(&nats, "TRAWL_DLQ", -1);
    // The server still offers it, past its deliveries: given up and set
    // aside by the next scanner, with its record.
    let third = c.slow_scanner("yara-c", "5s");
    wait_for("the payload set aside", Duration::from_secs(90), || {
        c.dead_letters() == "1"
    });
    let reason = only_dead_reason(&nats);
    assert!(reason.starts_with("gave up after 1 deliveries"), "{reason}");
    wait_for("its error record", Duration::from_secs(30), || {
        count(&c.db()) == 1
    });
    for node in [third, sensor, store] {
        node.terminate();
    }
}

/// A payload's scanner killed mid-scan, `full` streams made full, and the
/// second scanner on the payload's last delivery retrying its refused
/// "gave up" record: the store, the sensor and the second scanner.
fn last_record_refused(nats: &NatsServer, c: &Cluster, full: &[&str]) -> [Proc; 3] {
    // A short scan timeout: the payload comes again soon after its
    // scanner is killed.
    let nodes = c.cut_off_a_scan("5s");
    // Once the node has made its streams (which would undo the change).
    wait_for("the second scanner ready", Duration::from_secs(30), || {
        nodes[2].log().contains("JetStream ready")
    });
    for stream in full {
        cap_stream(nats, stream, 1);
    }
    wait_for("the error record refused", Duration::from_secs(60), || {
        nodes[2]
            .log()
            .contains("cannot publish the result; trying again")
    });
    nodes
}

/// Limit `stream` to `max_bytes` (-1: no limit); a full stream refuses
/// new messages.
fn cap_stream(nats: &NatsServer, stream: &str, max_bytes: i64) {
    let url = nats.url();
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let mut s = js.get_stream(stream).await.unwrap();
        let config = s.info().await.unwrap().config.clone();
        js.update_stream(async_nats::jetstream::stream::Config {
            max_bytes,
            ..config
        })
        .await
        .unwrap();
    });
}

/// Why the one dead letter was set aside.
fn only_dead_reason(nats: &NatsServer) -> String {
    let mut reasons = nats.dead_reasons();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    reasons.remove(0)
}
