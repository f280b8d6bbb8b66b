//! `[node] archive`: the node keeps every payload it publishes (bytes and
//! event) in its archive before the transport has it, so that a source's
//! checkpoint never moves past a payload the archive lacks, and `trawl
//! replay` can scan it again later. Replayed payloads are not kept twice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use trawl_core::{BlobRef, PayloadEvent, ResultEvent};
use trawl_sources::Archive;
use trawl_transport::{
    ConsumerOptions, GroupState, NodeState, ResultCache, Subscription, Transport, TransportError,
};

pub(crate) struct Archiving {
    pub(crate) inner: Arc<dyn Transport>,
    pub(crate) archive: Arc<Archive>,
}

#[async_trait]
impl Transport for Archiving {
    async fn publish_payload(
        &self,
        event: PayloadEvent,
        data: Bytes,
    ) -> Result<(), TransportError> {
        if event.replay_id.is_none() {
            let (archive, kept, bytes) = (self.archive.clone(), event.clone(), data.clone());
            tokio::task::spawn_blocking(move || archive.put(&kept, &bytes))
                .await
                .map_err(|e| TransportError::Unavailable(format!("archive: {e}")))?
                // The source keeps the file and tries again.
                .map_err(|e| TransportError::Unavailable(e.to_string()))?;
        }
        self.inner.publish_payload(event, data).await
    }

    async fn fetch_blob(&self, blob: &BlobRef) -> Result<Bytes, TransportError> {
        self.inner.fetch_blob(blob).await
    }

    async fn publish_result(&self, result: &ResultEvent) -> Result<(), TransportError> {
        self.inner.publish_result(result).await
    }

    async fn payloads(
        &self,
        group: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        self.inner.payloads(group, options).await
    }

    async fn replays(
        &self,
        group: &str,
        options: ConsumerOptions,
    ) -> Result<Option<Arc<dyn Subscription>>, TransportError> {
        self.inner.replays(group, options).await
    }

    async fn results_of(
        &self,
        group: &str,
        worker: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        self.inner.results_of(group, worker, options).await
    }

    async fn results(
        &self,
        name: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        self.inner.results(name, options).await
    }

    async fn drain(&self, timeout: Duration) -> usize {
        self.inner.drain(timeout).await
    }

    async fn handled(&self, root_id: &str) -> Result<(), TransportError> {
        self.inner.handled(root_id).await
    }

    async fn announce(&self, state: &GroupState) -> Result<(), TransportError> {
        self.inner.announce(state).await
    }

    async fn announce_node(&self, state: &NodeState) -> Result<(), TransportError> {
        self.inner.announce_node(state).await
    }

    fn result_cache(&self) -> Option<Arc<dyn ResultCache>> {
        self.inner.result_cache()
    }

    async fn status(&self) -> Result<Option<trawl_transport::TransportStatus>, TransportError> {
        self.inner.status().await
    }

    fn close(&self) {
        self.inner.close()
    }
}
