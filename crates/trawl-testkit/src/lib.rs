//! What trawl's integration and end-to-end tests share.
//!
//! Every service a test talks to is the real program, run by [`ChildServer`]
//! (the shape of nats.rs's test harness): on a free loopback port, waited for
//! until it answers, killed and reaped on drop.

mod clamd;
mod nats;
mod pki;
mod rabbit;
mod stores;

use std::ffi::OsString;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use clamd::{eicar, Clamd, TEST_FILE as CLAMAV_TEST_FILE};
pub use nats::{cluster, NatsServer};
pub use pki::{make_certs, nats_jwt};
pub use rabbit::RabbitServer;
pub use stores::{es_client, es_count, StoreServer};

/// A service process run for a test.
pub struct ChildServer {
    program: OsString,
    args: Vec<OsString>,
    ready: Box<dyn Fn() -> bool + Send + Sync>,
    /// How long a start may take before the test fails.
    patience: Duration,
    child: Option<Child>,
}

impl ChildServer {
    /// Start `program args…` and wait until `ready` says it answers.
    pub fn start<I, S>(
        program: impl Into<OsString>,
        args: I,
        patience: Duration,
        ready: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut server = ChildServer {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            ready: Box::new(ready),
            patience,
            child: None,
        };
        server.spawn();
        server
    }

    fn name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    // The child is kept, and killed and reaped on drop.
    #[allow(clippy::zombie_processes)]
    fn spawn(&mut self) {
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} (tests/run.sh installs it): {e}", self.name()));
        self.child = Some(child);
        let start = Instant::now();
        while !(self.ready)() {
            if start.elapsed() > self.patience {
                self.kill();
                panic!("{} did not answer within {:?}", self.name(), self.patience);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Send a signal (`-STOP`, `-CONT`…) to the running process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the server is running").to_string();
        let sent = Command::new("kill").args([signal, &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }

    /// Stop it the hard way.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process must be woken to die cleanly.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill it and start it again with the same arguments (port, storage).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Whether something accepts connections on loopback `port`.
pub fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Poll `cond` until it holds; fail the test naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
