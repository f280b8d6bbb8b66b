use super::*;
use std::fs;
use tokio::sync::watch;
use trawl_core::{wire, PayloadEvent};
use trawl_transport::{ConsumerOptions, MemoryParams, MemoryTransport, Subscription, Transport};

fn component(dir: &Path, extra: &str) -> Component {
    let text = format!(
        "version = 1\n[sources.drop]\ntype = 'dir'\npath = '{}'\nsettle = '100ms'\npoll_interval = '50ms'\n{extra}",
        dir.display()
    );
    trawl_config::parse(Path::new("/etc/trawl/n.toml"), &text)
        .unwrap()
        .sources["drop"]
        .clone()
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), SourceError>>,
}

fn start(source: Arc<dyn Source>, transport: &MemoryTransport) -> Running {
    let (stop, shutdown) = watch::channel(false);
    let ctx = SourceContext {
        transport: Arc::new(transport.clone()),
        node: "n".into(),
        shutdown,
    };
    let task = tokio::spawn(async move { source.run(ctx).await });
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

async fn names(sub: &Arc<dyn Subscription>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("payload within 5s")
            .unwrap()
            .unwrap();
        let e: PayloadEvent = wire::decode(&d.data).unwrap();
        out.push(e.meta.filename.unwrap());
        d.ack().await.unwrap();
    }
    out.sort();
    out
}

async fn nothing_more(sub: &Arc<dyn Subscription>) {
    let extra = sub.next_timeout(Duration::from_millis(400)).await.unwrap();
    assert!(extra.is_none(), "unexpected extra payload");
}

#[tokio::test]
async fn publishes_each_file_once_across_restarts() {
    let watched = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    fs::write(watched.path().join("a.bin"), b"a").unwrap();
    fs::write(watched.path().join("b.bin"), b"bb").unwrap();
    let t = MemoryTransport::new(MemoryParams::default());
    let sub = t
        .payloads("w", ConsumerOptions::new(3, Duration::from_secs(30), 1))
        .await
        .unwrap();
    let c = component(watched.path(), "");
    let src = DirFactory.build(&c, data.path()).unwrap();

    let run = start(src.clone(), &t);
    assert_eq!(names(&sub, 2).await, ["a.bin", "b.bin"]);
    nothing_more(&sub).await;
    run.stop().await;

    // A restart knows what it published; only the new file goes out.
    fs::write(watched.path().join("c.bin"), b"ccc").unwrap();
    let run = start(src, &t);
    assert_eq!(names(&sub, 1).await, ["c.bin"]);
    nothing_more(&sub).await;
    run.stop().await;
}

#[tokio::test]
async fn a_growing_file_waits_until_it_settles() {
    let watched = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let t = MemoryTransport::new(MemoryParams::default());
    let sub = t
        .payloads("w", ConsumerOptions::new(3, Duration::from_secs(30), 1))
        .await
        .unwrap();
    let src = DirFactory
        .build(&component(watched.path(), ""), data.path())
        .unwrap();
    let run = start(src, &t);
    let path = watched.path().join("growing");
    for i in 0..6 {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[i; 100]).unwrap();
        drop(f);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(
            sub.next_timeout(Duration::from_millis(1))
                .await
                .unwrap()
                .is_none(),
            "published while still being written"
        );
    }
    let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let e: PayloadEvent = wire::decode(&d.data).unwrap();
    assert_eq!(e.size, 600);
    d.ack().await.unwrap();
    run.stop().await;
}

#[tokio::test]
async fn delete_and_move_apply_after_publish() {
    let watched = tempfile::tempdir().unwrap();
    let done = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    fs::create_dir(watched.path().join("sub")).unwrap();
    fs::write(watched.path().join("sub/x"), b"x").unwrap();
    let t = MemoryTransport::new(MemoryParams::default());
    let sub = t
        .payloads("w", ConsumerOptions::new(3, Duration::from_secs(30), 1))
        .await
        .unwrap();
    let c = component(
        watched.path(),
        &format!("after = 'move:{}'\n", done.path().display()),
    );
    let run = start(DirFactory.build(&c, data.path()).unwrap(), &t);
    assert_eq!(names(&sub, 1).await, ["x"]);
    run.stop().await;
    assert!(!watched.path().join("sub/x").exists());
    assert_eq!(fs::read(done.path().join("sub/x")).unwrap(), b"x");

    fs::write(watched.path().join("y"), b"y").unwrap();
    let c = component(watched.path(), "after = 'delete'\n");
    let run = start(DirFactory.build(&c, data.path()).unwrap(), &t);
    assert_eq!(names(&sub, 1).await, ["y"]);
    run.stop().await;
    assert!(!watched.path().join("y").exists());
}

#[test]
fn config_errors_name_the_key() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("file");
    fs::write(&f, b"").unwrap();
    let e = DirFactory
        .build(&component(&f, ""), d.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("sources.drop: path:") && e.contains("is a file"),
        "{e}"
    );
    let e = DirFactory
        .check(&component(d.path(), "after = 'shred'\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("after"), "{e}");
}
