use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub use trawl_testkit::{eicar, noise, wait_for};

/// The `trawl` program, as a user runs it.
pub fn trawl() -> Command {
    Command::new(binary())
}

/// The repository's root (for rules/ and config/).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `trawl` binary of this checkout, built once per test run (a test
/// crate cannot name another package's binary, so it asks cargo for it).
/// Built as `cargo test --workspace --all-targets` builds, with the same
/// profile and features, so every dependency is already compiled and only
/// the binary itself may be new.
fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let release = std::env::current_exe()
            .is_ok_and(|exe| exe.components().any(|c| c.as_os_str() == "release"));
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "--locked", "--workspace", "--all-targets"])
            .args(["--message-format", "json-render-diagnostics"])
            .current_dir(repo());
        // What cargo sets for this test process describes this package;
        // build scripts that watch those variables would otherwise rebuild
        // their crates for every run, here and again in the user's build.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let for_this_test = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| name.starts_with(p))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*name);
            if for_this_test {
                cargo.env_remove(&*name);
            }
        }
        if release {
            cargo.arg("--release");
        }
        let out = cargo.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "cannot build trawl:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|m| {
                let program = m["target"]["name"] == "trawl" && m["profile"]["test"] == false;
                let exe = m["executable"].as_str().filter(|_| program)?;
                Some(PathBuf::from(exe))
            })
            .expect("cargo names the trawl executable it built")
    })
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

#[derive(Debug)]
pub struct Row {
    pub filename: Option<String>,
    pub path: Option<String>,
    pub sha256: String,
    pub worker: String,
    pub outcome: String,
    pub message: Option<String>,
    pub data: serde_json::Value,
    pub ruleset: Option<String>,
}

/// The one value `sql` selects from the results database `db`.
pub fn one<T: rusqlite::types::FromSql>(db: &Path, sql: &str, params: impl rusqlite::Params) -> T {
    rusqlite::Connection::open(db)
        .expect("open results db")
        .query_row(sql, params, |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every stored result; none while the store has not made its database
/// and tables yet (tests poll this while the store starts).
pub fn rows(db: &Path) -> Vec<Row> {
    if !db.exists() {
        return Vec::new();
    }
    let conn = rusqlite::Connection::open(db).expect("open results db");
    let made: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'results'",
            [],
            |r| r.get(0),
        )
        .expect("read the results db's schema");
    if made == 0 {
        return Vec::new();
    }
    let mut stmt = conn
        .prepare(
            "SELECT filename, path, sha256, worker, outcome, message, data, ruleset \
             FROM results ORDER BY path, worker",
        )
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
            ruleset: r.get(7)?,
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
            .stdout(std::process::Stdio::null()),
    )
}

/// A `trawl node` process that is killed and reaped if the test ends early.
/// Its stderr goes to a file, not a pipe: a pipe nobody reads fills up and
/// blocks the node's logging, and the file is there to print when a test
/// fails.
pub struct Proc {
    child: Option<std::process::Child>,
    log: PathBuf,
    /// Removes a log of the process's own when it goes.
    _own_log: Option<tempfile::TempPath>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        let own = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        let mut proc = Self::logging_to(cmd, &own);
        proc._own_log = Some(own);
        proc
    }

    /// With stderr appended to `log` (kept across restarts of a node).
    pub fn logging_to(cmd: &mut Command, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = cmd.stderr(file).spawn().expect("trawl starts");
        Proc {
            child: Some(child),
            log: log.to_owned(),
            _own_log: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether it has not exited yet.
    pub fn running(&mut self) -> bool {
        let child = self.child.as_mut().expect("not reaped");
        child.try_wait().unwrap().is_none()
    }

    /// What it printed to stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// SIGTERM, then wait for a clean exit and return what it printed.
    pub fn terminate(mut self) -> Output {
        let child = self.child.as_ref().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let out = self.wait_exit();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        out
    }

    /// Wait for it to exit by itself.
    pub fn wait(mut self) -> Output {
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> Output {
        let child = self.child.take().expect("running");
        let mut out = child.wait_with_output().unwrap();
        out.stderr = std::fs::read(&self.log).unwrap();
        out
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failing test shows what each of its nodes logged.
        if std::thread::panicking() {
            eprintln!("--- stderr of a trawl process ---\n{}", self.log());
        }
    }
}

/// A runtime for the async datastore clients a test reads results with.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Each node's row of the node table `trawl status` prints for the config
/// `cfg`, by column title.
pub(crate) fn status_counters(cfg: &Path) -> BTreeMap<String, BTreeMap<String, u64>> {
    let out = run(trawl().args(["status", "--config"]).arg(cfg));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with("node ") || !l.contains("published"));
    let Some(header) = lines.next() else {
        return BTreeMap::new();
    };
    let titles: Vec<&str> = header.split_whitespace().skip(1).collect();
    lines
        .take_while(|l| !l.is_empty())
        .filter_map(|row| {
            let mut cells = row.split_whitespace();
            let node = cells.next()?.to_owned();
            let counts = titles
                .iter()
                .zip(cells)
                .filter_map(|(k, v)| Some(((*k).to_owned(), v.parse().ok()?)))
                .collect();
            Some((node, counts))
        })
        .collect()
}
