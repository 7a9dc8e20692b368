//! OVSDB client: bytes from a server, split at 0xFE into reads, go to a
//! `Client` that has sent `get_schema` (id 0) and had it answered, so the
//! next request is `monitor_cond` (id 1) and the input can answer it and
//! send updates. Nothing may panic; an error always leaves the client
//! disconnected, and every cached row holds exactly the monitored
//! columns. Every message the stream
//! decodes to is also applied to a cache in both notations, as an update
//! and as a resync: an error leaves that cache unchanged. And the stream
//! decodes to the same messages whole as in its reads.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tunsec_ovsdb::codec::{Decoder, encode};
use tunsec_ovsdb::{Cache, Client, Config, Notation, Phase, Schema};

fn schema() -> serde_json::Value {
    let smap = json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"});
    json!({"name": "Open_vSwitch", "tables": {
        "Interface": {"columns": {
            "name": {"type": "string"},
            "type": {"type": "string"},
            "options": {"type": smap},
            "ofport": {"type": {"key": "integer", "min": 0, "max": 1}},
            "bfd": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
            "link_speed": {"type": {"key": "real", "min": 0, "max": 1}},
            "admin": {"type": "boolean"},
            "port": {"type": {"key": "uuid", "min": 0, "max": "unlimited"}},
        }},
        "Open_vSwitch": {"columns": {"other_config": {"type": smap}}},
    }})
}

fuzz_target!(|input: &[u8]| {
    let config = Config::new("Open_vSwitch")
        .monitor("Interface", &[])
        .monitor("Open_vSwitch", &["other_config"]);
    let mut client = Client::new(Config {
        max_message: 1 << 16,
        ..config
    });
    let mut now = Instant::now();
    client.connected(now);
    let mut reply = Vec::new();
    encode(
        &json!({"id": 0, "result": schema(), "error": null}),
        &mut reply,
    );
    client
        .handle_input(now, &reply)
        .expect("the schema is accepted");
    assert_eq!(client.phase(), Phase::AwaitMonitor { cond: true });

    let mut split = Decoder::new(1 << 16);
    let mut split_msgs = Vec::new();
    for chunk in input.split(|b| *b == 0xFE) {
        now += Duration::from_millis(100);
        if client.handle_input(now, chunk).is_err() {
            assert_eq!(client.phase(), Phase::Disconnected);
            assert!(client.poll_transmit().is_none());
        }
        // Messages before a fault in the same read may have changed the
        // cache, but every row always holds exactly the monitored columns.
        for (_, table) in client.cache().tables() {
            for (_, row) in table.rows() {
                assert!(
                    row.columns()
                        .map(|(c, _)| c)
                        .eq(table.columns().keys().map(String::as_str))
                );
            }
        }
        while client.poll_event().is_some() {}
        let _ = client.poll_transmit();
        let _ = client.handle_timeout(now);
        let r = split.feed(chunk);
        split_msgs.extend(std::iter::from_fn(|| split.next_message()));
        if r.is_err() {
            break;
        }
    }

    // The same bytes without the 0xFE cuts, whole.
    let joined: Vec<u8> = input.iter().copied().filter(|b| *b != 0xFE).collect();
    let mut whole = Decoder::new(1 << 16);
    let _ = whole.feed(&joined);
    let whole_msgs: Vec<_> = std::iter::from_fn(|| whole.next_message()).collect();
    assert_eq!(whole_msgs, split_msgs);

    let tables = Schema::from_json(&schema()).expect("a good schema").tables;
    for m in &whole_msgs {
        // The table updates are in params[1] of a notification, or in
        // result of a monitor reply; try the message itself too.
        let candidates = [
            m.get("params").and_then(|p| p.get(1)),
            m.get("result"),
            Some(m),
        ];
        for v in candidates.into_iter().flatten() {
            for notation in [Notation::Update2, Notation::Update] {
                let base = Cache::new(tables.clone());
                let mut c = base.clone();
                if c.apply(notation, v).is_err() {
                    assert!(c == base);
                    assert_eq!(c.generation(), base.generation());
                }
                let mut r = c.clone();
                if r.resync(notation, v).is_err() {
                    assert!(r == c);
                }
            }
        }
    }
});
