//! A real nats-server with JetStream: its own port and store folder.

use crate::{free_port, listening, ChildServer};

pub struct NatsServer {
    server: ChildServer,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start with extra server flags (e.g. `--user`/`--pass`, `-c FILE`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut args = vec![
            "-a".to_owned(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            dir.path().join("store").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let server = ChildServer::start(
            "nats-server",
            args,
            std::time::Duration::from_secs(10),
            move || listening(port),
        );
        NatsServer {
            server,
            _dir: dir,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stop the server the hard way and start it again on the same port and store.
    pub fn restart(&mut self) {
        self.server.restart();
    }

    pub fn kill(&mut self) {
        self.server.kill();
    }
}

/// Three servers routed into one JetStream cluster on loopback.
pub fn cluster() -> Vec<NatsServer> {
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    (0..3)
        .map(|i| {
            let others: Vec<String> = (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                .collect();
            let name = format!("s{i}");
            let listen = format!("nats://127.0.0.1:{}", routes[i]);
            let others = others.join(",");
            NatsServer::start_with(&[
                "-n",
                &name,
                "--cluster_name",
                "trawl-e2e",
                "--cluster",
                &listen,
                "--routes",
                &others,
            ])
        })
        .collect()
}
