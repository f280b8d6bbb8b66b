//! What `/metrics` costs a node under heavy scraping: the embedded node
//! scans the corpus with nobody scraping it, then while `--scrapes N`
//! clients fetch `/metrics` together every `--scrape-every` (or back to
//! back), runs alternating.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::pipeline::{stop, Nodes};
use super::{median, settle_disk, BenchArgs, Measure};

pub(super) fn scrapes(args: &BenchArgs, corpus: &Path, files: usize) -> Result<()> {
    let mut quiet = Vec::new();
    let mut scraped = Vec::new();
    let mut served = Vec::new();
    for _ in 0..args.repeat.max(1) {
        quiet.push(run_node(args, corpus, files, 0)?.0);
        let (m, rate) = run_node(args, corpus, files, args.scrapes)?;
        scraped.push(m);
        served.push(rate);
    }
    let (quiet, scraped) = (median(quiet), median(scraped));
    served.sort_by(f64::total_cmp);
    println!(
        "\nembedded node ({}), wall s: {:.2} unscraped, {:.2} with {} /metrics clients scraping every {:?} ({:.0} scrapes/s served): {:.3}x",
        super::FULL_SET,
        quiet.seconds,
        scraped.seconds,
        args.scrapes,
        args.scrape_every,
        served[served.len() / 2],
        scraped.seconds / quiet.seconds
    );
    Ok(())
}

/// One embedded node over the corpus, with `scrapers` clients on its
/// `/metrics` from start to the last result; its run and scrapes per second.
fn run_node(
    args: &BenchArgs,
    corpus: &Path,
    files: usize,
    scrapers: usize,
) -> Result<(Measure, f64)> {
    let dir = std::path::absolute(args.work_dir.join("scrapes"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let kit = Nodes::new(&dir, "[transport]\ntype = \"memory\"\n")?;
    let roles = [kit.store(), Nodes::scanner(args)?, Nodes::sensor(corpus)?].concat();
    let cfg = kit.config("node", &format!("listen = \"127.0.0.1:{port}\"\n"), &roles)?;
    settle_disk();
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let node = kit.spawn(&cfg)?;
    let clients: Vec<_> = (0..scrapers)
        .map(|_| {
            let (done, count) = (done.clone(), count.clone());
            let every = args.scrape_every;
            std::thread::spawn(move || {
                let mut next = start;
                while !done.load(Ordering::Relaxed) {
                    match scrape(port) {
                        Ok(()) => {
                            count.fetch_add(1, Ordering::Relaxed);
                            next += every;
                            std::thread::sleep(next.saturating_duration_since(Instant::now()));
                        }
                        // Not listening yet.
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        })
        .collect();
    let waited = kit.wait_stored(files as i64 * 3, "the node", start);
    let elapsed = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let usage = stop(&node)?;
    let seconds = waited?;
    Ok((
        Measure {
            label: format!("trawl node, {scrapers} scrapers"),
            seconds,
            peak_rss_kb: usage.peak_rss_kb,
            cpu_seconds: usage.cpu_seconds,
        },
        count.load(Ordering::Relaxed) as f64 / elapsed,
    ))
}

/// One whole `GET /metrics`.
fn scrape(port: u16) -> Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    body.starts_with(b"HTTP/1.1 200")
        .then_some(())
        .context("not a 200 answer")
}
