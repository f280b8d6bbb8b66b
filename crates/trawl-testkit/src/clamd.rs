//! A real clamd with a signature database made at test time: EICAR, and the
//! md5 of a ClamAV test file Debian ships. It listens on a unix socket and TCP.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{free_port, ChildServer};

/// A ClamAV sample Debian ships, detected by a hand-made md5 signature.
pub const TEST_FILE: &str = "/usr/share/clamav-testfiles/clam.exe";

/// The EICAR test file, assembled here so the repository holds no copy of it.
pub fn eicar() -> Vec<u8> {
    let mut s = String::from("X5O!P%@AP[4\\PZX54(P^)7CC)7}$");
    s.push_str("EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*");
    s.into_bytes()
}

pub struct Clamd {
    server: ChildServer,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Clamd {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        fs::create_dir_all(&db).unwrap();
        let eicar_hex = hex::encode(eicar());
        fs::write(
            db.join("trawl.ndb"),
            format!("Eicar-Test-Signature:0:*:{eicar_hex}\n"),
        )
        .unwrap();
        let sample = fs::read(TEST_FILE).expect("clamav-testfiles (tests/run.sh installs it)");
        let md5 = {
            use md5::Digest;
            hex::encode(md5::Md5::digest(&sample))
        };
        fs::write(
            db.join("trawl.hdb"),
            format!("{md5}:{}:ClamAV-Test-File\n", sample.len()),
        )
        .unwrap();
        let port = free_port();
        let socket = dir.path().join("clamd.sock");
        let conf = dir.path().join("clamd.conf");
        fs::write(
            &conf,
            format!(
                "DatabaseDirectory {}\nLocalSocket {}\nTCPSocket {port}\nTCPAddr 127.0.0.1\nForeground yes\nLogFile {}\nStreamMaxLength 1M\n",
                db.display(),
                socket.display(),
                dir.path().join("clamd.log").display(),
            ),
        )
        .unwrap();
        let args = ["-c".into(), conf.into_os_string()];
        let server = ChildServer::start("clamd", args, Duration::from_secs(60), move || {
            ping(&socket)
        });
        Clamd { server, dir, port }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("clamd.sock")
    }

    pub fn kill(&mut self) {
        self.server.kill();
        let _ = fs::remove_file(self.socket());
    }

    pub fn restart(&mut self) {
        self.kill();
        self.server.restart();
    }
}

fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let mut reply = [0u8; 5];
    s.write_all(b"zPING\0").is_ok() && s.read_exact(&mut reply).is_ok() && &reply == b"PONG\0"
}
