use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::datum::Atom;
use crate::schema::ColumnType;

const VX1: &str = "532c2c64-ee67-4308-ad2d-a939ebd1992f";
const BR0: &str = "9115ea55-0e51-4e49-a167-b981e2bfda07";
const OVS: &str = "5343ffe7-7b38-44be-9c44-87a45fd284e8";

/// The monitored part of the vswitch schema: what tunsec reads, plus
/// `ofport` (an optional integer) and `cfm_fault` (an optional boolean).
pub(crate) fn tables() -> BTreeMap<String, TableSchema> {
    let ty = |v: Value| ColumnType::from_json(&v).unwrap();
    let smap = json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"});
    BTreeMap::from([
        (
            "Interface".to_owned(),
            TableSchema::from([
                ("name".to_owned(), ty(json!("string"))),
                ("type".to_owned(), ty(json!("string"))),
                ("options".to_owned(), ty(smap.clone())),
                (
                    "ofport".to_owned(),
                    ty(json!({"key": "integer", "min": 0, "max": 1})),
                ),
                (
                    "cfm_fault".to_owned(),
                    ty(json!({"key": "boolean", "min": 0, "max": 1})),
                ),
            ]),
        ),
        (
            "Open_vSwitch".to_owned(),
            TableSchema::from([("other_config".to_owned(), ty(smap))]),
        ),
    ])
}

fn uuid(s: &str) -> Uuid {
    Uuid::parse(s).unwrap()
}

/// The monitor_cond reply ovsdb-server 3.1 sent (refs/ovs/ovsdb_wire.py).
fn initial2() -> Value {
    json!({
        "Interface": {
            VX1: {"initial": {"name": "vx1", "options": ["map", [["key", "5"], ["psk", "abc"], ["remote_ip", "1.2.3.4"]]], "type": "vxlan"}},
            BR0: {"initial": {"name": "br0", "type": "internal"}},
        },
        "Open_vSwitch": {OVS: {"initial": {}}},
    })
}

fn synced() -> Cache {
    let mut c = Cache::new(tables());
    assert!(c.resync(Notation::Update2, &initial2()).unwrap());
    c
}

#[test]
fn initial_rows_fill_left_out_columns_with_defaults() {
    let c = synced();
    let ifaces = c.table("Interface").unwrap();
    assert_eq!(ifaces.len(), 2);
    let br0 = ifaces.get(&uuid(BR0)).unwrap();
    assert_eq!(br0.str("name"), "br0");
    assert!(br0.string_map("options").is_empty());
    assert_eq!(br0.get("ofport"), Some(&Datum::Set(BTreeSet::new())));
    assert_eq!(br0.integer("ofport"), None);
    assert_eq!(br0.get("nonexistent"), None);
    let vx1 = ifaces.get(&uuid(VX1)).unwrap();
    assert_eq!(vx1.string_map("options")["remote_ip"], "1.2.3.4");
    assert_eq!(vx1.str("type"), "vxlan");
    let ovs = c.table("Open_vSwitch").unwrap().get(&uuid(OVS)).unwrap();
    assert!(ovs.string_map("other_config").is_empty());
    assert_eq!(c.generation(), 1);
}

#[test]
fn update2_sequence_as_ovsdb_server_sends_it() {
    let mut c = synced();
    // `set Interface vx1 options:psk=def options:remote_ip=1.2.3.4 --
    // remove Interface vx1 options key`
    let a = c
        .apply(
            Notation::Update2,
            &json!({"Interface": {VX1: {"modify": {"options": ["map", [["key", "5"], ["psk", "def"]]]}}}}),
        )
        .unwrap();
    assert_eq!(
        a,
        Applied {
            rows: 1,
            ignored_tables: 0
        }
    );
    let opts = |c: &Cache| -> BTreeMap<String, String> {
        c.table("Interface")
            .unwrap()
            .get(&uuid(VX1))
            .unwrap()
            .string_map("options")
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    assert_eq!(
        opts(&c),
        BTreeMap::from([
            ("psk".into(), "def".into()),
            ("remote_ip".into(), "1.2.3.4".into())
        ])
    );
    // `set Interface vx1 ofport=3`, then 4, then cleared.
    for (diff, want) in [
        (json!(3), Some(3)),
        (json!(4), Some(4)),
        (json!(["set", []]), None),
    ] {
        c.apply(
            Notation::Update2,
            &json!({"Interface": {VX1: {"modify": {"ofport": diff}}}}),
        )
        .unwrap();
        assert_eq!(
            c.table("Interface")
                .unwrap()
                .get(&uuid(VX1))
                .unwrap()
                .integer("ofport"),
            want
        );
    }
    // A scalar column takes the new value.
    c.apply(
        Notation::Update2,
        &json!({"Interface": {VX1: {"modify": {"type": "gre"}}}}),
    )
    .unwrap();
    assert_eq!(
        c.table("Interface")
            .unwrap()
            .get(&uuid(VX1))
            .unwrap()
            .str("type"),
        "gre"
    );
    // Insert, other_config, delete.
    let vx2 = "32d7074c-cbe3-4b5a-9d65-876f6031fc14";
    c.apply(
        Notation::Update2,
        &json!({"Interface": {vx2: {"insert": {"name": "vx2", "options": ["map", [["remote_ip", "9.9.9.9"]]], "type": "gre"}}}}),
    )
    .unwrap();
    c.apply(
        Notation::Update2,
        &json!({"Open_vSwitch": {OVS: {"modify": {"other_config": ["map", [["a", "b"]]]}}}}),
    )
    .unwrap();
    assert_eq!(
        c.table("Open_vSwitch")
            .unwrap()
            .get(&uuid(OVS))
            .unwrap()
            .string_map("other_config")["a"],
        "b"
    );
    let g = c.generation();
    c.apply(
        Notation::Update2,
        &json!({"Interface": {VX1: {"delete": null}}}),
    )
    .unwrap();
    assert_eq!(c.generation(), g + 1);
    let names: Vec<&str> = c
        .table("Interface")
        .unwrap()
        .rows()
        .map(|(_, r)| r.str("name"))
        .collect();
    assert_eq!(names, ["vx2", "br0"]);
}

#[test]
fn plain_monitor_update_with_old_and_new() {
    // The monitor reply and update ovsdb-server 3.1 sent.
    let vx2 = "32d7074c-cbe3-4b5a-9d65-876f6031fc14";
    let mut c = Cache::new(tables());
    c.resync(
        Notation::Update,
        &json!({
            "Interface": {
                BR0: {"new": {"name": "br0", "cfm_fault": ["set", []], "ofport": ["set", []], "options": ["map", []], "type": "internal"}},
                vx2: {"new": {"name": "vx2", "cfm_fault": ["set", []], "ofport": ["set", []], "options": ["map", [["remote_ip", "9.9.9.9"]]], "type": "gre"}},
            },
            "Open_vSwitch": {OVS: {"new": {"other_config": ["map", [["a", "b"]]]}}},
        }),
    )
    .unwrap();
    c.apply(
        Notation::Update,
        &json!({"Interface": {vx2: {
            "new": {"name": "vx2", "cfm_fault": ["set", []], "ofport": ["set", []], "options": ["map", [["remote_ip", "9.9.9.9"], ["x", "y"]]], "type": "gre"},
            "old": {"options": ["map", [["remote_ip", "9.9.9.9"]]]},
        }}}),
    )
    .unwrap();
    let row = c.table("Interface").unwrap().get(&uuid(vx2)).unwrap();
    assert_eq!(row.string_map("options")["x"], "y");
    c.apply(
        Notation::Update,
        &json!({"Interface": {vx2: {"old": {"name": "vx2"}}}}),
    )
    .unwrap();
    assert!(c.table("Interface").unwrap().get(&uuid(vx2)).is_none());
}

#[test]
fn updates_that_do_not_fit_change_nothing() {
    let base = synced();
    let unknown = "00000000-0000-0000-0000-000000000001";
    for bad in [
        json!({"Interface": {unknown: {"modify": {"name": "x"}}}}),
        json!({"Interface": {unknown: {"delete": null}}}),
        json!({"Interface": {VX1: {"insert": {"name": "again"}}}}),
        json!({"Interface": {VX1: {"modify": {"name": 5}}}}),
        json!({"Interface": {VX1: {"modify": {"options": ["set", []]}}}}),
        json!({"Interface": {VX1: {"modify": {}, "delete": null}}}),
        json!({"Interface": {VX1: {"frobnicate": {}}}}),
        json!({"Interface": {"not-a-uuid": {"delete": null}}}),
        json!({"Interface": [1]}),
        json!([]),
        // The first row update is good, the second is not: neither applies.
        json!({"Interface": {BR0: {"delete": null}, VX1: {"modify": {"ofport": "x"}}}}),
    ] {
        let mut c = base.clone();
        let e = c.apply(Notation::Update2, &bad);
        assert!(e.is_err(), "{bad}");
        assert_eq!(c, base, "{bad}");
        assert_eq!(c.generation(), base.generation());
    }
    let e = base.clone().apply(
        Notation::Update2,
        &json!({"Interface": {VX1: {"modify": {"name": 5}}}}),
    );
    let msg = e.unwrap_err().0;
    assert!(
        msg.contains("Interface") && msg.contains(VX1) && msg.contains("column name"),
        "{msg}"
    );
    // Plain monitor misfits.
    for bad in [
        json!({"Interface": {VX1: {"new": {"name": "again"}}}}),
        json!({"Interface": {unknown: {"old": {}}}}),
        json!({"Interface": {VX1: {}}}),
    ] {
        let mut c = base.clone();
        assert!(c.apply(Notation::Update, &bad).is_err(), "{bad}");
        assert_eq!(c, base);
    }
    // A bad resync keeps the old rows too.
    let mut c = base.clone();
    assert!(
        c.resync(
            Notation::Update2,
            &json!({"Interface": {VX1: {"modify": {}}}})
        )
        .is_err()
    );
    assert_eq!(c, base);
}

#[test]
fn unmonitored_tables_and_columns_are_skipped() {
    let mut c = synced();
    let a = c
        .apply(
            Notation::Update2,
            &json!({"Bridge": {BR0: {"insert": {"name": "br0"}}}, "Interface": {BR0: {"modify": {"mtu": 1500}}}}),
        )
        .unwrap();
    assert_eq!(
        a,
        Applied {
            rows: 1,
            ignored_tables: 1
        }
    );
    assert!(c.table("Bridge").is_none());
    assert!(
        c.table("Interface")
            .unwrap()
            .get(&uuid(BR0))
            .unwrap()
            .get("mtu")
            .is_none()
    );
}

#[test]
fn a_resync_to_the_same_state_is_no_change() {
    let mut c = synced();
    let g = c.generation();
    assert!(!c.resync(Notation::Update2, &initial2()).unwrap());
    assert_eq!(c.generation(), g);
    // A row gone while we were away.
    let mut less = initial2();
    less["Interface"].as_object_mut().unwrap().remove(VX1);
    assert!(c.resync(Notation::Update2, &less).unwrap());
    assert_eq!(c.table("Interface").unwrap().len(), 1);
    assert_eq!(c.generation(), g + 1);
}

/// Arbitrary JSON, biased towards the shapes of table updates.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![
            Just(VX1),
            Just(BR0),
            Just(OVS),
            Just("Interface"),
            Just("Open_vSwitch"),
            Just("name"),
            Just("options"),
            Just("ofport"),
            Just("cfm_fault"),
            Just("initial"),
            Just("insert"),
            Just("modify"),
            Just("delete"),
            Just("old"),
            Just("new"),
            Just("map"),
            Just("set"),
            Just("uuid"),
            Just(""),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 4, |inner| {
        let key = prop_oneof![
            Just(VX1.to_owned()),
            Just(BR0.to_owned()),
            Just("Interface".to_owned()),
            Just("Open_vSwitch".to_owned()),
            Just("name".to_owned()),
            Just("options".to_owned()),
            Just("ofport".to_owned()),
            Just("cfm_fault".to_owned()),
            Just("initial".to_owned()),
            Just("insert".to_owned()),
            Just("modify".to_owned()),
            Just("delete".to_owned()),
            Just("old".to_owned()),
            Just("new".to_owned()),
            ".{0,4}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key, inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The model of one Interface row that the model test drives.
#[derive(Debug, Clone, PartialEq)]
struct ModelRow {
    name: String,
    options: BTreeMap<String, String>,
    ofport: Option<i64>,
}

fn model_row() -> impl Strategy<Value = ModelRow> {
    (
        prop_oneof![Just(String::new()), "[a-c]{1,2}"],
        proptest::collection::btree_map("[a-d]", "[xy]", 0..4),
        proptest::option::of(0i64..3),
    )
        .prop_map(|(name, options, ofport)| ModelRow {
            name,
            options,
            ofport,
        })
}

impl ModelRow {
    fn datums(&self) -> BTreeMap<&'static str, Datum> {
        let s = |x: &str| Atom::String(x.to_owned());
        BTreeMap::from([
            ("name", Datum::Set(BTreeSet::from([s(&self.name)]))),
            (
                "options",
                Datum::Map(self.options.iter().map(|(k, v)| (s(k), s(v))).collect()),
            ),
            (
                "ofport",
                Datum::Set(self.ofport.map(Atom::Integer).into_iter().collect()),
            ),
        ])
    }

    /// An insert as ovsdb-server writes it: default columns left out.
    fn insert(&self) -> Value {
        let t = tables();
        let cols = &t["Interface"];
        let mut row = Map::new();
        for (c, d) in self.datums() {
            if d != Datum::default_for(&cols[c]) {
                row.insert(c.to_owned(), d.to_json());
            }
        }
        json!({"insert": row})
    }

    /// A modify from `old` as ovsdb-server writes it: changed columns
    /// only, each as its diff.
    fn modify(old: &Self, new: &Self) -> Value {
        let t = tables();
        let cols = &t["Interface"];
        let (a, b) = (old.datums(), new.datums());
        let mut row = Map::new();
        for (c, d) in &b {
            if a[c] != *d {
                row.insert((*c).to_owned(), Datum::diff(&a[c], d, &cols[*c]).to_json());
            }
        }
        json!({"modify": row})
    }
}

proptest! {
    /// Any JSON into the applier, in either notation, as an update or a
    /// resync: no panic, and an error leaves the cache as it was.
    #[test]
    fn any_json_into_the_applier_never_panics(v in any_json(), update2 in any::<bool>(), resync in any::<bool>()) {
        let notation = if update2 { Notation::Update2 } else { Notation::Update };
        let base = synced();
        let mut c = base.clone();
        let r = if resync { c.resync(notation, &v).map(|_| ()) } else { c.apply(notation, &v).map(|_| ()) };
        if r.is_err() {
            prop_assert_eq!(&c, &base);
            prop_assert_eq!(c.generation(), base.generation());
        }
    }

    /// A database that goes through random inserts, modifies and deletes,
    /// sent as update2 the way ovsdb-server builds them: the cache always
    /// equals the database.
    #[test]
    fn update2_follows_the_database(steps in proptest::collection::vec((0u8..4, 0usize..3, model_row()), 1..30)) {
        let ids = [VX1, BR0, "00000000-0000-0000-0000-0000000000aa"];
        let mut db: BTreeMap<usize, ModelRow> = BTreeMap::new();
        let mut c = Cache::new(tables());
        c.resync(Notation::Update2, &json!({})).unwrap();
        for (op, i, row) in steps {
            let upd = match (op, db.get(&i)) {
                (0..=1, None) => { let u = row.insert(); db.insert(i, row); u }
                (0..=2, Some(old)) => { let u = ModelRow::modify(old, &row); db.insert(i, row); u }
                (_, Some(_)) => { db.remove(&i); json!({"delete": null}) }
                _ => continue,
            };
            c.apply(Notation::Update2, &json!({"Interface": {ids[i]: upd}})).unwrap();
            let t = c.table("Interface").unwrap();
            prop_assert_eq!(t.len(), db.len());
            for (j, m) in &db {
                let r = t.get(&uuid(ids[*j])).unwrap();
                prop_assert_eq!(r.str("name"), m.name.as_str());
                let opts: BTreeMap<String, String> = r.string_map("options").into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
                prop_assert_eq!(&opts, &m.options);
                prop_assert_eq!(r.integer("ofport"), m.ofport);
            }
        }
    }
}
