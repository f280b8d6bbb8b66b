//! A real RabbitMQ node of its own: Debian's `rabbitmq-server` with its own
//! node name, ports, database and logs, the management plugin on, stopped
//! and started through `rabbitmqctl` for outage drills.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, listening};

/// How long a node may take to boot before it is given up on.
const BOOT: Duration = Duration::from_secs(120);
/// Boots tried, each on fresh ports: another process may take a port
/// between `free_port` and the broker binding it.
const BOOTS: usize = 2;

/// Debian puts the broker's programs in /usr/sbin, which a user's PATH may lack.
fn sbin(program: &str) -> PathBuf {
    let at = Path::new("/usr/sbin").join(program);
    if at.exists() {
        at
    } else {
        PathBuf::from(program)
    }
}

pub struct RabbitServer {
    dir: tempfile::TempDir,
    node: String,
    pub port: u16,
    pub management_port: u16,
    /// The TLS listener, when started with certificates.
    pub tls_port: Option<u16>,
    child: Option<Child>,
}

impl RabbitServer {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// With a TLS listener too: `certs` holds ca.pem, server.pem and
    /// server-key.pem (see [`crate::make_certs`]); clients must show a
    /// certificate the CA signed.
    pub fn start_with_tls(certs: &Path) -> Self {
        Self::start_with(Some(certs))
    }

    fn start_with(certs: Option<&Path>) -> Self {
        let mut failures = Vec::new();
        for _ in 0..BOOTS {
            match Self::boot(certs) {
                Ok(server) => return server,
                Err(why) => failures.push(why),
            }
        }
        panic!("rabbitmq did not start:\n{}", failures.join("\n---\n"));
    }

    fn boot(certs: Option<&Path>) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let management_port = free_port();
        let dist_port = free_port();
        let mut conf = format!(
            "listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\n\
             management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management_port}\n\
             collect_statistics_interval = 500\n"
        );
        let tls_port = certs.map(|certs| {
            let tls_port = free_port();
            for name in ["ca.pem", "server.pem", "server-key.pem"] {
                fs::copy(certs.join(name), dir.path().join(name)).unwrap();
            }
            let at = |name: &str| dir.path().join(name).display().to_string();
            conf.push_str(&format!(
                "listeners.ssl.1 = 127.0.0.1:{tls_port}\nssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\nssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n",
                at("ca.pem"),
                at("server.pem"),
                at("server-key.pem")
            ));
            tls_port
        });
        fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
        fs::write(
            dir.path().join("enabled_plugins"),
            "[rabbitmq_management].\n",
        )
        .unwrap();
        for sub in ["mnesia", "log"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        // The Debian script runs the broker as the `rabbitmq` user.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let owned = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir.path())
            .status();
        assert!(
            owned.is_ok_and(|s| s.success()),
            "chown to the rabbitmq user (the RabbitMQ tests run as root; tests/run.sh installs rabbitmq-server)"
        );
        let mut server = RabbitServer {
            node: format!("trawl-e2e-{port}@localhost"),
            dir,
            port,
            management_port,
            tls_port,
            child: None,
        };
        server.spawn(dist_port)?;
        Ok(server)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    // The child is kept, and stopped and reaped on drop.
    #[allow(clippy::zombie_processes)]
    fn spawn(&mut self, dist_port: u16) -> Result<(), String> {
        let log = fs::File::create(self.path("server.out")).unwrap();
        let child = Command::new(sbin("rabbitmq-server"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", self.path("rabbitmq"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.path("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", self.path("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.path("log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server (tests/run.sh installs it)");
        self.child = Some(child);
        self.await_app()
    }

    fn ctl(&self, args: &[&str]) -> bool {
        Command::new(sbin("rabbitmqctl"))
            .args(["-q", "-n", &self.node])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Wait until the broker takes connections and its management API
    /// answers; an error if its process ends or [`BOOT`] passes first. The
    /// error carries the end of the node's output, since its folder goes
    /// with it.
    fn await_app(&self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let up = listening(self.port)
                && listening(self.management_port)
                && self.ctl(&["await_startup", "--timeout", "10"]);
            if up {
                return Ok(());
            }
            let why = if !self.running() {
                "exited".to_string()
            } else if start.elapsed() > BOOT {
                format!("was not up within {BOOT:?}")
            } else {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            };
            return Err(format!(
                "{} {why}; its output ends:\n{}",
                self.node,
                self.output_tail()
            ));
        }
    }

    /// The last lines the node printed.
    fn output_tail(&self) -> String {
        const LINES: usize = 30;
        let out = fs::read_to_string(self.path("server.out")).unwrap_or_default();
        let lines: Vec<&str> = out.lines().collect();
        lines[lines.len().saturating_sub(LINES)..].join("\n")
    }

    /// Whether the broker's process is still there. The child is reaped
    /// only on drop, so one that ended is a zombie (state `Z`) until then.
    fn running(&self) -> bool {
        self.child.as_ref().is_some_and(|child| {
            fs::read_to_string(format!("/proc/{}/stat", child.id())).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
        })
    }

    /// `amqp://` URL with the default user (reachable from loopback only).
    pub fn url(&self) -> String {
        self.url_as("guest", "guest")
    }

    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", self.port)
    }

    /// `amqps://` URL of the TLS listener.
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("started with certificates");
        format!("amqps://guest:guest@localhost:{port}/%2f")
    }

    pub fn management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.management_port)
    }

    /// A user with every permission on the default vhost, who may also read
    /// the management API.
    pub fn add_user(&self, user: &str, password: &str) {
        assert!(self.ctl(&["add_user", user, password]), "add_user {user}");
        assert!(
            self.ctl(&["set_permissions", "-p", "/", user, ".*", ".*", ".*"]),
            "set_permissions {user}"
        );
        assert!(
            self.ctl(&["set_user_tags", user, "monitoring"]),
            "set_user_tags {user}"
        );
    }

    /// Stop the broker's application (every connection drops), keeping the
    /// node and its queues; [`Self::start_app`] brings it back.
    pub fn stop_app(&self) {
        assert!(self.ctl(&["stop_app"]), "rabbitmqctl stop_app");
    }

    pub fn start_app(&self) {
        assert!(self.ctl(&["start_app"]), "rabbitmqctl start_app");
        if let Err(why) = self.await_app() {
            panic!("rabbitmq did not come back: {why}");
        }
    }

    /// The outage drill: stop and start the broker, its queues kept.
    pub fn restart(&self) {
        self.stop_app();
        self.start_app();
    }
}

impl Drop for RabbitServer {
    fn drop(&mut self) {
        self.ctl(&["shutdown"]);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
