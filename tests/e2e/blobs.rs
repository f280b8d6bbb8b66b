//! Payload bytes in the JetStream object store: trawl writes and reads the
//! bucket itself, in the layout every NATS object store client reads.

use async_nats::jetstream::object_store::ObjectMetadata;
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use trawl_core::{BlobRef, PayloadEvent, SourceInfo, SourceKind};
use trawl_transport::{JetStreamParams, JetStreamTransport, Transport};

use crate::harness::noise;
use crate::nats::NatsServer;

async fn transport(url: &str) -> JetStreamTransport {
    let params: JetStreamParams = serde_json::from_value(serde_json::json!({
        "servers": [url],
        // No node-local cache: every fetch reads the bucket.
        "blob_cache": 0,
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

#[test]
fn stored_bytes_are_read_back_by_trawl_and_by_the_standard_object_store_client() {
    let nats = NatsServer::start();
    let url = nats.url();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let writer = transport(&url).await;
            // Three chunks, the last one short.
            let big = Bytes::from(noise(7, 1_300_000));
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
        });
}
