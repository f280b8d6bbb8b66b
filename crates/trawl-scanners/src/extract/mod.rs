//! `extract`: unpacks zip (and jar/docx/xlsx, which are zips), gzip, tar,
//! 7z, rar and cab, in memory; every member becomes a child payload that every worker group
//! scans like a carved file. Names in archives are data, never paths: nothing
//! is written to disk. Limits keep hostile archives (bombs, nested bombs,
//! huge entry counts) from exhausting the node; hitting one marks the result
//! `truncated` with the reason.
//!
//! `max_children` and `max_total_bytes` hold for a whole archive tree, though
//! its nested archives may be unpacked by different processes: each unpacked
//! archive carries its share of what is left ([`TreeBudget`]), split evenly
//! between the archives found among its parent's members.

use std::io::{Cursor, Read};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use trawl_config::{BuildError, ConfigError, WorkerConfig};
use trawl_core::{ChildPayload, ScanError, ScanInput, ScanOutput, Scanner, TreeBudget, WorkerInfo};

use crate::factory::ScannerFactory;

/// Members listed in the result (all are counted and unpacked).
const LISTED: usize = 100;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    /// Payloads at this depth (0 = carved by a sensor) are not unpacked further.
    #[serde(default = "default_depth")]
    max_depth: u32,
    /// Members taken from one archive tree.
    #[serde(default = "default_children")]
    max_children: u64,
    /// Bytes unpacked from one archive tree.
    #[serde(default = "default_total")]
    max_total_bytes: u64,
    /// Unpacked size over packed size, per member and for the archive.
    #[serde(default = "default_ratio")]
    max_ratio: u64,
    /// Tried, in order, on encrypted zip members.
    #[serde(default = "default_passwords")]
    passwords: Vec<String>,
}

fn default_depth() -> u32 {
    5
}
fn default_children() -> u64 {
    1000
}
fn default_total() -> u64 {
    256 * 1024 * 1024
}
fn default_ratio() -> u64 {
    200
}
fn default_passwords() -> Vec<String> {
    vec!["infected".into()]
}

pub(crate) struct ExtractFactory;

impl ScannerFactory for ExtractFactory {
    fn check(&self, config: &WorkerConfig) -> Result<(), ConfigError> {
        let l: Limits = config.component.params()?;
        if l.max_ratio == 0 || l.max_children == 0 {
            return Err(config
                .component
                .error("max_ratio and max_children must be at least 1"));
        }
        Ok(())
    }

    fn build(&self, config: &WorkerConfig) -> Result<Arc<dyn Scanner>, BuildError> {
        self.check(config)?;
        Ok(Arc::new(Extractor {
            info: WorkerInfo::new(config.component.name.clone(), "1"),
            limits: config.component.params()?,
        }))
    }
}

struct Extractor {
    info: WorkerInfo,
    limits: Limits,
}

/// What one archive gave up, and why it stopped early (if it did).
struct Unpacked {
    format: &'static str,
    /// This archive's share of its tree's limits.
    allowed: TreeBudget,
    children: Vec<ChildPayload>,
    bytes: u64,
    entries: usize,
    truncated: Option<String>,
    encrypted: usize,
    password: Option<String>,
}

impl Unpacked {
    fn new(format: &'static str, allowed: TreeBudget) -> Self {
        Unpacked {
            format,
            allowed,
            children: Vec::new(),
            bytes: 0,
            entries: 0,
            truncated: None,
            encrypted: 0,
            password: None,
        }
    }

    fn stop(&mut self, why: String) {
        self.truncated.get_or_insert(why);
    }

    /// Past the scan's deadline: what was unpacked so far is kept and the
    /// result says where it stopped.
    fn out_of_time(&mut self, input: &ScanInput<'_>) -> bool {
        if input.overdue().is_err() {
            self.stop(format!(
                "timeout ({:?}) reached after {} files were unpacked",
                input.timeout,
                self.children.len()
            ));
            return true;
        }
        false
    }

    fn full(&self) -> bool {
        self.children.len() as u64 >= self.allowed.children
    }

    fn bytes_left(&self) -> u64 {
        self.allowed.bytes.saturating_sub(self.bytes)
    }

    /// Hand what this archive left unused to the archives among its members.
    fn share_rest(&mut self) {
        let nested: Vec<usize> = (0..self.children.len())
            .filter(|&i| format(&self.children[i].data).is_some())
            .collect();
        if nested.is_empty() {
            return;
        }
        let n = nested.len() as u64;
        let share = TreeBudget {
            children: (self.allowed.children - self.children.len() as u64) / n,
            bytes: self.bytes_left() / n,
        };
        for i in nested {
            self.children[i].budget = Some(share);
        }
    }
}

/// How taking one member of an archive went.
enum Took {
    Member,
    /// A limit stopped the archive (the result says which).
    Limit,
    /// The member's bytes could not be read (the result says why).
    Unreadable,
}

/// How one pass over an encrypted-capable archive (7z, rar) ended.
enum Pass {
    Done(Unpacked),
    /// Stopped at encrypted content the password did not open; what came
    /// before it is kept.
    Locked(Unpacked),
}

/// Read at most `limit` bytes, and whether there was more.
fn read_capped(r: &mut dyn Read, limit: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    r.take(limit + 1).read_to_end(&mut out)?;
    let over = out.len() as u64 > limit;
    out.truncate(limit as usize);
    Ok((out, over))
}

impl Extractor {
    /// Room left for the next member: the archive's byte budget, and the
    /// ratio cap on what `packed` bytes may unpack to.
    fn room(&self, u: &Unpacked, packed: u64) -> u64 {
        u.bytes_left()
            .min(packed.max(1).saturating_mul(self.limits.max_ratio))
    }

    fn take(&self, u: &mut Unpacked, name: String, data: Vec<u8>) {
        u.bytes += data.len() as u64;
        u.children.push(ChildPayload {
            name,
            data,
            budget: None,
        });
    }

    /// A pass over the archive without a password, then with each
    /// configured one while it stays locked.
    fn with_passwords(
        &self,
        pass: impl Fn(Option<&str>) -> Result<Pass, ScanError>,
    ) -> Result<Unpacked, ScanError> {
        let first = match pass(None)? {
            Pass::Done(u) => return Ok(u),
            Pass::Locked(u) => u,
        };
        for pw in &self.limits.passwords {
            if let Pass::Done(mut u) = pass(Some(pw))? {
                u.password = Some(pw.clone());
                return Ok(u);
            }
        }
        let mut u = first;
        u.encrypted = u.encrypted.max(1);
        u.truncated = None;
        u.stop("encrypted, and no configured password opens it".into());
        Ok(u)
    }

    /// Before the next member: whether the archive may go on (the deadline
    /// and `max_children` stop it, saying so).
    fn admit(&self, u: &mut Unpacked, input: &ScanInput<'_>) -> bool {
        if u.out_of_time(input) {
            return false;
        }
        if u.full() {
            let why = self.max_children(u);
            u.stop(why);
            return false;
        }
        true
    }

    /// What an archive whose members have no packed size of their own may
    /// unpack to: `max_ratio` × its size.
    fn archive_cap(&self, archive: &[u8]) -> u64 {
        (archive.len() as u64).saturating_mul(self.limits.max_ratio)
    }

    /// The room for the next member of such an archive, and why it ends.
    fn archive_room(&self, u: &Unpacked, cap: u64, name: &str) -> (u64, String) {
        let ratio_room = cap.saturating_sub(u.bytes);
        if ratio_room < u.bytes_left() {
            let why = format!(
                "{name}: the archive unpacks to more than max_ratio ({}) × its size",
                self.limits.max_ratio
            );
            (ratio_room, why)
        } else {
            (u.bytes_left(), self.max_total_bytes(u, name))
        }
    }

    /// Read member `name` of such an archive from `r`.
    fn take_read(&self, u: &mut Unpacked, name: String, r: &mut dyn Read, cap: u64) -> Took {
        let (room, why) = self.archive_room(u, cap, &name);
        match read_capped(r, room) {
            Ok((bytes, false)) => {
                self.take(u, name, bytes);
                Took::Member
            }
            Ok((_, true)) => {
                u.stop(why);
                Took::Limit
            }
            Err(e) => {
                u.stop(format!("{name}: {e}"));
                Took::Unreadable
            }
        }
    }

    fn max_children(&self, u: &Unpacked) -> String {
        if u.allowed.children < self.limits.max_children {
            format!(
                "max_children ({}) reached for the archive tree: this archive's share was {}",
                self.limits.max_children, u.allowed.children
            )
        } else {
            format!("max_children ({}) reached", self.limits.max_children)
        }
    }

    fn max_total_bytes(&self, u: &Unpacked, name: &str) -> String {
        if u.allowed.bytes < self.limits.max_total_bytes {
            format!(
                "{name}: max_total_bytes ({}) reached for the archive tree: this archive's share was {}",
                self.limits.max_total_bytes, u.allowed.bytes
            )
        } else {
            format!(
                "{name}: max_total_bytes ({}) reached",
                self.limits.max_total_bytes
            )
        }
    }

    fn zip(&self, input: &ScanInput<'_>, allowed: TreeBudget) -> Result<Unpacked, ScanError> {
        let mut u = Unpacked::new("zip", allowed);
        let mut zip = zip::ZipArchive::new(Cursor::new(input.data))
            .map_err(|e| ScanError::Failed(format!("unreadable zip: {e}")))?;
        u.entries = zip.len();
        for i in 0..zip.len() {
            if u.out_of_time(input) {
                break;
            }
            if u.full() {
                u.stop(format!(
                    "{} of {} members",
                    self.max_children(&u),
                    zip.len()
                ));
                break;
            }
            let (name, packed, is_dir, encrypted) = match zip.by_index_raw(i) {
                Ok(f) => (
                    String::from_utf8_lossy(f.name_raw()).into_owned(),
                    f.compressed_size(),
                    f.is_dir(),
                    f.encrypted(),
                ),
                Err(e) => {
                    u.stop(format!("member {i} unreadable: {e}"));
                    continue;
                }
            };
            if is_dir {
                continue;
            }
            let room = self.room(&u, packed);
            let read = if encrypted {
                u.encrypted += 1;
                let mut got = None;
                for pw in &self.limits.passwords {
                    if let Ok(mut f) = zip.by_index_decrypt(i, pw.as_bytes()) {
                        if let Ok(r) = read_capped(&mut f, room) {
                            u.password.get_or_insert_with(|| pw.clone());
                            got = Some(r);
                            break;
                        }
                    }
                }
                match got {
                    Some(r) => Ok(r),
                    None => {
                        u.stop(format!(
                            "{name}: encrypted, and no configured password opens it"
                        ));
                        continue;
                    }
                }
            } else {
                zip.by_index(i)
                    .map_err(|e| e.to_string())
                    .and_then(|mut f| read_capped(&mut f, room).map_err(|e| e.to_string()))
            };
            match read {
                Ok((bytes, false)) => self.take(&mut u, name, bytes),
                Ok((_, true)) => {
                    u.stop(self.over(&u, &name, packed));
                    break;
                }
                // A truncated or corrupt member: the others still count.
                Err(e) => u.stop(format!("{name}: {e}")),
            }
        }
        Ok(u)
    }

    fn over(&self, u: &Unpacked, name: &str, packed: u64) -> String {
        if packed.max(1).saturating_mul(self.limits.max_ratio) > u.bytes_left() {
            self.max_total_bytes(u, name)
        } else {
            format!(
                "{name}: unpacks to more than max_ratio ({}) × its packed size",
                self.limits.max_ratio
            )
        }
    }

    fn gzip(&self, data: &[u8], name: &str, allowed: TreeBudget) -> Result<Unpacked, ScanError> {
        let mut u = Unpacked::new("gzip", allowed);
        u.entries = 1;
        if u.full() {
            u.stop(self.max_children(&u));
            return Ok(u);
        }
        let mut gz = flate2::read::MultiGzDecoder::new(data);
        let inner = name
            .strip_suffix(".gz")
            .or_else(|| name.strip_suffix(".tgz"))
            .unwrap_or(name);
        let inner = if inner == name {
            format!("{name}.ungz")
        } else {
            inner.to_owned()
        };
        match read_capped(&mut gz, self.room(&u, data.len() as u64)) {
            Ok((bytes, false)) => self.take(&mut u, inner, bytes),
            Ok((_, true)) => u.stop(self.over(&u, &inner, data.len() as u64)),
            Err(e) => return Err(ScanError::Failed(format!("unreadable gzip: {e}"))),
        }
        Ok(u)
    }

    fn tar(&self, input: &ScanInput<'_>, allowed: TreeBudget) -> Result<Unpacked, ScanError> {
        let mut u = Unpacked::new("tar", allowed);
        let mut archive = tar::Archive::new(input.data);
        let entries = archive
            .entries()
            .map_err(|e| ScanError::Failed(format!("unreadable tar: {e}")))?;
        for entry in entries {
            if u.out_of_time(input) {
                break;
            }
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    u.stop(format!("tar member unreadable: {e}"));
                    break;
                }
            };
            u.entries += 1;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            if u.full() {
                u.stop(self.max_children(&u));
                break;
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            // tar does not compress: only the byte budget applies.
            match read_capped(&mut entry, u.bytes_left()) {
                Ok((bytes, false)) => self.take(&mut u, name, bytes),
                Ok((_, true)) => {
                    u.stop(self.max_total_bytes(&u, &name));
                    break;
                }
                Err(e) => u.stop(format!("{name}: {e}")),
            }
        }
        Ok(u)
    }

    fn unpack(&self, input: &ScanInput<'_>) -> Result<Option<Unpacked>, ScanError> {
        let name = input.display_name().unwrap_or("payload");
        let allowed = input.event.lineage.budget.unwrap_or(TreeBudget {
            children: self.limits.max_children,
            bytes: self.limits.max_total_bytes,
        });
        let mut u = match format(input.data) {
            Some("zip") => self.zip(input, allowed)?,
            Some("gzip") => self.gzip(input.data, name, allowed)?,
            Some("tar") => self.tar(input, allowed)?,
            Some("7z") => self.seven_zip(input, allowed)?,
            Some("rar") => self.rar(input, allowed)?,
            Some("cab") => self.cab(input, allowed)?,
            _ => return Ok(None),
        };
        u.share_rest();
        Ok(Some(u))
    }
}

/// The archive format, by magic bytes.
fn format(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
        Some("zip")
    } else if data.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if data.len() > 262 && &data[257..262] == b"ustar" {
        Some("tar")
    } else if data.starts_with(b"7z\xbc\xaf\x27\x1c") {
        Some("7z")
    } else if data.starts_with(b"Rar!\x1a\x07") {
        Some("rar")
    } else if data.starts_with(b"MSCF\0\0\0\0") {
        Some("cab")
    } else {
        None
    }
}

impl Scanner for Extractor {
    fn info(&self) -> WorkerInfo {
        self.info.clone()
    }

    fn scan(&self, input: &ScanInput<'_>) -> Result<ScanOutput, ScanError> {
        let depth = input.event.lineage.depth;
        if depth >= self.limits.max_depth {
            let archive = format(input.data);
            return Ok(ScanOutput::findings(json!({
                "archive": archive,
                "truncated": archive.is_some(),
                "truncated_reason": archive.map(|_| format!("max_depth ({}) reached", self.limits.max_depth)),
            })));
        }
        let Some(u) = self.unpack(input)? else {
            return Ok(ScanOutput::findings(
                json!({"archive": null, "extracted": 0}),
            ));
        };
        let listed: Vec<Value> = u
            .children
            .iter()
            .take(LISTED)
            .map(|c| json!({"name": c.name, "size": c.data.len()}))
            .collect();
        Ok(ScanOutput {
            data: json!({
                "archive": u.format,
                "entries": u.entries,
                "extracted": u.children.len(),
                "extracted_bytes": u.bytes,
                "members": listed,
                "encrypted": u.encrypted,
                "password": u.password,
                "truncated": u.truncated.is_some(),
                "truncated_reason": u.truncated,
            }),
            children: u.children,
            ..ScanOutput::default()
        })
    }
}

mod cab;
#[cfg(test)]
mod formats_tests;
#[cfg(feature = "rar")]
mod rar;
#[cfg(all(test, feature = "rar"))]
mod rar_tests;
mod sevenz;

#[cfg(not(feature = "rar"))]
impl Extractor {
    fn rar(&self, _: &ScanInput<'_>, _: TreeBudget) -> Result<Unpacked, ScanError> {
        Err(ScanError::Failed(
            "rar: this build of trawl leaves RAR out (built without the `rar` feature)".into(),
        ))
    }
}
#[cfg(test)]
mod tests;
