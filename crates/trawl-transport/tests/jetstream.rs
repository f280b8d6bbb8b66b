//! The JetStream transport against a real nats-server: payload bytes in the
//! object store (written and read in the layout every NATS object store
//! client reads), shared between a node's worker groups, never stalling.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::object_store::ObjectMetadata;
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use trawl_core::{BlobRef, PayloadEvent, SourceInfo, SourceKind};
use trawl_transport::{
    BlobReads, ConsumerOptions, JetStreamParams, JetStreamTransport, Subscription, Transport,
};

use trawl_testkit::{noise, NatsServer};

async fn transport(url: &str) -> JetStreamTransport {
    // No node-local cache: every fetch reads the bucket.
    transport_caching(url, 0).await
}

async fn transport_caching(url: &str, blob_cache: usize) -> JetStreamTransport {
    let params: JetStreamParams = serde_json::from_value(serde_json::json!({
        "servers": [url],
        "blob_cache": blob_cache,
    }))
    .unwrap();
    JetStreamTransport::connect(&params, "t").await.unwrap()
}

fn event(data: &[u8]) -> PayloadEvent {
    PayloadEvent::new_root(
        trawl_core::sha256_hex(data),
        data.len() as u64,
        BlobRef::Inline(Vec::new()),
        SourceInfo {
            kind: SourceKind::Cli,
            sensor: "t".into(),
            path: None,
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_bytes_are_read_back_by_trawl_and_by_the_standard_object_store_client() {
    let nats = NatsServer::start();
    let url = nats.url();
    let writer = transport(&url).await;
    // Three chunks of the server's 1 MiB message limit, the last one short.
    let big = Bytes::from(noise(7, 2_500_000));
    let sha = trawl_core::sha256_hex(&big);
    for _ in 0..2 {
        writer
            .publish_payload(event(&big), big.clone())
            .await
            .unwrap();
    }

    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let bucket = js.get_object_store("TRAWL_BLOBS").await.unwrap();
    let info = bucket.info(&sha).await.unwrap();
    assert_eq!((info.size, info.chunks), (big.len(), 3));
    let mut read = Vec::new();
    // The standard reader checks the SHA-256 digest trawl recorded.
    bucket
        .get(&sha)
        .await
        .unwrap()
        .read_to_end(&mut read)
        .await
        .unwrap();
    assert_eq!(read, big);
    let mut stream = js.get_stream("OBJ_TRAWL_BLOBS").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        3 + 1,
        "published twice, stored once: three chunks and one info"
    );

    let reader = transport(&url).await;
    let got = reader.fetch_blob(&BlobRef::Store(sha)).await.unwrap();
    assert_eq!(got, big);

    // Objects put by other clients (or earlier trawl versions) read the same.
    let other = noise(8, 700_000);
    let other_sha = trawl_core::sha256_hex(&other);
    bucket
        .put(
            ObjectMetadata {
                name: other_sha.clone(),
                chunk_size: Some(64 * 1024),
                ..Default::default()
            },
            &mut other.as_slice(),
        )
        .await
        .unwrap();
    let got = reader.fetch_blob(&BlobRef::Store(other_sha)).await.unwrap();
    assert_eq!(got, other);

    let missing = reader
        .fetch_blob(&BlobRef::Store(trawl_core::sha256_hex(b"never stored")))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, trawl_transport::TransportError::BlobMissing(_)),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_follow_the_servers_message_size_limit() {
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("small-messages.conf");
    std::fs::write(&file, "max_payload: 262144\n").unwrap();
    let nats = NatsServer::start_with(&["-c", file.to_str().unwrap()]);
    let url = nats.url();
    let node = transport(&url).await;
    let data = Bytes::from(noise(9, 600_000));
    let sha = trawl_core::sha256_hex(&data);
    node.publish_payload(event(&data), data.clone())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let bucket = js.get_object_store("TRAWL_BLOBS").await.unwrap();
    assert_eq!(bucket.info(&sha).await.unwrap().chunks, 3);
    let got = node.fetch_blob(&BlobRef::Store(sha)).await.unwrap();
    assert_eq!(got, data);
}

/// Payloads [`stored_payloads`] puts on the server.
const STORED: usize = 60;

/// `STORED` payloads of 600 KB (36 MB, more than twice what the node
/// caches) put on the server at `url` by another node, and a node to read them.
async fn stored_payloads(url: &str) -> JetStreamTransport {
    let writer = transport(url).await;
    for i in 0..STORED {
        let data = Bytes::from(noise(100 + i as u64, 600_000));
        writer.publish_payload(event(&data), data).await.unwrap();
    }
    transport_caching(url, 16_000_000).await
}

async fn join(node: &JetStreamTransport, group: &str) -> Arc<dyn Subscription> {
    let options = ConsumerOptions::new(5, Duration::from_secs(30), 4);
    node.payloads(group, options).await.unwrap()
}

/// Take `limit` payloads of a group, fetch and check each one's bytes, and
/// spend `delay` on it before the ack, as a scanner would.
async fn drain(
    node: JetStreamTransport,
    group: Arc<dyn Subscription>,
    limit: usize,
    delay: Duration,
) {
    for _ in 0..limit {
        let delivery = group.next().await.unwrap().expect("a payload");
        let event: PayloadEvent = trawl_core::wire::decode(&delivery.data).unwrap();
        let bytes = node.fetch_blob(&event.blob).await.unwrap();
        assert_eq!(trawl_core::sha256_hex(&bytes), event.sha256);
        tokio::time::sleep(delay).await;
        delivery.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_groups_of_one_node_read_each_stored_payload_once() {
    let nats = NatsServer::start();
    let node = stored_payloads(&nats.url()).await;
    // A cheap, a middling and an expensive group, as file type, hashes
    // and YARA are: left alone, the cheap one would fetch everything
    // long before the others ask.
    let mut groups = Vec::new();
    for (name, ms) in [("cheap", 0), ("middling", 5), ("expensive", 25)] {
        groups.push((join(&node, name).await, Duration::from_millis(ms)));
    }
    // All three start together: a group is waited for from its first payload on.
    let running: Vec<_> = groups
        .into_iter()
        .map(|(group, delay)| tokio::spawn(drain(node.clone(), group, STORED, delay)))
        .collect();
    for g in running {
        g.await.unwrap();
    }
    assert_eq!(
        node.blob_reads(),
        BlobReads {
            from_store: STORED as u64,
            shared: 2 * STORED as u64
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_that_stops_does_not_hold_back_the_others() {
    let nats = NatsServer::start();
    let node = stored_payloads(&nats.url()).await;
    let stuck = join(&node, "stuck").await;
    let runner = join(&node, "runner").await;
    // Three payloads, then nothing more (a scanner hung on its fourth).
    drain(node.clone(), stuck, 3, Duration::ZERO).await;
    let finished = tokio::time::timeout(
        Duration::from_secs(60),
        drain(node.clone(), runner, STORED, Duration::ZERO),
    )
    .await;
    assert!(finished.is_ok(), "the runner waited for the stopped group");
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_bytes_that_are_not_what_their_name_says_are_refused() {
    let nats = NatsServer::start();
    let url = nats.url();
    let node = transport(&url).await;
    // The bucket exists once a transport connected.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let bucket = js.get_object_store("TRAWL_BLOBS").await.unwrap();

    // Bytes stored under another file's sha256 (an old or hostile writer).
    let claimed = trawl_core::sha256_hex(b"the file a sensor carved");
    bucket
        .put(claimed.as_str(), &mut &b"something else entirely"[..])
        .await
        .unwrap();
    let e = node.fetch_blob(&BlobRef::Store(claimed)).await.unwrap_err();
    assert!(
        matches!(e, trawl_transport::TransportError::BlobCorrupt { .. }),
        "{e}"
    );

    // An object info claiming a petabyte in a trillion chunks: refused
    // before anything is allocated for it.
    let forged = trawl_core::sha256_hex(b"forged info");
    let info = serde_json::json!({
        "name": forged, "bucket": "TRAWL_BLOBS", "nuid": "FORGED",
        "size": 1u64 << 50, "chunks": 1u64 << 40, "deleted": false,
    });
    use base64::Engine;
    let subject = format!(
        "$O.TRAWL_BLOBS.M.{}",
        base64::engine::general_purpose::URL_SAFE.encode(&forged)
    );
    js.publish(subject, info.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let e = node.fetch_blob(&BlobRef::Store(forged)).await.unwrap_err();
    assert!(
        matches!(e, trawl_transport::TransportError::BlobCorrupt { .. }),
        "{e}"
    );
}

/// Small payloads through three worker groups of one node, as many times
/// as it takes a pull that goes silent to show: every round must finish
/// well inside the time a stalled pull would cost (about 10 s).
#[tokio::test(flavor = "multi_thread")]
async fn twenty_rounds_of_small_payloads_never_stall_a_pull() {
    const ROUNDS: usize = 20;
    const PER_ROUND: usize = 300;
    let nats = NatsServer::start();
    let url = nats.url();
    let writer = transport(&url).await;
    let node = transport_caching(&url, 16_000_000).await;
    let mut groups = Vec::new();
    for name in ["hash", "filetype", "yara"] {
        groups.push(join(&node, name).await);
    }
    let mut slowest = Duration::ZERO;
    for round in 0..ROUNDS {
        let started = std::time::Instant::now();
        // The groups wait on empty pulls when the payloads arrive.
        let running: Vec<_> = groups
            .iter()
            .map(|g| tokio::spawn(drain(node.clone(), g.clone(), PER_ROUND, Duration::ZERO)))
            .collect();
        for i in 0..PER_ROUND {
            let data = Bytes::from(noise((round * PER_ROUND + i) as u64, 1024));
            writer.publish_payload(event(&data), data).await.unwrap();
        }
        for g in running {
            g.await.unwrap();
        }
        slowest = slowest.max(started.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "round {round} took {:?}: a pull went silent",
            started.elapsed()
        );
    }
    eprintln!("slowest of {ROUNDS} rounds: {slowest:?}");
}

/// Two nodes of one group over a backlog of small payloads: the fast one
/// asks for more at a time as it keeps up, the slow one keeps asking for
/// its members' count, and so never holds much of the backlog.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_node_leaves_the_backlog_to_a_fast_one() {
    const BACKLOG: usize = 600;
    let nats = NatsServer::start();
    let url = nats.url();
    let writer = transport(&url).await;
    for i in 0..BACKLOG {
        let data = Bytes::from(noise(i as u64, 1024));
        writer.publish_payload(event(&data), data).await.unwrap();
    }
    let taken: Arc<[std::sync::atomic::AtomicUsize; 2]> = Arc::default();
    let all_taken = Arc::new(tokio::sync::Notify::new());
    let mut nodes = Vec::new();
    for (i, delay) in [(0, Duration::from_millis(500)), (1, Duration::ZERO)] {
        let node = transport(&url).await;
        let group = join(&node, "shared").await;
        let (taken, all_taken) = (taken.clone(), all_taken.clone());
        nodes.push(tokio::spawn(async move {
            let _node = node;
            loop {
                let delivery = group.next().await.unwrap().expect("a payload");
                tokio::time::sleep(delay).await;
                delivery.ack().await.unwrap();
                taken[i].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if taken
                    .iter()
                    .map(|t| t.load(std::sync::atomic::Ordering::SeqCst))
                    .sum::<usize>()
                    == BACKLOG
                {
                    all_taken.notify_one();
                }
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), all_taken.notified())
        .await
        .expect("the backlog was not taken in a minute");
    for node in nodes {
        node.abort();
    }
    let slow = taken[0].load(std::sync::atomic::Ordering::SeqCst);
    // The slow node's queue holds two requests of four, and it scans two a
    // second: a few dozen while the fast node takes the rest. A node whose
    // requests grew regardless of its pace would hold a hundred or more.
    assert!(slow <= 40, "the slow node took {slow} of {BACKLOG}");
}

fn result_of(i: usize) -> trawl_core::ResultEvent {
    trawl_core::ResultEvent::new(
        event(format!("payload {i}").as_bytes()).summary(),
        trawl_core::WorkerInfo::new("hash", "1"),
        trawl_core::Outcome::ok(),
        serde_json::json!({ "n": i }),
        chrono::Utc::now(),
        "n",
    )
}

/// Take `n` result deliveries, with the id of each one's result.
async fn take_results(
    sub: &Arc<dyn Subscription>,
    n: usize,
) -> Vec<(String, trawl_transport::Delivery)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let next = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
        let d = next.expect("a result in time").unwrap().expect("a result");
        let r: trawl_core::ResultEvent = trawl_core::wire::decode(&d.data).unwrap();
        out.push((r.id, d));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn results_published_together_travel_together_and_are_acknowledged_as_one() {
    const N: usize = 200;
    let nats = NatsServer::start();
    let t = transport(&nats.url()).await;
    let results: Vec<_> = (0..N).map(result_of).collect();
    // In two waves, so that no one message can hold them all.
    for wave in results.chunks(N / 2) {
        let published = futures::future::join_all(wave.iter().map(|r| t.publish_result(r))).await;
        assert!(published.iter().all(|p| p.is_ok()), "{published:?}");
    }

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = js.get_stream("TRAWL_RESULTS").await.unwrap();
    let messages = stream.info().await.unwrap().state.messages;
    assert!(
        messages < N as u64 / 2,
        "{N} results published at once took {messages} messages"
    );

    let options = ConsumerOptions::new(5, Duration::from_secs(2), 500);
    let sub = t.results("store", options).await.unwrap();
    let mut first = take_results(&sub, N).await;
    let mut ids: Vec<_> = first.iter().map(|(id, _)| id.clone()).collect();
    let mut want: Vec<_> = results.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    want.sort();
    assert_eq!(ids, want, "every result once");
    assert!(first.iter().all(|(_, d)| d.attempt == 1));

    // One result is never acknowledged: its message, with every result in
    // it, comes again once the ack deadline passes; the others do not.
    let (kept_id, kept) = first.pop().unwrap();
    for (_, d) in first {
        d.ack().await.unwrap();
    }
    drop(kept);
    let again = take_results(&sub, 1).await;
    let (_, d) = &again[0];
    assert_eq!(d.attempt, 2);
    let mut again = again;
    let mut redelivered = vec![again.pop().unwrap()];
    // The rest of that message's results come with it.
    while let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        let r: trawl_core::ResultEvent = trawl_core::wire::decode(&d.data).unwrap();
        redelivered.push((r.id, d));
    }
    assert!(redelivered.iter().any(|(id, _)| *id == kept_id));
    assert!(redelivered.iter().all(|(_, d)| d.attempt == 2));
    // The last result delivered is of the second wave: its message holds
    // none of the first.
    let second_wave: Vec<_> = results[N / 2..].iter().map(|r| r.id.clone()).collect();
    assert!(
        redelivered.iter().all(|(id, _)| second_wave.contains(id)),
        "only the unacknowledged message came again"
    );
    for (_, d) in redelivered {
        d.ack().await.unwrap();
    }
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("connector-store").await.unwrap();
    let mut settled = false;
    for _ in 0..50 {
        let info = consumer.info().await.unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        settled,
        "every message acknowledged once all its results were"
    );
}
