//! Running a source against the in-process transport, for the sources' tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use trawl_config::Component;
use trawl_core::{wire, PayloadEvent, ResultEvent};
use trawl_transport::{ConsumerOptions, MemoryParams, MemoryTransport, Subscription, Transport};

use crate::{Source, SourceContext, SourceError, SourceStats};

/// Append `text` to a file, creating it, as a sensor appends to its log.
pub(crate) fn append(path: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// A source's config table, as `[sources.drop]` in a node file.
pub(crate) fn component(kind: &str, dir: &Path, extra: &str) -> Component {
    let text = format!(
        "version = 1\n[sources.drop]\ntype = '{kind}'\npath = '{}'\npoll_interval = '50ms'\n{extra}",
        dir.display()
    );
    trawl_config::parse(Path::new("/etc/trawl/n.toml"), &text)
        .unwrap()
        .sources["drop"]
        .clone()
}

pub(crate) struct Bench {
    pub transport: MemoryTransport,
    pub payloads: Arc<dyn Subscription>,
    pub results: Arc<dyn Subscription>,
    pub stats: Arc<SourceStats>,
}

impl Bench {
    pub(crate) async fn new() -> Self {
        let transport = MemoryTransport::new(MemoryParams::default());
        let opts = ConsumerOptions::new(3, Duration::from_secs(30), 1);
        Bench {
            payloads: transport.payloads("w", opts.clone()).await.unwrap(),
            results: transport.results("c", opts).await.unwrap(),
            transport,
            stats: Arc::default(),
        }
    }

    pub(crate) fn start(&self, source: Arc<dyn Source>) -> Running {
        let (stop, shutdown) = watch::channel(false);
        let ctx = SourceContext {
            transport: Arc::new(self.transport.clone()),
            node: "n".into(),
            shutdown,
            stats: self.stats.clone(),
        };
        let task = tokio::spawn(async move { source.run(ctx).await });
        Running { stop, task }
    }

    /// The next `n` payload events, acked, sorted by filename.
    pub(crate) async fn events(&self, n: usize) -> Vec<PayloadEvent> {
        let mut out = Vec::new();
        for _ in 0..n {
            let d = tokio::time::timeout(Duration::from_secs(10), self.payloads.next())
                .await
                .expect("payload within 10s")
                .unwrap()
                .unwrap();
            out.push(wire::decode::<PayloadEvent>(&d.data).unwrap());
            d.ack().await.unwrap();
        }
        out.sort_by(|a, b| a.meta.filename.cmp(&b.meta.filename));
        out
    }

    pub(crate) async fn names(&self, n: usize) -> Vec<String> {
        self.events(n)
            .await
            .into_iter()
            .map(|e| e.meta.filename.unwrap_or_default())
            .collect()
    }

    pub(crate) async fn result(&self) -> ResultEvent {
        let d = tokio::time::timeout(Duration::from_secs(10), self.results.next())
            .await
            .expect("result within 10s")
            .unwrap()
            .unwrap();
        let r = wire::decode(&d.data).unwrap();
        d.ack().await.unwrap();
        r
    }

    pub(crate) async fn nothing_more(&self) {
        let extra = self
            .payloads
            .next_timeout(Duration::from_millis(400))
            .await
            .unwrap();
        assert!(extra.is_none(), "unexpected extra payload");
    }
}

pub(crate) struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), SourceError>>,
}

impl Running {
    pub(crate) async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// Any JSON value a sensor's log may hold, with the keys trawl reads
/// (flow, fileinfo, Zeek's files.log fields) among the random ones.
pub(crate) fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let key = prop_oneof![
        prop::sample::select(vec![
            "src_ip",
            "dest_ip",
            "src_port",
            "dest_port",
            "proto",
            "app_proto",
            "fileinfo",
            "filename",
            "sha256",
            "md5",
            "sha1",
            "size",
            "state",
            "stored",
            "file_id",
            "http",
            "id.orig_h",
            "id.orig_p",
            "id.resp_h",
            "id.resp_p",
            "fuid",
            "uid",
            "source",
            "mime_type",
            "extracted",
            "extracted_cutoff",
            "seen_bytes",
            "total_bytes",
            "ts",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}
