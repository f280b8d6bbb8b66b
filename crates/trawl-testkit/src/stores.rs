//! The datastores the connectors write to, as servers speaking their
//! protocols (an OpenSearch-API server and a MongoDB-wire server, which
//! tests/run.sh installs), and the Elasticsearch client's counting query.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use elasticsearch::http::transport::Transport;
use elasticsearch::{CountParts, Elasticsearch};
use serde_json::{json, Value};

use crate::{free_port, listening, ChildServer};

/// A datastore server on a free loopback port.
pub struct StoreServer {
    server: ChildServer,
    pub port: u16,
    /// MongoDB's storage folder, kept across restarts.
    _dir: tempfile::TempDir,
}

/// The OpenSearch-API server binary that the `osmem-server` package installs.
fn osmem_binary() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, osmem_server; print(os.path.join(os.path.dirname(osmem_server.__file__), 'bin', 'osmem-server'))",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "osmem-server is not installed (tests/run.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl StoreServer {
    pub fn elasticsearch() -> Self {
        let port = free_port();
        let args = vec![
            "-addr".to_owned(),
            format!("127.0.0.1:{port}"),
            "-no-stdin-watch".into(),
        ];
        Self::start(
            osmem_binary().into_os_string(),
            args,
            port,
            tempfile::tempdir().unwrap(),
        )
    }

    pub fn mongodb() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let args = vec![
            "--host".to_owned(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--storage-path".into(),
            dir.path().join("db").display().to_string(),
            "--log-level".into(),
            "WARNING".into(),
        ];
        Self::start("secantusd-py".into(), args, port, dir)
    }

    fn start(
        program: std::ffi::OsString,
        args: Vec<String>,
        port: u16,
        dir: tempfile::TempDir,
    ) -> Self {
        let server = ChildServer::start(program, args, Duration::from_secs(30), move || {
            listening(port)
        });
        StoreServer {
            server,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn mongodb_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// Freeze the server: connections hang, as with a datastore that stopped answering.
    pub fn pause(&self) {
        self.server.signal("-STOP");
    }

    pub fn resume(&self) {
        self.server.signal("-CONT");
    }

    pub fn stop(&mut self) {
        self.server.kill();
    }

    /// Start again on the same port (and, for MongoDB, the same storage).
    pub fn restart(&mut self) {
        self.server.restart();
    }
}

pub fn es_client(url: &str) -> Elasticsearch {
    Elasticsearch::new(Transport::single_node(url).unwrap())
}

/// Documents in `index` matching `query`, once what was written is searchable.
pub async fn es_count(es: &Elasticsearch, index: &str, query: Value) -> u64 {
    es.indices()
        .refresh(elasticsearch::indices::IndicesRefreshParts::Index(&[index]))
        .send()
        .await
        .unwrap();
    let resp = es
        .count(CountParts::Index(&[index]))
        .body(json!({"query": query}))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    v["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("count answer: {v}"))
}
