//! The brokers the distributed drills run over, behind one face: a real
//! nats-server with JetStream, and a real RabbitMQ node.

use trawl_testkit::{NatsServer, RabbitServer};

/// Each drill named, once over each transport.
macro_rules! on_both_transports {
    ($($drill:ident),* $(,)?) => {$(
        mod $drill {
            #[test]
            fn jetstream() {
                super::$drill(&mut trawl_testkit::NatsServer::start());
            }

            #[test]
            fn rabbitmq() {
                super::$drill(&mut trawl_testkit::RabbitServer::start());
            }
        }
    )*};
}

/// What a drill needs of the broker under it.
pub(crate) trait Broker {
    /// The `[transport]` table's lines.
    fn transport(&self) -> String;
    /// `trawl status` row names: payloads, results, dead letters.
    fn rows(&self) -> [&'static str; 3];
    /// Whether a group gets only what is published after its queue exists
    /// (so a drill starts its sensor once the queues are made).
    fn queues_first(&self) -> bool {
        false
    }
    /// Stop the broker and start it again, keeping what it stored.
    fn outage(&mut self);
    /// Publish raw bytes as a payload event (`payload`) or as a result of
    /// the `hash` worker, the way a hostile client on the broker could.
    fn inject(&self, payload: bool, body: Vec<u8>);
    /// Why each set-aside message was set aside, oldest first.
    fn dead_reasons(&self) -> Vec<String>;
}

impl Broker for NatsServer {
    fn transport(&self) -> String {
        format!(
            "type = \"jetstream\"\nservers = [\"{}\"]\ninline_limit = 4096\n",
            self.url()
        )
    }

    fn rows(&self) -> [&'static str; 3] {
        ["TRAWL_PAYLOADS", "TRAWL_RESULTS", "TRAWL_DLQ"]
    }

    fn outage(&mut self) {
        self.restart();
    }

    fn inject(&self, payload: bool, body: Vec<u8>) {
        let subject = if payload {
            "trawl.payload.dir.evil"
        } else {
            "trawl.result.hash"
        };
        let url = self.url();
        crate::harness::rt().block_on(async move {
            let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
            js.publish(subject, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        });
    }

    fn dead_reasons(&self) -> Vec<String> {
        let url = self.url();
        crate::harness::rt().block_on(async move {
            let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
            let mut stream = js.get_stream("TRAWL_DLQ").await.unwrap();
            let last = stream.info().await.unwrap().state.last_sequence;
            let mut reasons = Vec::new();
            for seq in 1..=last {
                let m = stream.get_raw_message(seq).await.unwrap();
                reasons.push(m.headers.get("Trawl-Reason").unwrap().to_string());
            }
            reasons
        })
    }
}

impl Broker for RabbitServer {
    fn transport(&self) -> String {
        format!(
            "type = \"rabbitmq\"\nservers = [\"{}\"]\nmanagement = \"{}\"\ninline_limit = 4096\n",
            self.url(),
            self.management_url()
        )
    }

    fn rows(&self) -> [&'static str; 3] {
        ["trawl.payloads", "trawl.results", "trawl.dead"]
    }

    fn queues_first(&self) -> bool {
        true
    }

    fn outage(&mut self) {
        self.restart();
    }

    fn inject(&self, payload: bool, body: Vec<u8>) {
        let (exchange, key) = if payload {
            ("trawl.payloads", "dir.evil")
        } else {
            ("trawl.results", "hash.ok")
        };
        let url = self.url();
        crate::harness::rt().block_on(async move {
            use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
            let conn = lapin::Connection::connect(&url, Default::default())
                .await
                .unwrap();
            let channel = conn.create_channel().await.unwrap();
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    &body,
                    lapin::BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack(), "{confirm:?}");
        });
    }

    fn dead_reasons(&self) -> Vec<String> {
        let url = self.url();
        crate::harness::rt().block_on(async move {
            use lapin::options::{BasicGetOptions, BasicNackOptions};
            use lapin::types::AMQPValue;
            let conn = lapin::Connection::connect(&url, Default::default())
                .await
                .unwrap();
            let channel = conn.create_channel().await.unwrap();
            let mut reasons = Vec::new();
            while let Some(m) = channel
                .basic_get("trawl.dead".into(), BasicGetOptions::default())
                .await
                .unwrap()
            {
                let headers = m.delivery.properties.headers().clone().unwrap_or_default();
                let reason = match headers.inner().get("x-trawl-reason") {
                    Some(AMQPValue::LongString(s)) => s.to_string(),
                    other => format!("{other:?}"),
                };
                reasons.push(reason);
            }
            // Closing the channel puts every message back, unacknowledged.
            let _ = channel
                .basic_nack(
                    0,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await;
            reasons
        })
    }
}
