use super::*;
use trawl_core::{SourceInfo, SourceKind};

use crate::Delivery;

fn opts(max_deliver: u32) -> ConsumerOptions {
    ConsumerOptions::new(max_deliver, Duration::from_secs(30), 1)
}

fn event(data: &[u8]) -> PayloadEvent {
    PayloadEvent::new_root(
        trawl_core::sha256_hex(data),
        data.len() as u64,
        BlobRef::Store(String::new()),
        SourceInfo {
            kind: SourceKind::Cli,
            sensor: "t".into(),
            path: None,
        },
    )
}

fn small() -> MemoryTransport {
    MemoryTransport::new(MemoryParams {
        queue_depth: 4,
        inline_limit: 8,
        max_bytes: 1 << 20,
    })
}

async fn next_event(sub: &Arc<dyn Subscription>) -> (PayloadEvent, Delivery) {
    let d = sub.next().await.unwrap().unwrap();
    (wire::decode(&d.data).unwrap(), d)
}

#[tokio::test]
async fn every_group_sees_every_payload_and_members_share_one_group() {
    let t = small();
    let a1 = t.payloads("a", opts(3)).await.unwrap();
    let a2 = t.payloads("a", opts(3)).await.unwrap();
    let b = t.payloads("b", opts(3)).await.unwrap();
    t.publish_payload(event(b"one"), Bytes::from_static(b"one"))
        .await
        .unwrap();
    t.publish_payload(event(b"two"), Bytes::from_static(b"two"))
        .await
        .unwrap();
    assert_eq!(t.unacked(), 4);
    let (e1, d1) = next_event(&a1).await;
    let (e2, d2) = next_event(&a2).await;
    assert_ne!(e1.id, e2.id, "members of a group split the work");
    let (_, d3) = next_event(&b).await;
    let (_, d4) = next_event(&b).await;
    for d in [d1, d2, d3, d4] {
        d.ack().await.unwrap();
    }
    assert_eq!(t.unacked(), 0);
}

#[tokio::test]
async fn small_payloads_are_inline_large_ones_stored_once_and_freed_after_acks() {
    let t = small();
    let a = t.payloads("a", opts(3)).await.unwrap();
    let b = t.payloads("b", opts(3)).await.unwrap();
    let big = b"0123456789abcdef".to_vec();
    t.publish_payload(event(b"tiny"), Bytes::from_static(b"tiny"))
        .await
        .unwrap();
    // The same content published twice is stored once.
    t.publish_payload(event(&big), Bytes::from(big.clone()))
        .await
        .unwrap();
    t.publish_payload(event(&big), Bytes::from(big.clone()))
        .await
        .unwrap();
    assert_eq!(t.blob_count(), 1);

    let (tiny, dt) = next_event(&a).await;
    assert_eq!(tiny.blob, BlobRef::Inline(b"tiny".to_vec()));
    assert_eq!(&t.fetch_blob(&tiny.blob).await.unwrap()[..], b"tiny");
    dt.ack().await.unwrap();

    let mut deliveries = Vec::new();
    for sub in [&a, &a, &b, &b, &b] {
        let (e, d) = next_event(sub).await;
        if e.size as usize == big.len() {
            assert_eq!(e.blob, BlobRef::Store(trawl_core::sha256_hex(&big)));
            assert_eq!(
                t.fetch_blob(&e.blob).await.unwrap(),
                Bytes::from(big.clone())
            );
        }
        deliveries.push(d);
    }
    for d in deliveries {
        assert_eq!(t.blob_count(), 1, "bytes stay until the last group acks");
        d.ack().await.unwrap();
    }
    assert_eq!(t.blob_count(), 0);
    assert_eq!(t.unacked(), 0);
}

#[tokio::test]
async fn a_group_on_another_groups_results_gets_only_those_and_keeps_the_bytes() {
    let t = small();
    let yara = t.payloads("yara", opts(3)).await.unwrap();
    let store = t.results("store", opts(3)).await.unwrap();
    let pe = t.results_of("pe", "yara", opts(3)).await.unwrap();
    let big = b"0123456789abcdef".to_vec();
    t.publish_payload(event(&big), Bytes::from(big.clone()))
        .await
        .unwrap();
    let (e, d) = next_event(&yara).await;
    let result = |worker: &str, with_event: bool| {
        let mut r = trawl_core::ResultEvent::new(
            e.summary(),
            trawl_core::WorkerInfo::new(worker, "1"),
            trawl_core::Outcome::ok(),
            serde_json::Value::Null,
            chrono::Utc::now(),
            "n",
        );
        r.payload_event = with_event.then(|| Box::new(e.clone()));
        r
    };
    t.publish_result(&result("hash", false)).await.unwrap();
    t.publish_result(&result("yara", true)).await.unwrap();
    d.ack().await.unwrap();
    assert_eq!(t.blob_count(), 1, "held for the group that scans the match");

    for _ in 0..2 {
        store.next().await.unwrap().unwrap().ack().await.unwrap();
    }
    let got = pe.next().await.unwrap().unwrap();
    let r: trawl_core::ResultEvent = wire::decode(&got.data).unwrap();
    assert_eq!(r.worker.name, "yara", "only the named group's results");
    let carried = r.payload_event.unwrap();
    assert_eq!(t.fetch_blob(&carried.blob).await.unwrap(), Bytes::from(big));
    got.ack().await.unwrap();
    assert_eq!(t.blob_count(), 0);
    assert_eq!(t.unacked(), 0, "nothing else was queued for pe");
}

#[tokio::test]
async fn dropped_and_nakked_deliveries_come_back_with_a_higher_attempt() {
    let t = small();
    let a = t.payloads("a", opts(5)).await.unwrap();
    t.publish_payload(event(b"x"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let (e1, d1) = next_event(&a).await;
    assert_eq!(d1.attempt, 1);
    drop(d1);
    let (e2, d2) = next_event(&a).await;
    assert_eq!((e2.id.as_str(), d2.attempt), (e1.id.as_str(), 2));
    d2.nak(Duration::from_millis(10)).await.unwrap();
    let (_, d3) = next_event(&a).await;
    assert_eq!(d3.attempt, 3);
    d3.ack().await.unwrap();
    assert_eq!(t.unacked(), 0);
}

#[tokio::test]
async fn a_message_not_yet_set_aside_is_offered_again_past_max_deliver() {
    let t = small();
    let a = t.payloads("a", opts(1)).await.unwrap();
    t.publish_payload(event(b"x"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let (_, d1) = next_event(&a).await;
    drop(d1);
    let (_, d2) = next_event(&a).await;
    assert_eq!(d2.attempt, 2, "the caller sees the over-limit delivery");
    // The caller could not set it aside (its record was refused): the
    // message is not dropped but offered again.
    drop(d2);
    let (_, d3) = next_event(&a).await;
    assert_eq!(d3.attempt, 3);
    assert_eq!(t.unacked(), 1, "it still holds the node");
    d3.dead_letter("gave up").await.unwrap();
    assert!(a
        .next_timeout(Duration::from_millis(50))
        .await
        .unwrap()
        .is_none());
    assert_eq!(t.unacked(), 0, "set aside, it no longer holds the node");
}

#[tokio::test]
async fn full_queue_makes_publishers_wait_instead_of_dropping() {
    let t = small();
    let a = t.payloads("a", opts(3)).await.unwrap();
    for i in 0..4u8 {
        t.publish_payload(event(&[i]), Bytes::from(vec![i]))
            .await
            .unwrap();
    }
    let blocked = tokio::time::timeout(
        Duration::from_millis(50),
        t.publish_payload(event(b"5"), Bytes::from_static(b"5")),
    )
    .await;
    assert!(blocked.is_err(), "publish waits while the queue is full");
    let (_, d) = next_event(&a).await;
    d.ack().await.unwrap();
    t.publish_payload(event(b"5"), Bytes::from_static(b"5"))
        .await
        .unwrap();
}

#[tokio::test]
async fn wait_idle_returns_once_all_acked_and_close_ends_next() {
    let t = small();
    let a = t.payloads("a", opts(3)).await.unwrap();
    t.publish_payload(event(b"x"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let waiter = {
        let t = t.clone();
        tokio::spawn(async move { t.wait_idle().await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished());
    let (_, d) = next_event(&a).await;
    d.ack().await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .unwrap()
        .unwrap();

    let pending = {
        let a = a.clone();
        tokio::spawn(async move { a.next().await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    t.close();
    let r = tokio::time::timeout(Duration::from_secs(1), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(r.is_none());
}

#[tokio::test]
async fn payload_bytes_in_memory_are_bounded() {
    let t = MemoryTransport::new(MemoryParams {
        queue_depth: 100,
        inline_limit: 8,
        max_bytes: 4096,
    });
    let a = t.payloads("a", opts(3)).await.unwrap();
    let b = t.payloads("b", opts(3)).await.unwrap();
    let big = |i: u8| vec![i; 3000];
    t.publish_payload(event(&big(1)), Bytes::from(big(1)))
        .await
        .unwrap();
    let blocked = tokio::time::timeout(
        Duration::from_millis(50),
        t.publish_payload(event(&big(2)), Bytes::from(big(2))),
    )
    .await;
    assert!(
        blocked.is_err(),
        "a second 3 KB payload waits for the 4 KB budget"
    );
    let (_, da) = next_event(&a).await;
    da.ack().await.unwrap();
    let still = tokio::time::timeout(
        Duration::from_millis(50),
        t.publish_payload(event(&big(2)), Bytes::from(big(2))),
    )
    .await;
    assert!(still.is_err(), "held until the last group is done");
    let (_, db) = next_event(&b).await;
    db.ack().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(1),
        t.publish_payload(event(&big(2)), Bytes::from(big(2))),
    )
    .await
    .expect("budget released")
    .unwrap();
    // A payload larger than the whole budget still goes through, alone.
    let (_, d) = next_event(&a).await;
    d.ack().await.unwrap();
    let (_, d) = next_event(&b).await;
    d.ack().await.unwrap();
    let huge = vec![7u8; 10_000];
    tokio::time::timeout(
        Duration::from_secs(1),
        t.publish_payload(event(&huge), Bytes::from(huge.clone())),
    )
    .await
    .expect("oversized payload is not stuck")
    .unwrap();
}

#[tokio::test]
async fn unpacked_files_never_wait_for_the_budget_or_a_full_queue() {
    let t = MemoryTransport::new(MemoryParams {
        queue_depth: 1,
        inline_limit: 8,
        max_bytes: 4096,
    });
    let a = t.payloads("a", opts(3)).await.unwrap();
    // 3 of the 4 KiB budget; the payload queued behind it takes the fourth.
    let archive = vec![1u8; 3000];
    t.publish_payload(event(&archive), Bytes::from(archive.clone()))
        .await
        .unwrap();
    // The worker holds the archive while it publishes what it unpacked:
    // the budget is spent and the queue (one deep) is full.
    let (parent, held) = next_event(&a).await;
    t.publish_payload(event(&[2u8; 10]), Bytes::from(vec![2u8; 10]))
        .await
        .unwrap();
    for i in 0..3 {
        let data = vec![3 + i as u8; 3000];
        let child = parent.child(
            i,
            &trawl_core::ChildPayload {
                name: format!("m{i}"),
                data: data.clone(),
                budget: None,
            },
            "extract",
        );
        tokio::time::timeout(
            Duration::from_secs(1),
            t.publish_payload(child, Bytes::from(data)),
        )
        .await
        .expect("an unpacked file is published at once")
        .unwrap();
    }
    held.ack().await.unwrap();
    // Unpacked files come before the queued payload.
    let mut kinds = Vec::new();
    for _ in 0..4 {
        let (e, d) = next_event(&a).await;
        kinds.push(e.source.kind);
        d.ack().await.unwrap();
    }
    assert_eq!(
        kinds,
        [
            SourceKind::Extracted,
            SourceKind::Extracted,
            SourceKind::Extracted,
            SourceKind::Cli
        ]
    );
    assert_eq!(t.unacked(), 0);
    assert_eq!(t.blob_count(), 0);
}
