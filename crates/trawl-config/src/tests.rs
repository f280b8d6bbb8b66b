use super::*;

fn check(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("/etc/trawl/node.toml"), text)
}

#[test]
fn short_form_gets_defaults() {
    let c = check(
        r#"
        version = 1
        [workers.hash]
        type = "hash"
        [connectors.local]
        type = "sqlite"
        path = "trawl.db"
        "#,
    )
    .unwrap();
    assert_eq!(c.transport.kind, "memory");
    assert_eq!(c.node.data_dir, Path::new("/etc/trawl/trawl-data"));
    let w = &c.workers["hash"];
    assert_eq!(w.component.kind, "hash");
    assert_eq!(w.timeout, Duration::from_secs(60));
    assert_eq!(w.max_deliver, 5);
    let k = &c.connectors["local"];
    assert_eq!(k.batch_size.get(), 500);
    assert_eq!(k.component.params["path"].as_str(), Some("trawl.db"));
    assert_eq!(
        k.component.resolve_path("trawl.db"),
        Path::new("/etc/trawl/trawl.db")
    );
}

#[test]
fn unknown_top_level_key_names_the_key_and_file() {
    let e = check("version = 1\n[nodes]\nname = 'x'\n").unwrap_err();
    let m = e.to_string();
    assert!(m.starts_with("/etc/trawl/node.toml: "), "{m}");
    assert!(m.contains("nodes"), "{m}");
    assert!(!m.contains('\n'), "{m}");
}

#[test]
fn unknown_node_key_is_an_error() {
    let e = check("version = 1\n[node]\nnmae = 'x'\n").unwrap_err();
    assert!(e.to_string().contains("nmae"), "{e}");
}

#[test]
fn common_worker_keys_are_typed() {
    let c = check(
        "version = 1\n[workers.yara]\ntype = 'yara'\nrules = 'r/'\nconcurrency = 3\ntimeout = '250ms'\nmax_deliver = 2\n",
    )
    .unwrap();
    let w = &c.workers["yara"];
    assert_eq!(w.concurrency.get(), 3);
    assert_eq!(w.timeout, Duration::from_millis(250));
    assert_eq!(w.max_deliver, 2);
    assert!(!w.component.params.contains_key("timeout"));
    assert!(w.component.params.contains_key("rules"));
}

#[test]
fn bad_values_name_their_key() {
    for (text, key) in [
        (
            "version = 1\n[workers.y]\ntype='yara'\ntimeout='soon'\n",
            "workers.y.timeout",
        ),
        (
            "version = 1\n[workers.y]\ntype='yara'\nconcurrency=0\n",
            "workers.y.concurrency",
        ),
        ("version = 1\n[workers.y]\nrules='x'\n", "workers.y"),
        (
            "version = 1\n[connectors.c]\ntype='jsonl'\nflush_interval='0s'\n",
            "connectors.c.flush_interval",
        ),
        ("version = 2\n", "version"),
    ] {
        let e = check(text).unwrap_err().to_string();
        assert!(e.contains(key), "{key} not in {e}");
    }
}

#[test]
fn plugin_params_reject_unknown_keys() {
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct YaraParams {
        rules: String,
    }
    let c = check("version = 1\n[workers.y]\ntype='yara'\nrulez='x'\n").unwrap();
    let e = c.workers["y"]
        .component
        .params::<YaraParams>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("workers.y") && e.contains("rulez"), "{e}");
}

#[test]
fn env_is_expanded_in_component_values() {
    std::env::set_var("TRAWL_TEST_DB_DIR", "/srv/db");
    let c = check(
        "version = 1\n[connectors.c]\ntype='sqlite'\npath='${TRAWL_TEST_DB_DIR}/t.db'\nother='${TRAWL_TEST_UNSET_X:-d}'\n",
    )
    .unwrap();
    let p = &c.connectors["c"].component.params;
    assert_eq!(p["path"].as_str(), Some("/srv/db/t.db"));
    assert_eq!(p["other"].as_str(), Some("d"));
    let e = check("version = 1\n[connectors.c]\ntype='sqlite'\npath='${TRAWL_TEST_UNSET_Y}'\n")
        .unwrap_err();
    assert!(e.to_string().contains("TRAWL_TEST_UNSET_Y"), "{e}");
}

#[test]
fn syntax_errors_are_one_line_with_location() {
    let e = check("version = 1\n[workers.y\n").unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn worker_filters_are_typed_and_checked() {
    let c = check(
        "version = 1\n[workers.pe]\ntype = 'pe'\nfilter = { mime = ['application/x-dosexec'], max_size = 1000, sources = ['suricata'], max_depth = 2 }\n",
    )
    .unwrap();
    let f = &c.workers["pe"].filter;
    assert_eq!(f.mime, ["application/x-dosexec"]);
    assert_eq!((f.max_size, f.max_depth), (Some(1000), Some(2)));
    assert!(
        c.workers["pe"].component.params.get("filter").is_none(),
        "not a plugin key"
    );
    let y = check(
        "version = 1\n[workers.pe]\ntype = 'pe'\nfilter = { yara = { tags = ['exe'], rules = ['Packed_*'] } }\n",
    )
    .unwrap();
    let y = y.workers["pe"].filter.yara.clone().unwrap();
    assert_eq!(
        (y.worker.as_str(), y.rules, y.tags),
        ("yara", vec!["Packed_*".to_owned()], vec!["exe".to_owned()]),
        "the yara group is the default"
    );
    assert!(check("version = 1\n[workers.h]\ntype = 'hash'\n")
        .unwrap()
        .workers["h"]
        .filter
        .is_empty());
    for (filter, expect) in [
        (
            "{ sources = ['pcap'] }",
            "filter.sources: unknown source kind \"pcap\"",
        ),
        (
            "{ mime = ['exe'] }",
            "filter.mime: \"exe\" is not a mime type",
        ),
        ("{ size = 3 }", "workers.h.filter: unknown field `size`"),
        (
            "{ yara = { worker = 'h' } }",
            "workers.h.filter.yara.worker: groups that wait for each other's matches never scan anything: h waits for h",
        ),
        (
            "{ yara = { worker = 'x', rule = 'A' } }",
            "unknown field `rule`",
        ),
    ] {
        let e = check(&format!(
            "version = 1\n[workers.h]\ntype = 'hash'\nfilter = {filter}\n[workers.other]\ntype = 'hash'\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains(expect), "{e}");
    }
}

#[test]
fn yara_groups_waiting_for_each_other_are_refused() {
    let e = check(
        "version = 1\n[workers.a]\ntype = 'yara'\nrules = 'r'\nfilter = { yara = { worker = 'b' } }\n\
         [workers.b]\ntype = 'yara'\nrules = 'r'\nfilter = { yara = { worker = 'a' } }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("a waits for b waits for a"), "{e}");
}

#[test]
fn the_telemetry_address_is_typed_and_named_when_wrong() {
    let c = check("version = 1\n[node]\nlisten = '127.0.0.1:9464'\n").unwrap();
    assert_eq!(c.node.listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(check("version = 1\n").unwrap().node.listen, None);
    for bad in ["'localhost'", "'127.0.0.1'", "9464"] {
        let m = check(&format!("version = 1\n[node]\nlisten = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(m.contains("node.listen: "), "{bad}: {m}");
    }
}
