use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn trawl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trawl"))
}

/// The repository's root (for rules/ and config/).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("trawl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "trawl panicked:\n{stderr}");
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` without the capabilities that let root read and write anything,
/// so permission checks apply in tests run as root too.
pub fn without_root_powers(cmd: Command) -> Command {
    let uid = Command::new("id").arg("-u").output().expect("id");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return cmd;
    }
    let mut wrapped = Command::new("setpriv");
    wrapped
        .arg("--bounding-set")
        .arg("-dac_override,-dac_read_search")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// The EICAR test file, assembled here so the repository holds no copy of it.
pub fn eicar() -> Vec<u8> {
    let mut s = String::from("X5O!P%@AP[4\\PZX54(P^)7CC)7}$");
    s.push_str("EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*");
    s.into_bytes()
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

#[derive(Debug)]
pub struct Row {
    pub filename: Option<String>,
    pub path: Option<String>,
    pub sha256: String,
    pub worker: String,
    pub outcome: String,
    pub message: Option<String>,
    pub data: serde_json::Value,
}

pub fn rows(db: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(db).expect("open results db");
    let mut stmt = conn
        .prepare("SELECT filename, path, sha256, worker, outcome, message, data FROM results ORDER BY path, worker")
        .unwrap();
    stmt.query_map([], |r| {
        let data: String = r.get(6)?;
        Ok(Row {
            filename: r.get(0)?,
            path: r.get(1)?,
            sha256: r.get(2)?,
            worker: r.get(3)?,
            outcome: r.get(4)?,
            message: r.get(5)?,
            data: serde_json::from_str(&data).unwrap(),
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Output of a coreutils digest tool (`sha256sum`, `md5sum`) for one file.
pub fn coreutils_digest(tool: &str, file: &Path) -> String {
    let out = Command::new(tool).arg(file).output().expect(tool);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// The fuzzy hash the reference `ssdeep` tool computes for one file.
pub fn ssdeep_cli(file: &Path) -> String {
    let out = Command::new("ssdeep")
        .arg("-s")
        .arg(file)
        .output()
        .expect("ssdeep");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .nth(1)
        .expect("ssdeep prints a header, then one line");
    line.split(",\"").next().unwrap().to_owned()
}

/// `DIR/node.toml` for one embedded node that watches `DIR/inbox` and runs
/// `roles` (its `[workers.X]` and `[connectors.X]` tables).
pub fn inbox_node_config(dir: &Path, roles: &str) -> PathBuf {
    inbox_node_config_on(dir, "type = \"memory\"", roles)
}

/// The same node on another transport (`transport`: the `[transport]` table's lines).
pub fn inbox_node_config_on(dir: &Path, transport: &str, roles: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("inbox")).unwrap();
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 1\n[node]\nname = \"n\"\ndata_dir = \"state\"\n[transport]\n{transport}\n\
             [sources.inbox]\ntype = \"dir\"\npath = \"inbox\"\nsettle = \"200ms\"\npoll_interval = \"100ms\"\n{roles}"
        ),
    )
    .unwrap();
    cfg
}

/// `trawl node --config CFG`; its log is returned by [`Proc::terminate`].
pub fn start_node(cfg: &Path) -> Proc {
    Proc::spawn(
        trawl()
            .args(["node", "--config"])
            .arg(cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    )
}

/// A `trawl node` process that is killed and reaped if the test ends early.
pub struct Proc(Option<std::process::Child>);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        Proc(Some(cmd.spawn().expect("trawl starts")))
    }

    /// SIGTERM, then wait for a clean exit and return what it printed.
    pub fn terminate(mut self) -> Output {
        let child = self.0.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        out
    }

    /// Wait for it to exit by itself.
    pub fn wait(mut self) -> Output {
        let child = self.0.take().expect("running");
        child.wait_with_output().unwrap()
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
