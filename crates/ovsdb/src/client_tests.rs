use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::datum::Uuid;

const VX1: &str = "532c2c64-ee67-4308-ad2d-a939ebd1992f";
const BR0: &str = "9115ea55-0e51-4e49-a167-b981e2bfda07";
const OVS: &str = "5343ffe7-7b38-44be-9c44-87a45fd284e8";

/// A cut of the vswitch schema, as get_schema returns it.
pub(crate) fn schema() -> Value {
    let smap = json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"});
    json!({
        "name": "Open_vSwitch", "version": "8.3.1", "cksum": "1",
        "tables": {
            "Interface": {"columns": {
                "name": {"type": "string", "mutable": false},
                "type": {"type": "string"},
                "options": {"type": smap},
                "ofport": {"type": {"key": "integer", "min": 0, "max": 1}},
                "mtu": {"type": {"key": "integer", "min": 0, "max": 1}},
            }},
            "Open_vSwitch": {"columns": {"other_config": {"type": smap}}},
            "Bridge": {"columns": {"name": {"type": "string"}}},
        },
    })
}

pub(crate) fn config() -> Config {
    Config::new("Open_vSwitch")
        .monitor("Interface", &["name", "type", "options", "ofport"])
        .monitor("Open_vSwitch", &["other_config"])
}

fn initial2() -> Value {
    json!({
        "Interface": {
            VX1: {"initial": {"name": "vx1", "options": ["map", [["psk", "abc"], ["remote_ip", "1.2.3.4"]]], "type": "vxlan"}},
            BR0: {"initial": {"name": "br0", "type": "internal"}},
        },
        "Open_vSwitch": {OVS: {"initial": {}}},
    })
}

/// The server's side of the conversation, in memory.
struct Peer {
    client: Client,
    now: Instant,
    decoder: Decoder,
}

impl Peer {
    fn new(config: Config) -> Self {
        Self {
            client: Client::new(config),
            now: Instant::now(),
            decoder: Decoder::new(DEFAULT_MAX_MESSAGE),
        }
    }

    /// What the client wrote since the last call, as messages.
    fn sent(&mut self) -> Vec<Message> {
        if let Some(bytes) = self.client.poll_transmit() {
            self.decoder.feed(&bytes).unwrap();
        }
        std::iter::from_fn(|| self.decoder.next_message())
            .map(|v| Message::from_value(v).unwrap())
            .collect()
    }

    fn send(&mut self, v: Value) -> Result<(), Error> {
        let mut bytes = Vec::new();
        codec::encode(&v, &mut bytes);
        self.client.handle_input(self.now, &bytes)
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    /// The one request the client sent: (method, params, id).
    fn request(&mut self) -> (String, Vec<Value>, Value) {
        let mut sent = self.sent();
        assert_eq!(sent.len(), 1, "{sent:?}");
        match sent.remove(0) {
            Message::Request { method, params, id } => (method, params, id),
            other => panic!("not a request: {other:?}"),
        }
    }

    /// Connects and answers get_schema and monitor_cond with `initial`.
    fn sync(&mut self, initial: Value) {
        self.client.connected(self.now);
        self.decoder.reset();
        let (method, params, id) = self.request();
        assert_eq!(
            (method.as_str(), params),
            ("get_schema", vec![json!("Open_vSwitch")])
        );
        self.send(json!({"id": id, "result": schema(), "error": null}))
            .unwrap();
        let (method, _, id) = self.request();
        assert_eq!(method, "monitor_cond");
        self.send(json!({"id": id, "result": initial, "error": null}))
            .unwrap();
    }

    fn iface(&self, uuid: &str) -> Option<&crate::Row> {
        self.client
            .cache()
            .table("Interface")?
            .get(&Uuid::parse(uuid).unwrap())
    }
}

#[test]
fn connects_monitors_and_follows_update2() {
    let mut p = Peer::new(config());
    assert!(p.client.cache().table("Interface").is_none());
    p.client.connected(p.now);
    let (method, params, id) = p.request();
    assert_eq!(method, "get_schema");
    assert_eq!(params, vec![json!("Open_vSwitch")]);
    p.send(json!({"id": id, "result": schema(), "error": null}))
        .unwrap();
    let (method, params, id) = p.request();
    assert_eq!(method, "monitor_cond");
    assert_eq!(
        params,
        vec![
            json!("Open_vSwitch"),
            json!("tunsec"),
            json!({
                "Interface": [{"columns": ["name", "ofport", "options", "type"]}],
                "Open_vSwitch": [{"columns": ["other_config"]}],
            }),
        ]
    );
    assert_eq!(p.client.phase(), Phase::AwaitMonitor { cond: true });
    p.send(json!({"id": id, "result": initial2(), "error": null}))
        .unwrap();
    assert!(matches!(p.events()[..], [Event::Connected, Event::Changed]));
    assert_eq!(p.client.phase(), Phase::Monitoring { cond: true });
    assert_eq!(p.iface(VX1).unwrap().string_map("options")["psk"], "abc");

    // A psk change and a removed key, as one update2 diff.
    p.send(json!({"id": null, "method": "update2", "params": ["tunsec",
        {"Interface": {VX1: {"modify": {"options": ["map", [["psk", "def"], ["remote_ip", "1.2.3.4"]]]}}}}]}))
        .unwrap();
    assert!(matches!(p.events()[..], [Event::Changed]));
    let opts = p.iface(VX1).unwrap().string_map("options");
    assert_eq!(opts.into_iter().collect::<Vec<_>>(), [("psk", "def")]);
    assert_eq!(p.client.stats().updates, 1);
    assert!(p.sent().is_empty(), "notifications are not answered");
}

#[test]
fn answers_the_servers_echo() {
    let mut p = Peer::new(config());
    p.sync(initial2());
    p.events();
    p.send(json!({"id": "echo", "method": "echo", "params": []}))
        .unwrap();
    p.send(json!({"id": 7, "method": "echo", "params": ["x", 1]}))
        .unwrap();
    let sent = p.sent();
    assert_eq!(
        sent,
        vec![
            Message::Response {
                id: json!("echo"),
                result: Ok(json!([]))
            },
            Message::Response {
                id: json!(7),
                result: Ok(json!(["x", 1]))
            },
        ]
    );
    // Another method gets an error, and the connection stays.
    p.send(json!({"id": 8, "method": "transact", "params": []}))
        .unwrap();
    assert_eq!(
        p.sent(),
        vec![Message::Response {
            id: json!(8),
            result: Err(json!("unknown method"))
        }]
    );
    assert_eq!(p.client.stats().echoes_answered, 2);
    assert!(p.events().is_empty());
}

#[test]
fn falls_back_to_monitor_when_monitor_cond_is_unknown() {
    let mut p = Peer::new(config());
    p.client.connected(p.now);
    let (_, _, id) = p.request();
    p.send(json!({"id": id, "result": schema(), "error": null}))
        .unwrap();
    let (method, _, id) = p.request();
    assert_eq!(method, "monitor_cond");
    // ovsdb-server's own answer to a method it lacks.
    p.send(json!({"id": id, "error": "unknown method"}))
        .unwrap();
    let (method, params, id) = p.request();
    assert_eq!(method, "monitor");
    assert_eq!(
        params[2]["Interface"][0]["columns"],
        json!(["name", "ofport", "options", "type"])
    );
    p.send(json!({"id": id, "error": null, "result": {"Interface": {VX1: {"new":
        {"name": "vx1", "ofport": ["set", []], "options": ["map", [["remote_ip", "1.2.3.4"]]], "type": "vxlan"}}}}}))
        .unwrap();
    assert!(matches!(p.events()[..], [Event::Connected, Event::Changed]));
    assert_eq!(p.client.phase(), Phase::Monitoring { cond: false });
    assert_eq!(p.client.stats().fallbacks, 1);
    p.send(json!({"id": null, "method": "update", "params": ["tunsec", {"Interface": {VX1: {
        "old": {"type": "vxlan"},
        "new": {"name": "vx1", "ofport": ["set", []], "options": ["map", [["remote_ip", "1.2.3.4"]]], "type": "gre"}}}}]}))
        .unwrap();
    assert_eq!(p.iface(VX1).unwrap().str("type"), "gre");
    // update2 on a plain monitor is a protocol error.
    let e = p
        .send(json!({"id": null, "method": "update2", "params": ["tunsec", {}]}))
        .unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    assert!(matches!(
        p.events()[..],
        [Event::Changed, Event::Disconnected { .. }]
    ));
}

#[test]
fn other_refusals_end_the_connection() {
    let mut p = Peer::new(config());
    p.client.connected(p.now);
    let (_, _, id) = p.request();
    let e = p
        .send(json!({"id": id, "error": {"error": "unknown database", "details": "nodb"}}))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Refused {
                method: "get_schema",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("unknown database"));
    assert_eq!(p.client.phase(), Phase::Disconnected);
    assert!(p.events().is_empty(), "no Disconnected without a Connected");

    p.client.connected(p.now);
    p.decoder.reset();
    let (_, _, id) = p.request();
    p.send(json!({"id": id, "result": schema(), "error": null}))
        .unwrap();
    let (_, _, id) = p.request();
    let e = p
        .send(json!({"id": id, "error": {"error": "syntax error"}}))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Refused {
                method: "monitor_cond",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn columns_the_schema_lacks_are_left_out() {
    let c = config()
        .monitor("Interface", &["name", "bogus"])
        .monitor("NoSuchTable", &[]);
    let mut p = Peer::new(c);
    p.client.connected(p.now);
    let (_, _, id) = p.request();
    p.send(json!({"id": id, "result": schema(), "error": null}))
        .unwrap();
    let (_, params, _) = p.request();
    assert_eq!(params[2]["Interface"], json!([{"columns": ["name"]}]));
    assert!(params[2].get("NoSuchTable").is_none());
    assert_eq!(p.client.stats().missing_in_schema, 2);
    // An empty column list means every column.
    let mut p = Peer::new(Config::new("Open_vSwitch").monitor("Bridge", &[]));
    p.client.connected(p.now);
    let (_, _, id) = p.request();
    p.send(json!({"id": id, "result": schema(), "error": null}))
        .unwrap();
    let (_, params, _) = p.request();
    assert_eq!(params[2]["Bridge"], json!([{"columns": ["name"]}]));
}

#[test]
fn probes_a_silent_server_and_gives_it_up() {
    let mut p = Peer::new(config());
    p.sync(initial2());
    p.events();
    let t0 = p.now;
    assert_eq!(p.client.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    p.client
        .handle_timeout(t0 + Duration::from_secs(4))
        .unwrap();
    assert!(p.sent().is_empty());
    p.client
        .handle_timeout(t0 + Duration::from_secs(5))
        .unwrap();
    let (method, _, id) = p.request();
    assert_eq!(method, "echo");
    assert_eq!(p.client.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    // The answer (any byte) restarts the clock.
    p.now = t0 + Duration::from_secs(6);
    p.send(json!({"id": id, "result": [], "error": null}))
        .unwrap();
    assert_eq!(
        p.client.poll_timeout(),
        Some(p.now + Duration::from_secs(5))
    );
    p.client
        .handle_timeout(p.now + Duration::from_secs(5))
        .unwrap();
    assert_eq!(p.request().0, "echo");
    let e = p
        .client
        .handle_timeout(p.now + Duration::from_secs(10))
        .unwrap_err();
    assert!(matches!(e, Error::ProbeTimeout(d) if d == Duration::from_secs(10)));
    assert!(matches!(
        p.events()[..],
        [Event::Disconnected {
            reason: Error::ProbeTimeout(_)
        }]
    ));
    // The cache is kept while disconnected.
    assert_eq!(p.iface(VX1).unwrap().str("name"), "vx1");
    assert_eq!(p.client.poll_timeout(), None);
    assert_eq!(p.client.stats().probes, 2);
}

#[test]
fn no_probe_when_disabled() {
    let mut c = config();
    c.probe_interval = None;
    let mut p = Peer::new(c);
    p.sync(initial2());
    assert_eq!(p.client.poll_timeout(), None);
    p.client
        .handle_timeout(p.now + Duration::from_secs(3600))
        .unwrap();
    assert_eq!(p.client.phase(), Phase::Monitoring { cond: true });
}

#[test]
fn reconnection_resyncs_and_tells_what_changed() {
    let mut p = Peer::new(config());
    p.sync(initial2());
    p.events();
    let g = p.client.cache().generation();
    p.client.disconnected(Error::Closed);
    assert!(matches!(
        p.events()[..],
        [Event::Disconnected {
            reason: Error::Closed
        }]
    ));
    assert_eq!(
        p.client.cache().table("Interface").unwrap().len(),
        2,
        "kept"
    );
    // The same state again: Connected, no Changed.
    p.sync(initial2());
    assert!(matches!(p.events()[..], [Event::Connected]));
    assert_eq!(p.client.cache().generation(), g);
    // vx1 deleted and other_config set while we were away.
    p.client.disconnected(Error::Closed);
    p.events();
    let mut later = initial2();
    later["Interface"].as_object_mut().unwrap().remove(VX1);
    later["Open_vSwitch"][OVS]["initial"] =
        json!({"other_config": ["map", [["certificate", "/c.pem"]]]});
    p.sync(later);
    assert!(matches!(p.events()[..], [Event::Connected, Event::Changed]));
    assert!(p.iface(VX1).is_none());
    let ovs = p.client.cache().table("Open_vSwitch").unwrap();
    assert_eq!(
        ovs.rows().next().unwrap().1.string_map("other_config")["certificate"],
        "/c.pem"
    );
    assert_eq!(p.client.cache().generation(), g + 1);
    assert_eq!(p.client.stats().resyncs, 3);
}

#[test]
fn garbage_and_misfits_reset_the_connection_and_keep_the_cache() {
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n".to_vec(),
        b"{\"id\": 1, ".to_vec().into_iter().chain(b"]".iter().copied()).collect(),
        br#"{"id":null,"method":"update2","params":["tunsec",{"Interface":{"00000000-0000-0000-0000-000000000009":{"modify":{"name":"x"}}}}]}"#.to_vec(),
        br#"{"id":null,"method":"update2","params":["tunsec",{"Interface":{"532c2c64-ee67-4308-ad2d-a939ebd1992f":{"modify":{"options":7}}}}]}"#.to_vec(),
        br#"{"id":null,"method":"update2","params":["tunsec"]}"#.to_vec(),
        br#"{"id":null,"method":"monitor_canceled","params":["tunsec"]}"#.to_vec(),
        br#"{"id":null,"result":1}"#.to_vec(),
        br#"[1,2,3]"#.to_vec(),
    ];
    for bad in cases {
        let mut c = config();
        c.max_message = 4096;
        let mut p = Peer::new(c);
        p.sync(initial2());
        p.events();
        let before = p.client.cache().clone();
        let e = p.client.handle_input(p.now, &bad);
        assert!(e.is_err(), "{}", String::from_utf8_lossy(&bad));
        assert!(matches!(p.events()[..], [Event::Disconnected { .. }]));
        assert_eq!(p.client.cache(), &before);
        assert_eq!(p.client.phase(), Phase::Disconnected);
        assert!(p.client.poll_transmit().is_none());
        // Further bytes on the dead connection are ignored.
        p.client.handle_input(p.now, b"{}").unwrap();
    }
    // Too large.
    let mut c = config();
    c.max_message = 4096;
    let mut p = Peer::new(c);
    p.sync(initial2());
    let e = p.client.handle_input(p.now, &[b'['; 5000]).unwrap_err();
    assert!(matches!(
        e,
        Error::Codec(crate::CodecError::TooLarge { limit: 4096 })
    ));
}

#[test]
fn irrelevant_messages_are_counted_and_dropped() {
    let mut p = Peer::new(config());
    p.sync(initial2());
    p.events();
    for m in [
        json!({"id": null, "method": "update2", "params": ["someone-else", {"Interface": {VX1: {"delete": null}}}]}),
        json!({"id": null, "method": "update3", "params": []}),
        json!({"id": 99, "result": [], "error": null}),
        json!({"id": "x", "result": [], "error": null}),
        json!({"id": null, "method": "update2", "params": ["tunsec", {"Bridge": {BR0: {"insert": {}}}}]}),
    ] {
        p.send(m).unwrap();
    }
    assert_eq!(p.client.stats().ignored, 5);
    assert!(p.events().is_empty());
    assert!(p.iface(VX1).is_some());
}

#[test]
fn updates_before_the_monitor_reply_are_refused() {
    let mut p = Peer::new(config());
    p.client.connected(p.now);
    let e = p
        .send(json!({"id": null, "method": "update2", "params": ["tunsec", {}]}))
        .unwrap_err();
    assert!(matches!(e, Error::Protocol(_)));
}

proptest! {
    /// Any bytes, in any pieces, from a server the client is synced
    /// with: no panic; an error always leaves the client disconnected,
    /// with nothing left to write; rows keep their columns. (That a bad
    /// message leaves the cache as it was is checked message by message
    /// in `garbage_and_misfits_reset_the_connection_and_keep_the_cache`.)
    #[test]
    fn any_bytes_from_the_server_never_panic(
        chunks in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                prop_oneof![
                    Just(br#"{"id":null,"method":"update2","params":["tunsec",{"Interface":{"#.to_vec()),
                    Just(format!(r#""{VX1}":{{"modify":{{"options":["map",[["psk","abc"]]]}}}}"#).into_bytes()),
                    Just(format!(r#""{BR0}":{{"delete":null}}"#).into_bytes()),
                    Just(br#"{"id":"echo","method":"echo","params":[]}"#.to_vec()),
                    Just(b"}}]}".to_vec()),
                    Just(b",".to_vec()),
                ],
            ],
            0..12,
        ),
    ) {
        let mut p = Peer::new(config());
        p.sync(initial2());
        p.events();
        for c in chunks {
            if p.client.handle_input(p.now, &c).is_err() {
                prop_assert_eq!(p.client.phase(), Phase::Disconnected);
                prop_assert!(p.client.poll_transmit().is_none());
            }
            // Messages before a fault in the same read may have changed
            // the cache, but every row keeps exactly the monitored columns.
            for (_, t) in p.client.cache().tables() {
                for (_, r) in t.rows() {
                    prop_assert!(r.columns().map(|(c, _)| c).eq(t.columns().keys().map(String::as_str)));
                }
            }
        }
    }
}
