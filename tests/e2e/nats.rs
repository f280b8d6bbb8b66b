//! A real nats-server per test: its own port and store folder, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    extra: Vec<String>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start with extra server flags (e.g. `--user`/`--pass`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, port) = spawn(dir.path(), None, &extra);
        NatsServer {
            child: Some(child),
            dir,
            port,
            extra,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stop the server the hard way and start it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        let (child, _) = spawn(self.dir.path(), Some(self.port), &self.extra);
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// The child is returned to `NatsServer`, which kills and reaps it on drop.
#[allow(clippy::zombie_processes)]
fn spawn(dir: &Path, port: Option<u16>, extra: &[String]) -> (Child, u16) {
    let ports_dir = dir.join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir).unwrap();
    let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
    let mut child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
        .arg(dir.join("store"))
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server on PATH (tests/run.sh installs it)");
    let start = Instant::now();
    loop {
        if let Some(port) = read_port(&ports_dir) {
            return (child, port);
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nats-server did not start within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nats-server writes `{"nats": ["nats://127.0.0.1:PORT"], …}` once it listens.
fn read_port(dir: &Path) -> Option<u16> {
    let entry: PathBuf = std::fs::read_dir(dir).ok()?.next()?.ok()?.path();
    let text = std::fs::read_to_string(entry).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json["nats"][0].as_str()?;
    url.rsplit(':').next()?.parse().ok()
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
