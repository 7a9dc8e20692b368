//! The client against Debian's real `ovsdb-server` (openvswitch-switch
//! 3.1, installed by scripts/deps.sh), each test with a private server on
//! a Unix socket in a temporary directory and a fresh vswitch database;
//! and against fake servers that this test serves itself. No network
//! namespace and no route is needed or touched.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tunsec_ovsdb::codec::{Decoder, encode};
use tunsec_ovsdb::{Config, Datum, Driver, Error, Event, Message, Remote, Uuid};

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// A private ovsdb-server, killed when dropped (also when a test fails).
struct Server {
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Creates a fresh database in `dir` and starts serving it.
    fn create(dir: &Path) -> Self {
        assert!(
            Path::new(SCHEMA).exists(),
            "{SCHEMA} is missing: install openvswitch-switch (scripts/deps.sh)"
        );
        let db = dir.join("conf.db");
        run("ovsdb-tool", &["create", db.to_str().unwrap(), SCHEMA]);
        let s = Self::start(dir, "db.sock");
        s.vsctl(&["init"]);
        s
    }

    /// Serves the database in `dir` on the socket `dir/sock`.
    fn start(dir: &Path, sock: &str) -> Self {
        let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
        let child = Command::new("ovsdb-server")
            .arg(p("conf.db"))
            .arg(format!("--remote=punix:{}", p(sock)))
            .arg(format!("--unixctl={}", p(&format!("{sock}.ctl"))))
            .arg(format!("--log-file={}", p("ovsdb-server.log")))
            .env("OVS_RUNDIR", dir)
            .env("OVS_LOGDIR", dir)
            .env("OVS_DBDIR", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ovsdb-server (scripts/deps.sh installs openvswitch-switch)");
        let s = Self {
            dir: dir.to_owned(),
            child: Some(child),
        };
        let path = dir.join(sock);
        let t0 = Instant::now();
        while std::os::unix::net::UnixStream::connect(&path).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "ovsdb-server never listened on {path:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    /// `ovs-vsctl --db=unix:SOCK --no-wait ARGS`.
    fn vsctl(&self, args: &[&str]) -> String {
        self.vsctl_on("db.sock", args)
    }

    fn vsctl_on(&self, sock: &str, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.dir.join(sock).display());
        let mut all = vec![db.as_str(), "--no-wait", "--timeout=10"];
        all.extend_from_slice(args);
        run("ovs-vsctl", &all)
    }

    /// Stops the server with SIGTERM (it removes its socket) and waits.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            run("kill", &["-TERM", &c.id().to_string()]);
            let t0 = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if t0.elapsed() > Duration::from_secs(5) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn config() -> Config {
    Config::new("Open_vSwitch")
        .monitor("Interface", &["name", "type", "options"])
        .monitor("Open_vSwitch", &["other_config"])
}

fn driver(remote: &str) -> Driver {
    let remote: Remote = remote.parse().unwrap();
    Driver::new(remote, config())
        .with_backoff(Duration::from_millis(50), Duration::from_millis(800))
}

/// Polls until an event matching `want` arrives; returns the events seen.
fn wait_for(d: &mut Driver, what: &str, want: impl Fn(&Event) -> bool) -> Vec<Event> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while t0.elapsed() < Duration::from_secs(15) {
        if let Some(ev) = d.poll_event(Duration::from_millis(100)) {
            let done = want(&ev);
            seen.push(ev);
            if done {
                return seen;
            }
        }
    }
    panic!("no {what} within 15 s; saw {seen:?}");
}

type Rows = BTreeMap<Uuid, BTreeMap<String, Datum>>;

/// What `ovs-vsctl --format=json list TABLE` says of the monitored
/// columns, read with the column types the client got from the server.
fn vsctl_rows(s: &Server, d: &Driver, table: &str) -> Rows {
    let types = d
        .cache()
        .table(table)
        .expect("a monitored table")
        .columns()
        .clone();
    let cols: Vec<&str> = types.keys().map(String::as_str).collect();
    let out = s.vsctl(&[
        "--format=json",
        &format!("--columns=_uuid,{}", cols.join(",")),
        "list",
        table,
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let headings: Vec<&str> = v["headings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    let mut rows = Rows::new();
    for r in v["data"].as_array().unwrap() {
        let mut uuid = None;
        let mut row = BTreeMap::new();
        for (h, x) in headings.iter().zip(r.as_array().unwrap()) {
            if *h == "_uuid" {
                uuid = Some(Uuid::parse(x[1].as_str().unwrap()).unwrap());
            } else {
                row.insert((*h).to_owned(), Datum::from_json(x, &types[*h]).unwrap());
            }
        }
        rows.insert(uuid.unwrap(), row);
    }
    rows
}

fn cache_rows(d: &Driver, table: &str) -> Rows {
    d.cache()
        .table(table)
        .unwrap()
        .rows()
        .map(|(u, r)| {
            (
                *u,
                r.columns()
                    .map(|(c, v)| (c.to_owned(), v.clone()))
                    .collect(),
            )
        })
        .collect()
}

/// Polls until the cache equals what ovs-vsctl lists for both tables.
fn assert_in_sync(s: &Server, d: &mut Driver, step: &str) {
    let want_if = vsctl_rows(s, d, "Interface");
    let want_ovs = vsctl_rows(s, d, "Open_vSwitch");
    let t0 = Instant::now();
    loop {
        if cache_rows(d, "Interface") == want_if && cache_rows(d, "Open_vSwitch") == want_ovs {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{step}: the cache never matched ovs-vsctl\ncache: {:?}\nvsctl: {want_if:?}",
            cache_rows(d, "Interface")
        );
        d.poll_event(Duration::from_millis(50));
    }
}

fn options_of(d: &Driver, name: &str) -> Option<BTreeMap<String, String>> {
    let t = d.cache().table("Interface")?;
    let (_, r) = t.rows().find(|(_, r)| r.str("name") == name)?;
    Some(
        r.string_map("options")
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn follows_ovs_vsctl_changes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::create(dir.path());
    let mut d = driver(&format!("unix:{}", s.sock().display()));
    wait_for(&mut d, "Connected", |e| matches!(e, Event::Connected));
    assert_in_sync(&s, &mut d, "initial");
    assert_eq!(d.cache().table("Open_vSwitch").unwrap().len(), 1);

    s.vsctl(&[
        "add-br",
        "br0",
        "--",
        "add-port",
        "br0",
        "vx1",
        "--",
        "set",
        "Interface",
        "vx1",
        "type=vxlan",
        "options:remote_ip=192.0.2.2",
        "options:psk=swordfish",
        "options:key=5",
    ]);
    assert_in_sync(&s, &mut d, "add vx1");
    assert_eq!(
        options_of(&d, "vx1").unwrap(),
        map(&[
            ("key", "5"),
            ("psk", "swordfish"),
            ("remote_ip", "192.0.2.2")
        ])
    );

    // A changed key: the update2 diff carries psk with its new value.
    s.vsctl(&["set", "Interface", "vx1", "options:psk=other"]);
    assert_in_sync(&s, &mut d, "change psk");
    assert_eq!(options_of(&d, "vx1").unwrap()["psk"], "other");

    // A removed key: the diff carries key=5, its current value.
    s.vsctl(&["remove", "Interface", "vx1", "options", "key"]);
    assert_in_sync(&s, &mut d, "remove key");
    assert_eq!(
        options_of(&d, "vx1").unwrap(),
        map(&[("psk", "other"), ("remote_ip", "192.0.2.2")])
    );

    // Changed, removed and added in one transaction.
    s.vsctl(&[
        "set",
        "Interface",
        "vx1",
        "options:remote_ip=192.0.2.3",
        "options:dst_port=4790",
        "--",
        "remove",
        "Interface",
        "vx1",
        "options",
        "psk",
    ]);
    assert_in_sync(&s, &mut d, "three keys at once");
    assert_eq!(
        options_of(&d, "vx1").unwrap(),
        map(&[("dst_port", "4790"), ("remote_ip", "192.0.2.3")])
    );

    s.vsctl(&[
        "set",
        "Open_vSwitch",
        ".",
        "other_config:certificate=/etc/c.pem",
        "other_config:private_key=/etc/k.pem",
    ]);
    assert_in_sync(&s, &mut d, "other_config");
    let ovs = d.cache().table("Open_vSwitch").unwrap();
    let oc = ovs.rows().next().unwrap().1.string_map("other_config");
    assert_eq!(oc["certificate"], "/etc/c.pem");

    s.vsctl(&["del-port", "br0", "vx1"]);
    assert_in_sync(&s, &mut d, "delete vx1");
    assert!(options_of(&d, "vx1").is_none());
    assert!(options_of(&d, "br0").is_some());
    let st = d.client().stats();
    assert_eq!(st.resets, 0, "{st:?}");
    assert!(st.updates >= 6, "{st:?}");
}

#[test]
fn keeps_the_cache_while_the_server_is_away_and_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::create(dir.path());
    s.vsctl(&[
        "add-br",
        "br0",
        "--",
        "add-port",
        "br0",
        "vx1",
        "--",
        "set",
        "Interface",
        "vx1",
        "type=vxlan",
        "options:remote_ip=192.0.2.2",
        "options:psk=one",
        "--",
        "add-port",
        "br0",
        "vx2",
        "--",
        "set",
        "Interface",
        "vx2",
        "type=gre",
        "options:remote_ip=192.0.2.3",
        "options:psk=two",
    ]);
    let mut d = driver(&format!("unix:{}", s.sock().display()));
    wait_for(&mut d, "Connected", |e| matches!(e, Event::Connected));
    assert_in_sync(&s, &mut d, "before");
    let before = d.cache().clone();

    s.stop();
    let seen = wait_for(&mut d, "Disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    });
    assert!(
        matches!(
            seen.last(),
            Some(Event::Disconnected {
                reason: Error::Closed | Error::Io { .. }
            })
        ),
        "{seen:?}"
    );
    assert_eq!(d.cache(), &before, "the cache is kept");

    // While the client retries on db.sock, another server run on another
    // socket changes the database: vx2 deleted, vx1's psk changed.
    let mut other = Server::start(dir.path(), "other.sock");
    other.vsctl_on(
        "other.sock",
        &[
            "del-port",
            "br0",
            "vx2",
            "--",
            "set",
            "Interface",
            "vx1",
            "options:psk=new",
        ],
    );
    other.stop();
    for _ in 0..10 {
        assert!(d.poll_event(Duration::from_millis(50)).is_none());
    }
    assert_eq!(d.cache(), &before, "still the last state");
    assert!(d.connect_failures() > 0);

    let s = Server::start(dir.path(), "db.sock");
    let seen = wait_for(&mut d, "Changed", |e| matches!(e, Event::Changed));
    assert!(
        matches!(seen[..], [Event::Connected, Event::Changed]),
        "{seen:?}"
    );
    assert_in_sync(&s, &mut d, "after the resync");
    assert!(options_of(&d, "vx2").is_none());
    assert_eq!(options_of(&d, "vx1").unwrap()["psk"], "new");
    assert!(d.cache().generation() > before.generation());
    assert_eq!(d.client().stats().resyncs, 2);
}

/// Reads one request from a fake server's client; returns its method and
/// id.
fn read_request(conn: &mut impl Read, dec: &mut Decoder) -> (String, Value) {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(v) = dec.next_message() {
            return match Message::from_value(v).unwrap() {
                Message::Request { method, id, .. } => (method, id),
                other => panic!("not a request: {other:?}"),
            };
        }
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the client closed");
        dec.feed(&buf[..n]).unwrap();
    }
}

fn send(conn: &mut impl Write, v: Value) {
    let mut out = Vec::new();
    encode(&v, &mut out);
    conn.write_all(&out).unwrap();
}

#[test]
fn garbage_from_a_fake_server_is_refused_without_a_crash() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(SCHEMA).expect("the vswitch schema"))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        // Not JSON; a schema with an unknown type, answering the
        // request's id; bytes that are not UTF-8; a message over the limit.
        let bad_schema = |id: &Value| {
            let mut out = Vec::new();
            encode(
                &json!({"id": id, "error": null, "result": {"name": "Open_vSwitch",
                    "tables": {"Interface": {"columns": {"name": {"type": "float"}}}}}}),
                &mut out,
            );
            out
        };
        for i in 0..4 {
            let (mut c, _) = listener.accept().unwrap();
            let mut dec = Decoder::new(1 << 20);
            let (method, id) = read_request(&mut c, &mut dec);
            assert_eq!(method, "get_schema");
            let g = match i {
                0 => b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
                1 => bad_schema(&id),
                2 => vec![0xff, 0xfe, 0x00, 0x7b],
                _ => vec![b'['; 70_000],
            };
            // The client may close while this is being written.
            let _ = c.write_all(&g);
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
        }
        // Then a well-behaved conversation.
        let (mut c, _) = listener.accept().unwrap();
        let mut dec = Decoder::new(1 << 20);
        let (_, id) = read_request(&mut c, &mut dec);
        send(&mut c, json!({"id": id, "result": schema, "error": null}));
        let (method, id) = read_request(&mut c, &mut dec);
        assert_eq!(method, "monitor_cond");
        send(
            &mut c,
            json!({"id": id, "error": null, "result": {"Interface": {"532c2c64-ee67-4308-ad2d-a939ebd1992f": {"initial": {"name": "vx1", "type": "vxlan"}}}}}),
        );
        send(
            &mut c,
            json!({"id": "echo", "method": "echo", "params": ["ping"]}),
        );
        let mut buf = [0u8; 4096];
        let n = c.read(&mut buf).unwrap();
        dec.feed(&buf[..n]).unwrap();
        let reply = Message::from_value(dec.next_message().unwrap()).unwrap();
        assert_eq!(
            reply,
            Message::Response {
                id: json!("echo"),
                result: Ok(json!(["ping"]))
            }
        );
        // Garbage once synced.
        c.write_all(b"}{").unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    });
    let mut config = config();
    config.max_message = 64 << 10;
    let mut d = Driver::new(format!("unix:{}", path.display()).parse().unwrap(), config)
        .with_backoff(Duration::from_millis(20), Duration::from_millis(100));
    let t0 = Instant::now();
    wait_for(&mut d, "Connected", |e| matches!(e, Event::Connected));
    // Each fault ends its connection at once (no probe timeout).
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let st = d.client().stats();
    assert_eq!(st.resets, 4, "{st:?}");
    assert_eq!(st.connections, 5);
    let t = d.cache().table("Interface").unwrap();
    assert_eq!(t.rows().next().unwrap().1.str("type"), "vxlan");
    let seen = wait_for(&mut d, "Disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    });
    assert!(
        matches!(
            seen[..],
            [
                Event::Changed,
                Event::Disconnected {
                    reason: Error::Codec(tunsec_ovsdb::CodecError::NotAnObject { byte: b'}', .. })
                }
            ]
        ),
        "{seen:?}"
    );
    assert_eq!(
        d.cache().table("Interface").unwrap().len(),
        1,
        "the cache is kept"
    );
    server.join().expect("the fake server's checks");
}

#[test]
fn tcp_remote() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(SCHEMA).expect("the vswitch schema"))
            .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut dec = Decoder::new(1 << 20);
        let (_, id) = read_request(&mut c, &mut dec);
        send(&mut c, json!({"id": id, "result": schema, "error": null}));
        let (_, id) = read_request(&mut c, &mut dec);
        // A server without monitor_cond: the client falls back.
        send(&mut c, json!({"id": id, "error": "unknown method"}));
        let (method, id) = read_request(&mut c, &mut dec);
        assert_eq!(method, "monitor");
        send(
            &mut c,
            json!({"id": id, "error": null, "result": {"Open_vSwitch": {"5343ffe7-7b38-44be-9c44-87a45fd284e8": {"new": {"other_config": ["map", [["ca_cert", "/ca.pem"]]]}}}}}),
        );
        c
    });
    let mut d = driver(&format!("tcp:127.0.0.1:{port}"));
    let seen = wait_for(&mut d, "Changed", |e| matches!(e, Event::Changed));
    assert!(
        matches!(seen[..], [Event::Connected, Event::Changed]),
        "{seen:?}"
    );
    let ovs = d.cache().table("Open_vSwitch").unwrap();
    assert_eq!(
        ovs.rows().next().unwrap().1.string_map("other_config")["ca_cert"],
        "/ca.pem"
    );
    assert_eq!(d.client().stats().fallbacks, 1);
    let _conn = server.join().unwrap();
}
