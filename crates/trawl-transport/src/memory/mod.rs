//! In-process transport for embedded mode: bounded queues per consumer group
//! (backpressure, never drops) and a reference-counted blob store that frees
//! a payload's bytes once every group has acknowledged it. Nothing here
//! survives the process, so it also counts the messages of each root
//! payload's tree (the payload, what was unpacked from it, every result) and
//! tells a source when all of them are handled: only then may the source
//! forget the file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use trawl_core::{wire, BlobRef, PayloadEvent, ResultEvent, SourceKind};

use crate::{ConsumerOptions, Subscription, Transport, TransportError};

mod delivery;
mod factory;

pub(crate) use factory::MemoryFactory;

use delivery::MemorySubscription;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryParams {
    /// Messages waiting per consumer group before publishers wait.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Payloads up to this size travel inside the event.
    #[serde(default = "default_inline_limit")]
    pub inline_limit: usize,
    /// Payload bytes held in memory (queued or being scanned) before sources
    /// wait; 16 MiB per CPU by default.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

/// Enough queued bytes to keep every slot busy on carved files (slots are
/// twice the CPUs per group by default), and no more: the rest of a large
/// folder waits on disk rather than in memory.
fn default_max_bytes() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    16 * 1024 * 1024 * cpus
}

fn default_queue_depth() -> usize {
    1024
}

fn default_inline_limit() -> usize {
    64 * 1024
}

impl Default for MemoryParams {
    fn default() -> Self {
        MemoryParams {
            queue_depth: default_queue_depth(),
            inline_limit: default_inline_limit(),
            max_bytes: default_max_bytes(),
        }
    }
}

#[derive(Clone)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

struct Inner {
    params: MemoryParams,
    payload_groups: Mutex<HashMap<String, Arc<ConsumerGroup>>>,
    result_groups: Mutex<HashMap<String, Arc<ConsumerGroup>>>,
    blobs: Mutex<HashMap<String, Blob>>,
    /// Messages published and not yet acknowledged, over all groups.
    unacked: AtomicUsize,
    idle: Notify,
    closed: AtomicBool,
    shutdown: Notify,
    /// Payload bytes in memory, in KiB permits; held until every group is done.
    budget: Arc<Semaphore>,
    /// Unhandled messages per root payload id, and who waits for none.
    roots: Mutex<HashMap<Arc<str>, Root>>,
    results: Arc<crate::dedup::LocalResultCache>,
}

/// Bytes of encoded results kept for payloads with the same content.
const RESULT_CACHE_BYTES: usize = 32 << 20;

#[derive(Default)]
struct Root {
    unhandled: usize,
    waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

const BUDGET_UNIT: u64 = 1024;

/// The byte budget in permits; a u32 permit count covers terabytes.
fn budget_units(max_bytes: u64) -> u64 {
    (max_bytes / BUDGET_UNIT).clamp(1, u32::MAX as u64)
}

struct Blob {
    data: Bytes,
    refs: usize,
}

struct Message {
    data: Bytes,
    blob_key: Option<String>,
    /// The root payload this message belongs to.
    root: Arc<str>,
    attempt: u32,
    /// The payload's share of the byte budget, released with the last copy.
    _budget: Option<Arc<OwnedSemaphorePermit>>,
}

struct ConsumerGroup {
    queue_tx: async_channel::Sender<Message>,
    queue_rx: async_channel::Receiver<Message>,
    // Redeliveries and files unpacked inside the pipeline skip the bounded
    // queue (and go first): a full queue must never block a member that is
    // giving a message back or publishing what it unpacked, or every member
    // could wait forever on a queue only they can drain.
    urgent_tx: async_channel::Sender<Message>,
    urgent_rx: async_channel::Receiver<Message>,
    /// A results group that takes one worker group's results only.
    only_worker: Option<String>,
}

impl MemoryTransport {
    pub fn new(params: MemoryParams) -> Self {
        MemoryTransport {
            inner: Arc::new(Inner {
                payload_groups: Mutex::default(),
                result_groups: Mutex::default(),
                blobs: Mutex::default(),
                unacked: AtomicUsize::new(0),
                idle: Notify::new(),
                closed: AtomicBool::new(false),
                shutdown: Notify::new(),
                budget: Arc::new(Semaphore::new(budget_units(params.max_bytes) as usize)),
                roots: Mutex::default(),
                results: Arc::new(crate::dedup::LocalResultCache::new(RESULT_CACHE_BYTES)),
                params,
            }),
        }
    }

    /// Messages published and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.inner.unacked.load(Ordering::SeqCst)
    }

    /// Wait until every published message has been acknowledged by every group.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.unacked() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Bytes held in the blob store (for tests and metrics).
    pub fn blob_count(&self) -> usize {
        self.inner.blobs.lock().expect("blob lock").len()
    }

    /// A member of the consumer group `name`, creating the group if new.
    fn subscribe(
        &self,
        map: &Mutex<HashMap<String, Arc<ConsumerGroup>>>,
        name: &str,
        only_worker: Option<&str>,
    ) -> Arc<dyn Subscription> {
        let depth = self.inner.params.queue_depth;
        let mut groups = map.lock().expect("group lock");
        let group = groups
            .entry(name.to_owned())
            .or_insert_with(|| {
                let (queue_tx, queue_rx) = async_channel::bounded(depth.max(1));
                let (urgent_tx, urgent_rx) = async_channel::unbounded();
                Arc::new(ConsumerGroup {
                    queue_tx,
                    queue_rx,
                    urgent_tx,
                    urgent_rx,
                    only_worker: only_worker.map(str::to_owned),
                })
            })
            .clone();
        Arc::new(MemorySubscription {
            transport: self.clone(),
            group,
        })
    }

    fn groups(map: &Mutex<HashMap<String, Arc<ConsumerGroup>>>) -> Vec<Arc<ConsumerGroup>> {
        map.lock().expect("group lock").values().cloned().collect()
    }

    async fn fan_out(
        &self,
        groups: Vec<Arc<ConsumerGroup>>,
        data: Bytes,
        blob_key: Option<String>,
        root: &str,
        budget: Option<Arc<OwnedSemaphorePermit>>,
        urgent: bool,
    ) -> Result<(), TransportError> {
        let root: Arc<str> = root.into();
        for group in groups {
            self.inner.unacked.fetch_add(1, Ordering::SeqCst);
            self.inner
                .roots
                .lock()
                .expect("roots lock")
                .entry(root.clone())
                .or_default()
                .unhandled += 1;
            let message = Message {
                data: data.clone(),
                blob_key: blob_key.clone(),
                root: root.clone(),
                attempt: 0,
                _budget: budget.clone(),
            };
            let sent = if urgent {
                group.urgent_tx.send(message).await
            } else {
                group.queue_tx.send(message).await
            };
            if let Err(returned) = sent {
                self.release(&returned.0);
                return Err(TransportError::Closed);
            }
        }
        Ok(())
    }

    /// One group is done with one message.
    fn release(&self, message: &Message) {
        if let Some(key) = message.blob_key.as_deref() {
            let mut blobs = self.inner.blobs.lock().expect("blob lock");
            if let Some(blob) = blobs.get_mut(key) {
                blob.refs -= 1;
                if blob.refs == 0 {
                    blobs.remove(key);
                }
            }
        }
        {
            let mut roots = self.inner.roots.lock().expect("roots lock");
            if let Some(root) = roots.get_mut(&message.root) {
                root.unhandled -= 1;
                if root.unhandled == 0 {
                    for waiter in roots.remove(&message.root).expect("present").waiters {
                        let _ = waiter.send(());
                    }
                }
            }
        }
        if self.inner.unacked.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn drain(&self, timeout: Duration) -> usize {
        let _ = tokio::time::timeout(timeout, self.wait_idle()).await;
        self.unacked()
    }

    async fn handled(&self, root_id: &str) -> Result<(), TransportError> {
        let waiter = {
            let mut roots = self.inner.roots.lock().expect("roots lock");
            let Some(root) = roots.get_mut(root_id) else {
                return Ok(());
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            root.waiters.push(tx);
            rx
        };
        // Dropped unanswered only when the transport goes away with the tree unhandled.
        waiter.await.map_err(|_| TransportError::Closed)
    }

    fn result_cache(&self) -> Option<Arc<dyn crate::ResultCache>> {
        Some(self.inner.results.clone())
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        // Whoever waits for a tree to be handled hears that it never will be.
        self.inner.roots.lock().expect("roots lock").clear();
        self.inner.budget.close();
        self.inner.shutdown.notify_waiters();
    }

    async fn publish_payload(
        &self,
        mut event: PayloadEvent,
        data: Bytes,
    ) -> Result<(), TransportError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(TransportError::Closed);
        }
        // Unpacked files are published by a worker holding its own delivery:
        // waiting for room here could wait for that worker. Their bytes are
        // bounded by the extraction limits instead of the intake budget.
        let unpacked = event.source.kind == SourceKind::Extracted;
        let budget = if unpacked {
            None
        } else {
            let total = budget_units(self.inner.params.max_bytes);
            let units = (data.len() as u64).div_ceil(BUDGET_UNIT).min(total) as u32;
            let permit = self
                .inner
                .budget
                .clone()
                .acquire_many_owned(units)
                .await
                .map_err(|_| TransportError::Closed)?;
            Some(Arc::new(permit))
        };
        let groups = Self::groups(&self.inner.payload_groups);
        let blob_key = if data.len() <= self.inner.params.inline_limit {
            event.blob = BlobRef::Inline(data.to_vec());
            None
        } else {
            event.blob = BlobRef::Store(event.sha256.clone());
            let mut blobs = self.inner.blobs.lock().expect("blob lock");
            blobs
                .entry(event.sha256.clone())
                .or_insert_with(|| Blob { data, refs: 0 })
                .refs += groups.len();
            Some(event.sha256.clone())
        };
        let encoded = Bytes::from(wire::encode(&event)?);
        let root = event.lineage.root_id.as_str();
        self.fan_out(groups, encoded, blob_key, root, budget, unpacked)
            .await
    }

    async fn fetch_blob(&self, blob: &BlobRef) -> Result<Bytes, TransportError> {
        match blob {
            BlobRef::Inline(data) => Ok(Bytes::copy_from_slice(data)),
            BlobRef::Store(key) => self
                .inner
                .blobs
                .lock()
                .expect("blob lock")
                .get(key)
                .map(|b| b.data.clone())
                .ok_or_else(|| TransportError::BlobMissing(key.clone())),
            other => Err(crate::stored_elsewhere(other)),
        }
    }

    async fn publish_result(&self, result: &ResultEvent) -> Result<(), TransportError> {
        let (connectors, takers): (Vec<_>, Vec<_>) = Self::groups(&self.inner.result_groups)
            .into_iter()
            .filter(|g| {
                g.only_worker
                    .as_ref()
                    .is_none_or(|w| *w == result.worker.name)
            })
            .partition(|g| g.only_worker.is_none());
        let encoded = Bytes::from(wire::encode(result)?);
        // Groups that scan this result's payload keep its bytes alive until they are done.
        let blob_key = match result.payload_event.as_deref().map(|e| &e.blob) {
            Some(BlobRef::Store(key)) if !takers.is_empty() => {
                let mut blobs = self.inner.blobs.lock().expect("blob lock");
                blobs.get_mut(key).map(|b| {
                    b.refs += takers.len();
                    key.clone()
                })
            }
            _ => None,
        };
        let root = result.payload.root_id.as_str();
        self.fan_out(takers, encoded.clone(), blob_key, root, None, false)
            .await?;
        self.fan_out(connectors, encoded, None, root, None, false)
            .await
    }

    // In-process deliveries have no ack deadline, read-ahead or delivery
    // limit of their own: the options have nothing to set here.
    async fn payloads(
        &self,
        group: &str,
        _options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        Ok(self.subscribe(&self.inner.payload_groups, group, None))
    }

    async fn results(
        &self,
        name: &str,
        _options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        Ok(self.subscribe(&self.inner.result_groups, name, None))
    }

    async fn results_of(
        &self,
        group: &str,
        worker: &str,
        _options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        // Keyed apart from connectors, which share the results' group names.
        let key = format!("worker-{group}");
        Ok(self.subscribe(&self.inner.result_groups, &key, Some(worker)))
    }
}

#[cfg(test)]
mod tests;
