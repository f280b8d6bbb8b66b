//! deploy/: every config a recipe runs is one trawl accepts, the compose file
//! names only what exists, and a sensor behind the NATS leaf node delivers.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::Value;
use trawl_testkit::{free_port, listening, noise, wait_for, ChildServer, NatsServer};

use crate::harness::{inbox_node_config_on, repo, rows, run, start_node, stderr, stdout, trawl};

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// `/etc/trawl/ROLE.toml` as the image and the units see it: the repository's copy.
fn installed(path: &str) -> PathBuf {
    let name = path
        .strip_prefix("/etc/trawl/")
        .unwrap_or_else(|| panic!("{path} is not under /etc/trawl"));
    deploy().join("etc/trawl").join(name)
}

fn config_check(cfg: &Path) {
    let out = run(trawl()
        .args(["config", "check"])
        .arg(cfg)
        .env("TRAWL_RULES", repo().join("rules")));
    assert!(out.status.success(), "{}: {}", cfg.display(), stderr(&out));
    assert!(stdout(&out).contains(": ok"), "{}", stdout(&out));
}

/// Images the recipes may pull: official images of their projects.
const OFFICIAL: [&str; 6] = [
    "nats",
    "mongo",
    "docker.elastic.co/elasticsearch/elasticsearch",
    "docker.elastic.co/kibana/kibana",
    "clamav/clamav",
    "curlimages/curl",
];

#[test]
fn the_compose_site_names_only_what_exists_and_configs_trawl_accepts() {
    let text = fs::read_to_string(deploy().join("compose.yaml")).unwrap();
    let mut compose: Value = serde_norway::from_str(&text).expect("compose.yaml parses");
    compose.apply_merge().expect("its merge keys resolve");
    let services = compose["services"].as_mapping().expect("services");
    let mut roles = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        if let Some(build) = service.get("build") {
            let context = deploy().join(build["context"].as_str().unwrap());
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap());
            assert!(dockerfile.is_file(), "{name}: {}", dockerfile.display());
        } else {
            let image = service["image"].as_str().expect("an image or a build");
            let (repository, tag) = image.rsplit_once(':').expect("a pinned tag");
            assert!(OFFICIAL.contains(&repository), "{name}: {image}");
            assert!(!tag.is_empty() && tag != "latest", "{name}: {image}");
        }
        for volume in service
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(deploy().join(source).exists(), "{name}: {source}");
            } else {
                assert!(
                    compose["volumes"].get(source).is_some(),
                    "{name}: volume {source} is not declared"
                );
            }
        }
        let command: Vec<&str> = service
            .get("command")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if let ["node", "--config", cfg] = command[..] {
            roles.push(cfg.to_owned());
        }
    }
    roles.sort();
    roles.dedup();
    assert_eq!(
        roles,
        [
            "/etc/trawl/scanner.toml",
            "/etc/trawl/sensor.toml",
            "/etc/trawl/store.toml"
        ]
    );
    for role in &roles {
        config_check(&installed(role));
    }

    // What the image copies is in the repository, and its default role too.
    let dockerfile = fs::read_to_string(deploy().join("docker/Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(repo().join(source).exists(), "{line}");
    }
    let cmd = dockerfile.lines().find(|l| l.starts_with("CMD ")).unwrap();
    let cfg = cmd
        .split('"')
        .find(|p| p.starts_with("/etc/trawl/"))
        .unwrap();
    config_check(&installed(cfg));
    let out = run(trawl().args(["rules", "check"]).arg(repo().join("rules")));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn each_systemd_role_has_a_config_trawl_accepts() {
    let unit = fs::read_to_string(deploy().join("systemd/trawl@.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    assert!(exec.ends_with("node --config /etc/trawl/%i.toml"), "{exec}");
    for role in ["sensor", "scanner", "store"] {
        config_check(&installed(&format!("/etc/trawl/{role}.toml")));
    }
    let single = fs::read_to_string(deploy().join("systemd/trawl.service")).unwrap();
    assert!(single.contains("ExecStart=/usr/local/bin/trawl node --config /etc/trawl/node.toml"));
    config_check(&repo().join("config/standalone.toml"));
}

#[test]
fn the_nats_configs_are_valid() {
    for (file, env) in [("cluster.conf", "NATS_NAME"), ("leaf.conf", "NATS_HUB")] {
        let out = run(std::process::Command::new("nats-server")
            .args(["-t", "-c"])
            .arg(deploy().join("nats").join(file))
            .env(env, "hub.example"));
        let said = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            out.status.success() && said.contains("is valid"),
            "{file}: {said}"
        );
    }
}

/// The leaf node of deploy/nats/leaf.conf, on free ports, in front of `hub`.
fn leaf(dir: &Path, hub_leaf_port: u16) -> (ChildServer, u16) {
    let port = free_port();
    let conf = fs::read_to_string(deploy().join("nats/leaf.conf"))
        .unwrap()
        .replace("127.0.0.1:4222", &format!("127.0.0.1:{port}"))
        .replace("$NATS_HUB:7422", &format!("127.0.0.1:{hub_leaf_port}"));
    let file = dir.join("leaf.conf");
    fs::write(&file, conf).unwrap();
    let server = ChildServer::start(
        "nats-server",
        ["-c".into(), file.into_os_string()],
        Duration::from_secs(10),
        move || listening(port),
    );
    (server, port)
}

#[test]
fn a_sensor_behind_the_leaf_node_reaches_the_scanners_of_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let leaf_port = free_port();
    let hub_conf = dir.path().join("hub.conf");
    fs::write(
        &hub_conf,
        format!("jetstream {{ domain: hub }}\nleafnodes {{ listen: 127.0.0.1:{leaf_port} }}\n"),
    )
    .unwrap();
    let hub = NatsServer::start_with(&["-c", &hub_conf.display().to_string()]);
    let (_leaf, port) = leaf(dir.path(), leaf_port);

    let on = |url: String| format!("type = \"jetstream\"\nservers = [\"{url}\"]");
    let scanner = inbox_node_config_on(
        &dir.path().join("hub-side"),
        &on(hub.url()),
        "[workers.hash]\ntype = \"hash\"\n[connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
    );
    // The sensor's transport as deploy/etc/trawl/sensor.toml has it.
    let sensor = inbox_node_config_on(
        &dir.path().join("sensor"),
        &format!(
            "{}\ndomain = \"hub\"",
            on(format!("nats://127.0.0.1:{port}"))
        ),
        "",
    );
    let hub_side = start_node(&scanner);
    let sensor_side = start_node(&sensor);
    let mut sent = Vec::new();
    for (i, len) in [100usize, 200_000, 3_000_000].into_iter().enumerate() {
        let data = noise(i as u64, len);
        sent.push(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)));
        fs::write(dir.path().join(format!("sensor/inbox/f{i}")), data).unwrap();
    }
    let db = dir.path().join("hub-side/results.db");
    wait_for(
        "each file's result at the hub",
        Duration::from_secs(90),
        || rows(&db).len() == sent.len(),
    );
    let mut hashed: Vec<String> = rows(&db)
        .into_iter()
        .map(|r| r.data["sha256"].as_str().unwrap().to_owned())
        .collect();
    hashed.sort();
    sent.sort();
    assert_eq!(
        hashed, sent,
        "the hub's scanner read the bytes the sensor sent"
    );
    for node in [sensor_side, hub_side] {
        let out = node.terminate();
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

/// The binary runs on any glibc machine: it needs no system library beyond
/// the C runtime (libarchive, OpenSSL and the rest are replaced by Rust code,
/// UnRAR's libstdc++ is linked in).
#[test]
fn the_binary_links_only_the_c_runtime() {
    let program = trawl().get_program().to_owned();
    let out = run(std::process::Command::new("ldd").arg(&program));
    assert!(out.status.success(), "{}", stderr(&out));
    let runtimes = [
        "linux-vdso.so",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "ld-linux",
    ];
    let text = stdout(&out);
    let others: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !runtimes.iter().any(|r| l.contains(r)))
        .collect();
    assert!(others.is_empty(), "{}: {others:#?}", program.display());
    assert!(text.contains("libc.so"), "{text}");
}
