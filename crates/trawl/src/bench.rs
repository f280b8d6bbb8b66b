//! `trawl bench`: times `trawl scan` and the `yara` command line on the same
//! files in one run, and prints files/s, MB/s, peak RSS and the ratio.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use trawl_scanners::yara::EngineChoice;
use trawl_sources::walk;

mod digests;
mod pipeline;
mod scrapes;

use pipeline::{pipeline, Broker};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Folder to scan; by default a corpus is built with --corpus-script.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Extraction events in the generated corpus (its Zeek extract_files layout is scanned).
    #[arg(long, default_value_t = 2000)]
    pub files: usize,
    /// Corpus builder (shared/corpus/make_corpus.sh).
    #[arg(long, default_value = "../shared/corpus/make_corpus.sh")]
    pub corpus_script: PathBuf,
    /// Where corpora, databases and logs are kept between runs.
    #[arg(long, default_value = "target/bench")]
    pub work_dir: PathBuf,
    /// YARA rules given to both tools.
    #[arg(
        long,
        default_value = "../shared/rules/reversinglabs/index-libyara42.yar"
    )]
    pub rules: PathBuf,
    /// trawl's YARA engine: auto, yara-x or libyara. With auto or yara-x, the
    /// yara worker alone is also timed on libyara.
    #[arg(long, default_value = "auto")]
    pub engine: EngineChoice,
    /// The reference `yara` command line tool.
    #[arg(long, default_value = "yara")]
    pub yara: PathBuf,
    /// Threads for `yara -p N` (trawl sizes its worker groups from the CPU count).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// 1 KiB files in the small-file corpus (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub small_files: usize,
    /// Also time `--workers yara` and the CLI on the small-file corpus with
    /// two one-rule sets: a plain string (what each tool spends per file
    /// besides matching) and one `pe` condition (what importing a module
    /// costs per scan), to tell where a rule set's time goes.
    #[arg(long)]
    pub floor: bool,
    /// Runs of each command (and of the JetStream pipeline); the median is reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Also run the whole pipeline through a local nats-server, with the
    /// sensor, the scanner and the store in separate `trawl node` processes.
    #[arg(long)]
    pub jetstream: bool,
    /// Also run the whole pipeline through the RabbitMQ broker at this URL
    /// (`amqp://user:pass@host:5672/%2f`, management plugin on), under a
    /// queue prefix of its own.
    #[arg(long, value_name = "URL")]
    pub rabbitmq: Option<String>,
    /// Also time `trawl replay` of the corpus just scanned: embedded from
    /// an archive (against `trawl scan --archive`), and with --jetstream
    /// or --rabbitmq, through the same nodes (against the live run).
    #[arg(long)]
    pub replay: bool,
    /// Also time the `hash,elf` workers on the small-file corpus alone and
    /// with this many crafted ELFs among its files (65,279 sections that
    /// each claim the whole 2.6 MB file): what hostile files cost the rest.
    #[arg(long, default_value_t = 0)]
    pub hostile: usize,
    /// Also time an embedded `trawl node` on the corpus with nobody
    /// scraping its `/metrics`, and with this many clients scraping it at
    /// once (e.g. 100), each every --scrape-every.
    #[arg(long, default_value_t = 0)]
    pub scrapes: usize,
    /// How often each --scrapes client scrapes; 0s: back to back.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub scrape_every: std::time::Duration,
}

/// The workers a crafted executable is aimed at, and a cheap one beside them.
const HOSTILE_SET: &str = "hash,elf";

/// `--floor`'s rule sets: one plain string that no file holds, and one
/// condition on the `pe` module.
const FLOOR_RULES: [(&str, &str, &str); 2] = [
    (
        "plain",
        "a plain string",
        "rule floor_plain { strings: $a = \"trawl-floor-nowhere\" condition: $a }\n",
    ),
    (
        "pe",
        "one pe condition",
        "import \"pe\"\nrule floor_pe { condition: pe.is_pe and pe.number_of_sections == 0 }\n",
    ),
];

/// The worker groups the JetStream pipeline runs; its wall time is compared
/// with `trawl scan` running the same set.
const FULL_SET: &str = "hash,filetype,yara";

struct Measure {
    label: String,
    seconds: f64,
    peak_rss_kb: i64,
    /// User + system CPU time of the measured processes (median run).
    cpu_seconds: f64,
}

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("cannot create {}", args.work_dir.display()))?;
    if !args.rules.exists() {
        bail!("rules {} not found (pass --rules)", args.rules.display());
    }
    if args.floor && args.small_files == 0 {
        bail!("--floor times the small-file corpus: give --small-files above 0");
    }
    let corpus = match &args.corpus {
        Some(c) => c.clone(),
        None => build_corpus(&args)?,
    };
    // Compiled in a child: memory this process holds would count in the
    // peak RSS of every process forked after it.
    let check = Command::new(std::env::current_exe()?)
        .args(["rules", "check", "--engine", &args.engine.to_string()])
        .arg(&args.rules)
        .output()?;
    if !check.status.success() {
        bail!(
            "rules {} do not compile: {}",
            args.rules.display(),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    print!("rules: {}", String::from_utf8_lossy(&check.stdout));
    bench_corpus(&args, &corpus, &["yara", FULL_SET])?;
    if args.small_files > 0 {
        let small = small_corpus(&args.work_dir, args.small_files)?;
        bench_corpus(&args, &small, &["yara", FULL_SET, "hash,filetype"])?;
        if args.hostile > 0 {
            bench_corpus(&args, &small, &[HOSTILE_SET])?;
            let mixed = hostile_corpus(&args.work_dir, &small, args.hostile)?;
            bench_corpus(&args, &mixed, &[HOSTILE_SET])?;
        }
        if args.floor {
            for (name, what, text) in FLOOR_RULES {
                let rules = args.work_dir.join(format!("floor-{name}.yar"));
                fs::write(&rules, text)
                    .with_context(|| format!("cannot write {}", rules.display()))?;
                println!("\none-rule set, {what}: {}", rules.display());
                let args = BenchArgs {
                    rules,
                    ..args.clone()
                };
                bench_corpus(&args, &small, &["yara"])?;
            }
        }
    }
    // Last: its buffer would count in the peak RSS of what is forked after it.
    digests::digests(&args.work_dir)?;
    Ok(ExitCode::SUCCESS)
}

fn bench_corpus(args: &BenchArgs, corpus: &Path, worker_sets: &[&str]) -> Result<()> {
    let listed = walk(&[corpus.to_path_buf()], false);
    let (files, bytes) = (listed.files.len() as f64, listed.bytes() as f64);
    // Read everything once so no run pays for a cold page cache.
    for f in &listed.files {
        let mut sink = Vec::new();
        let _ = fs::File::open(&f.path).and_then(|mut h| h.read_to_end(&mut sink));
    }
    println!(
        "\ncorpus: {} ({} files, {:.1} MB)",
        corpus.display(),
        files,
        bytes / 1e6
    );
    let threads = args.threads.to_string();
    let yara = measure(args.repeat, format!("yara -r -p {threads}"), || {
        let mut c = Command::new(&args.yara);
        c.args(["-r", "-p", &threads])
            .arg(&args.rules)
            .arg(corpus)
            .stdout(Stdio::null());
        c
    })?;
    let mut rows = vec![yara];
    let exe = std::env::current_exe()?;
    let mut runs: Vec<(&str, EngineChoice)> =
        worker_sets.iter().map(|w| (*w, args.engine)).collect();
    if args.engine != EngineChoice::Libyara
        && worker_sets.contains(&"yara")
        && compiles_on_libyara(&args.rules)?
    {
        runs.insert(1, ("yara", EngineChoice::Libyara));
    }
    for (workers, engine) in &runs {
        let db = args.work_dir.join("bench.db");
        rows.push(measure(
            args.repeat,
            format!("trawl scan ({workers}; {engine})"),
            || {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = fs::remove_file(format!("{}{suffix}", db.display()));
                }
                let mut c = Command::new(&exe);
                c.arg("scan")
                    .arg(corpus)
                    .args(["--rules"])
                    .arg(&args.rules)
                    .args(["--workers", workers, "-q", "--db"])
                    .arg(&db)
                    .arg("--engine")
                    .arg(engine.to_string())
                    .stdout(Stdio::null());
                c
            },
        )?);
    }
    let embedded = rows[1 + runs.iter().position(|(w, _)| *w == FULL_SET).unwrap_or(0)].seconds;
    let mut replays = Vec::new();
    if args.replay && worker_sets.contains(&FULL_SET) {
        let (live, replay) = embedded_replay(args, corpus)?;
        replays.push((
            "embedded, from the archive".to_owned(),
            live.seconds,
            replay.seconds,
        ));
        rows.extend([live, replay]);
    }
    let mut brokers = Vec::new();
    if args.jetstream {
        brokers.push(Broker::JetStream);
    }
    if let Some(url) = &args.rabbitmq {
        brokers.push(Broker::RabbitMq { url: url.clone() });
    }
    let mut ratios = Vec::new();
    for broker in &brokers {
        let runs = (0..args.repeat.max(1))
            .map(|_| pipeline(args, corpus, listed.files.len(), broker))
            .collect::<Result<Vec<_>>>()?;
        let (live, replay): (Vec<_>, Vec<_>) = runs.into_iter().unzip();
        let m = median(live);
        ratios.push((broker.name(), m.seconds / embedded));
        if let Some(r) = replay.into_iter().collect::<Option<Vec<_>>>() {
            let r = median(r);
            replays.push((
                format!("{}, same nodes", broker.name()),
                m.seconds,
                r.seconds,
            ));
            rows.push(m);
            rows.push(r);
        } else {
            rows.push(m);
        }
    }
    if args.scrapes > 0 && worker_sets.contains(&FULL_SET) {
        scrapes::scrapes(args, corpus, listed.files.len())?;
    }
    let reference = rows[0].seconds;
    println!(
        "{:<46} {:>8} {:>10} {:>8} {:>8} {:>12} {:>8}",
        "command", "wall s", "files/s", "MB/s", "CPU s", "peak RSS MB", "vs yara"
    );
    for r in &rows {
        println!(
            "{:<46} {:>8.2} {:>10.1} {:>8.1} {:>8.2} {:>12.1} {:>8.2}",
            r.label,
            r.seconds,
            files / r.seconds,
            bytes / 1e6 / r.seconds,
            r.cpu_seconds,
            r.peak_rss_kb as f64 / 1024.0,
            r.seconds / reference
        );
    }
    for (name, ratio) in ratios {
        println!("{name} pipeline wall time vs trawl scan ({FULL_SET}): {ratio:.2}x");
    }
    for (how, live, replay) in replays {
        println!("replay throughput vs live ({how}): {:.2}x", live / replay);
    }
    Ok(())
}

/// Whether the rules compile on trawl's libyara (built without OpenSSL, so
/// without the `hash` module and PE signatures); if not, it says so.
fn compiles_on_libyara(rules: &Path) -> Result<bool> {
    let check = Command::new(std::env::current_exe()?)
        .args(["rules", "check", "--engine", "libyara"])
        .arg(rules)
        .output()?;
    if !check.status.success() {
        let why = String::from_utf8_lossy(&check.stderr);
        let first = why.lines().next().unwrap_or("");
        println!("libyara row left out: the rules do not compile there ({first} …)");
    }
    Ok(check.status.success())
}

/// `trawl scan --archive` of the corpus (live), then `trawl replay
/// --archive` of what it kept, with the same workers and rules.
fn embedded_replay(args: &BenchArgs, corpus: &Path) -> Result<(Measure, Measure)> {
    let exe = std::env::current_exe()?;
    let (db, archive) = (
        args.work_dir.join("replay.db"),
        args.work_dir.join("archive"),
    );
    let clean = || {
        let _ = fs::remove_dir_all(&archive);
        for suffix in ["", "-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", db.display()));
        }
    };
    let mut live = Vec::new();
    let mut replay = Vec::new();
    for _ in 0..args.repeat.max(1) {
        clean();
        live.push(measure(
            1,
            format!("trawl scan --archive ({FULL_SET})"),
            || {
                let mut c = Command::new(&exe);
                c.arg("scan")
                    .arg(corpus)
                    .arg("--rules")
                    .arg(&args.rules)
                    .args(["--workers", FULL_SET, "-q", "--db"])
                    .arg(&db)
                    .arg("--engine")
                    .arg(args.engine.to_string())
                    .arg("--archive")
                    .arg(&archive)
                    .stdout(Stdio::null());
                c
            },
        )?);
        replay.push(measure(
            1,
            format!("trawl replay --archive ({FULL_SET})"),
            || {
                let mut c = Command::new(&exe);
                c.args(["replay", "--archive"])
                    .arg(&archive)
                    .arg("--db")
                    .arg(&db)
                    .arg("--rules")
                    .arg(&args.rules)
                    .args(["--workers", FULL_SET])
                    .arg("--engine")
                    .arg(args.engine.to_string())
                    .stdout(Stdio::null());
                c
            },
        )?);
    }
    clean();
    Ok((median(live), median(replay)))
}

/// Run the command `repeat` times; see [`median`].
fn measure(repeat: usize, label: String, make: impl Fn() -> Command) -> Result<Measure> {
    let mut runs = Vec::new();
    for _ in 0..repeat.max(1) {
        settle_disk();
        let mut cmd = make();
        let start = Instant::now();
        let child = cmd
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {label}"))?;
        let usage = wait_with_rusage(child.id() as i32)?;
        if usage.status != 0 {
            bail!("{label} exited with status {}", usage.status);
        }
        runs.push(Measure {
            label: label.clone(),
            seconds: start.elapsed().as_secs_f64(),
            peak_rss_kb: usage.peak_rss_kb,
            cpu_seconds: usage.cpu_seconds,
        });
    }
    Ok(median(runs))
}

/// The run with the median wall time (and its CPU time), with the largest
/// peak RSS of all runs.
fn median(mut runs: Vec<Measure>) -> Measure {
    let peak = runs.iter().map(|r| r.peak_rss_kb).max().unwrap_or(0);
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let mut m = runs.swap_remove(runs.len() / 2);
    m.peak_rss_kb = peak;
    m
}

/// Wait for a child and read its peak resident set size (KiB) from the kernel.
struct Usage {
    status: i32,
    peak_rss_kb: i64,
    cpu_seconds: f64,
}

fn wait_with_rusage(pid: i32) -> Result<Usage> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Usage {
        status: code,
        peak_rss_kb: usage.ru_maxrss,
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
    })
}

fn build_corpus(args: &BenchArgs) -> Result<PathBuf> {
    let out = args.work_dir.join(format!("corpus-{}", args.files));
    let files = out.join("zeek/extract_files");
    if files.is_dir() {
        return Ok(files);
    }
    if !args.corpus_script.exists() {
        bail!(
            "corpus builder {} not found: pass --corpus DIR or --corpus-script PATH",
            args.corpus_script.display()
        );
    }
    eprintln!(
        "building a {}-file corpus in {} …",
        args.files,
        out.display()
    );
    let status = Command::new("bash")
        .arg(&args.corpus_script)
        .args(["-n", &args.files.to_string(), "-o"])
        .arg(&out)
        .status()
        .context("cannot run the corpus builder")?;
    if !status.success() || !files.is_dir() {
        bail!("corpus builder failed ({status})");
    }
    Ok(files)
}

/// `n` files of 1 KiB: mostly binary noise, every tenth text.
fn small_corpus(work_dir: &Path, n: usize) -> Result<PathBuf> {
    let dir = work_dir.join(format!("small-{n}"));
    if dir.is_dir() && fs::read_dir(&dir)?.count() == n {
        return Ok(dir);
    }
    fs::create_dir_all(&dir)?;
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..n {
        let data: Vec<u8> = if i % 10 == 0 {
            format!("GET /file/{i} HTTP/1.1\r\nHost: example.org\r\n\r\n")
                .repeat(24)
                .into_bytes()[..1024]
                .to_vec()
        } else {
            (0..1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        fs::write(dir.join(format!("f{i:05}")), data)?;
    }
    Ok(dir)
}

/// `ordinary`'s files (hard links) and `n` crafted ELFs in one folder.
fn hostile_corpus(work_dir: &Path, ordinary: &Path, n: usize) -> Result<PathBuf> {
    let dir = work_dir.join(format!("hostile-{n}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    for f in fs::read_dir(ordinary)? {
        let f = f?;
        fs::hard_link(f.path(), dir.join(f.file_name()))?;
    }
    let elf = trawl_scanners::samples::overlapping_sections_elf(0xfeff);
    for i in 0..n {
        fs::write(dir.join(format!("crafted-{i:03}.elf")), &elf)?;
    }
    Ok(dir)
}

/// Flush dirty pages left by the previous run (a JetStream store writes
/// the whole corpus), so that its writeback does not slow the next one.
fn settle_disk() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}
