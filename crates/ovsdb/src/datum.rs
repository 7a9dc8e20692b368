//! OVSDB values: atoms, sets and maps (RFC 7047 §3.1 types, §5.1
//! notation), read from and written to JSON against a column type.
//!
//! A datum is always a set or a map, as in OVSDB itself: a scalar column
//! holds a set of exactly one atom, an optional one a set of zero or one.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Value, json};

use crate::error::DataError;
use crate::schema::{AtomicType, ColumnType};

/// A row's UUID (RFC 7047 §3.1 `<uuid>`), kept as 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(pub u128);

impl Uuid {
    /// Parses the 36-character form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`
    /// (hex digits in either case), as RFC 7047 §3.1 defines it.
    pub fn parse(s: &str) -> Result<Self, DataError> {
        let bad = || DataError(format!("{s:?} is not a UUID (8-4-4-4-12 hex digits)"));
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(bad());
        }
        let mut v: u128 = 0;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(bad());
                }
                continue;
            }
            let d = (c as char).to_digit(16).ok_or_else(bad)?;
            v = (v << 4) | u128::from(d);
        }
        Ok(Self(v))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

// The atomic type is the schema's (crate::schema); its default value is an
// atom, so it is made here.
impl AtomicType {
    /// The default value of the type (RFC 7047 §5.2.1 "insert": 0, 0.0,
    /// false, "", and the all-zero UUID).
    pub fn default_atom(self) -> Atom {
        match self {
            Self::Integer => Atom::Integer(0),
            Self::Real => Atom::Real(0.0),
            Self::Boolean => Atom::Boolean(false),
            Self::String => Atom::String(String::new()),
            Self::Uuid => Atom::Uuid(Uuid(0)),
        }
    }
}

/// One atom (RFC 7047 §5.1 `<atom>`).
///
/// Atoms are ordered and compared like OVSDB does: by type first, then by
/// value; reals with `f64::total_cmp`, so the order is total.
#[derive(Debug, Clone)]
pub enum Atom {
    /// An integer.
    Integer(i64),
    /// A real.
    Real(f64),
    /// A boolean.
    Boolean(bool),
    /// A string.
    String(String),
    /// `["uuid", "..."]`.
    Uuid(Uuid),
    /// `["named-uuid", "..."]`: a row inserted earlier in the same
    /// transaction. Only requests carry these; the server never sends one.
    NamedUuid(String),
}

impl Atom {
    fn rank(&self) -> u8 {
        match self {
            Self::Integer(_) => 0,
            Self::Real(_) => 1,
            Self::Boolean(_) => 2,
            Self::String(_) => 3,
            Self::Uuid(_) => 4,
            Self::NamedUuid(_) => 5,
        }
    }

    /// Reads an atom of type `ty` (RFC 7047 §5.1). An integer is accepted
    /// where a real is expected; nothing else is converted.
    pub fn from_json(v: &Value, ty: AtomicType) -> Result<Self, DataError> {
        let atom = match ty {
            AtomicType::Integer => v.as_i64().map(Self::Integer),
            AtomicType::Real => v.as_f64().map(Self::Real),
            AtomicType::Boolean => v.as_bool().map(Self::Boolean),
            AtomicType::String => v.as_str().map(|s| Self::String(s.to_owned())),
            AtomicType::Uuid => match pair(v) {
                Some(("uuid", Value::String(s))) => Some(Self::Uuid(Uuid::parse(s)?)),
                Some(("named-uuid", Value::String(s))) => Some(Self::NamedUuid(s.clone())),
                _ => None,
            },
        };
        atom.ok_or_else(|| DataError::expected(&format!("an atom of type {ty:?}"), v))
    }

    /// The atom in RFC 7047 §5.1 notation.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Integer(i) => json!(i),
            // JSON has no NaN or infinity; OVSDB refuses them too.
            Self::Real(r) => serde_json::Number::from_f64(*r).map_or(Value::Null, Value::Number),
            Self::Boolean(b) => json!(b),
            Self::String(s) => json!(s),
            Self::Uuid(u) => json!(["uuid", u.to_string()]),
            Self::NamedUuid(n) => json!(["named-uuid", n]),
        }
    }

    /// The string, if this is a string atom.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
}

impl PartialEq for Atom {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Atom {}

impl PartialOrd for Atom {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Atom {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Integer(a), Self::Integer(b)) => a.cmp(b),
            (Self::Real(a), Self::Real(b)) => a.total_cmp(b),
            (Self::Boolean(a), Self::Boolean(b)) => a.cmp(b),
            (Self::String(a), Self::String(b)) => a.cmp(b),
            (Self::Uuid(a), Self::Uuid(b)) => a.cmp(b),
            (Self::NamedUuid(a), Self::NamedUuid(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// A column's value (RFC 7047 §5.1 `<value>`): a set of atoms, or a map
/// from atoms to atoms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// A set; a scalar is a set of one.
    Set(BTreeSet<Atom>),
    /// A map.
    Map(BTreeMap<Atom, Atom>),
}

/// `["tag", x]` as `(tag, x)`.
fn pair(v: &Value) -> Option<(&str, &Value)> {
    match v.as_array()?.as_slice() {
        [Value::String(tag), x] => Some((tag, x)),
        _ => None,
    }
}

impl Datum {
    /// The value a column holds when nothing was written to it: the
    /// default atom for a scalar, an empty set or map otherwise. `initial`
    /// and `insert` rows leave such columns out (ovsdb-server(7) §4.1.14).
    pub fn default_for(ty: &ColumnType) -> Self {
        if ty.value.is_some() {
            Self::Map(BTreeMap::new())
        } else if ty.is_scalar() {
            Self::Set(BTreeSet::from([ty.key.default_atom()]))
        } else {
            Self::Set(BTreeSet::new())
        }
    }

    /// Reads a value of column type `ty` (RFC 7047 §5.1): `["map",
    /// [[k, v], ...]]` for a map column; `["set", [...]]` or a bare atom
    /// (a set of one) for any other. The number of elements is not checked
    /// against the type's min and max: an update2 diff may hold more
    /// elements than the column.
    pub fn from_json(v: &Value, ty: &ColumnType) -> Result<Self, DataError> {
        if let Some(value_type) = ty.value {
            let Some(("map", Value::Array(pairs))) = pair(v) else {
                return Err(DataError::expected("[\"map\", [...]]", v));
            };
            let mut map = BTreeMap::new();
            for p in pairs {
                let [k, val] = p.as_array().map(Vec::as_slice).unwrap_or_default() else {
                    return Err(DataError::expected("a [key, value] pair", p));
                };
                let k = Atom::from_json(k, ty.key)?;
                let val = Atom::from_json(val, value_type)?;
                if map.insert(k, val).is_some() {
                    return Err(DataError::expected("a map without duplicate keys", v));
                }
            }
            return Ok(Self::Map(map));
        }
        match pair(v) {
            Some(("set", Value::Array(elems))) => {
                let mut set = BTreeSet::new();
                for e in elems {
                    if !set.insert(Atom::from_json(e, ty.key)?) {
                        return Err(DataError::expected("a set without duplicates", v));
                    }
                }
                Ok(Self::Set(set))
            }
            _ => Ok(Self::Set(BTreeSet::from([Atom::from_json(v, ty.key)?]))),
        }
    }

    /// The value in RFC 7047 §5.1 notation: a set of one as its bare atom,
    /// as ovsdb-server sends it.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Set(s) if s.len() == 1 => s.iter().next().map_or(Value::Null, Atom::to_json),
            Self::Set(s) => json!(["set", s.iter().map(Atom::to_json).collect::<Vec<_>>()]),
            Self::Map(m) => json!([
                "map",
                m.iter()
                    .map(|(k, v)| json!([k.to_json(), v.to_json()]))
                    .collect::<Vec<_>>()
            ]),
        }
    }

    /// Applies an update2 `modify` difference to this value in place
    /// (ovsdb-server(7) §4.1.14, as ovsdb-server computes it): a column
    /// that holds at most one element takes `diff` as its new value; for a
    /// larger set, an element of `diff` already present is removed and one
    /// absent is added; for a larger map, a key absent is added, a key with
    /// another value is replaced, and a key with the same value is removed.
    pub fn apply_diff(&mut self, diff: Self, ty: &ColumnType) -> Result<(), DataError> {
        if !ty.is_composite() {
            *self = diff;
            return Ok(());
        }
        match (self, diff) {
            (Self::Set(cur), Self::Set(d)) => {
                for a in d {
                    if !cur.remove(&a) {
                        cur.insert(a);
                    }
                }
            }
            (Self::Map(cur), Self::Map(d)) => {
                for (k, v) in d {
                    match cur.get(&k) {
                        Some(old) if *old == v => {
                            cur.remove(&k);
                        }
                        _ => {
                            cur.insert(k, v);
                        }
                    }
                }
            }
            _ => {
                return Err(DataError(
                    "a set diff for a map column or the reverse".into(),
                ));
            }
        }
        Ok(())
    }

    /// The difference that [`Datum::apply_diff`] turns `old` into `new`
    /// with, computed the way ovsdb-server does. For tests and for callers
    /// that build update2 messages.
    pub fn diff(old: &Self, new: &Self, ty: &ColumnType) -> Self {
        if !ty.is_composite() {
            return new.clone();
        }
        match (old, new) {
            (Self::Set(a), Self::Set(b)) => Self::Set(a.symmetric_difference(b).cloned().collect()),
            (Self::Map(a), Self::Map(b)) => {
                let mut d = BTreeMap::new();
                for (k, v) in a {
                    if !b.contains_key(k) {
                        d.insert(k.clone(), v.clone());
                    }
                }
                for (k, v) in b {
                    if a.get(k) != Some(v) {
                        d.insert(k.clone(), v.clone());
                    }
                }
                Self::Map(d)
            }
            _ => new.clone(),
        }
    }

    /// The single atom of a set of one.
    pub fn as_atom(&self) -> Option<&Atom> {
        match self {
            Self::Set(s) if s.len() == 1 => s.iter().next(),
            _ => None,
        }
    }

    /// The string of a set of one string.
    pub fn as_str(&self) -> Option<&str> {
        self.as_atom().and_then(Atom::as_str)
    }

    /// The integer of a set of one integer.
    pub fn as_integer(&self) -> Option<i64> {
        match self.as_atom() {
            Some(Atom::Integer(i)) => Some(*i),
            _ => None,
        }
    }

    /// The boolean of a set of one boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self.as_atom() {
            Some(Atom::Boolean(b)) => Some(*b),
            _ => None,
        }
    }

    /// A string-to-string map (such as `options` or `other_config`) as
    /// borrowed pairs; `None` for a set or a map of other types.
    pub fn as_string_map(&self) -> Option<BTreeMap<&str, &str>> {
        let Self::Map(m) = self else {
            return None;
        };
        m.iter()
            .map(|(k, v)| Some((k.as_str()?, v.as_str()?)))
            .collect()
    }

    /// The strings of a set of strings; `None` for a map or other atoms.
    pub fn as_string_set(&self) -> Option<BTreeSet<&str>> {
        let Self::Set(s) = self else {
            return None;
        };
        s.iter().map(Atom::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnType;

    fn ty(v: Value) -> ColumnType {
        ColumnType::from_json(&v).unwrap()
    }

    fn string_map() -> ColumnType {
        ty(json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"}))
    }

    fn smap(pairs: &[(&str, &str)]) -> Datum {
        Datum::Map(
            pairs
                .iter()
                .map(|(k, v)| (Atom::String((*k).into()), Atom::String((*v).into())))
                .collect(),
        )
    }

    #[test]
    fn uuid_round_trip_and_refusals() {
        let s = "532c2c64-ee67-4308-ad2d-a939ebd1992f";
        let u = Uuid::parse(s).unwrap();
        assert_eq!(u.to_string(), s);
        assert_eq!(Uuid::parse(&s.to_uppercase()).unwrap(), u);
        for bad in [
            "",
            "532c2c64ee67-4308-ad2d-a939ebd1992f0",
            "532c2c64-ee67-4308-ad2d-a939ebd1992g",
            "532c2c64-ee67-4308-ad2d-a939ebd1992",
            "532c2c6é-ee67-4308-ad2d-a939ebd199",
        ] {
            assert!(Uuid::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_as_ovsdb_server_sends_them() {
        // Captured from ovsdb-server 3.1 (refs/ovs/ovsdb_wire.py).
        let m = Datum::from_json(
            &json!([
                "map",
                [["key", "5"], ["psk", "abc"], ["remote_ip", "1.2.3.4"]]
            ]),
            &string_map(),
        )
        .unwrap();
        let got = m.as_string_map().unwrap();
        assert_eq!(got["psk"], "abc");
        assert_eq!(got.len(), 3);

        let ofport = ty(json!({"key": "integer", "min": 0, "max": 1}));
        let one = Datum::from_json(&json!(3), &ofport).unwrap();
        assert_eq!(one.as_integer(), Some(3));
        assert_eq!(one.to_json(), json!(3));
        let none = Datum::from_json(&json!(["set", []]), &ofport).unwrap();
        assert_eq!(none, Datum::Set(BTreeSet::new()));
        assert_eq!(none.to_json(), json!(["set", []]));

        let refs =
            ty(json!({"key": {"type": "uuid", "refTable": "Port"}, "min": 0, "max": "unlimited"}));
        let d = Datum::from_json(
            &json!([
                "set",
                [
                    ["uuid", "532c2c64-ee67-4308-ad2d-a939ebd1992f"],
                    ["uuid", "9115ea55-0e51-4e49-a167-b981e2bfda07"]
                ]
            ]),
            &refs,
        )
        .unwrap();
        assert_eq!(Datum::from_json(&d.to_json(), &refs).unwrap(), d);
        let named = Datum::from_json(&json!(["named-uuid", "row1"]), &refs).unwrap();
        assert_eq!(named.as_atom(), Some(&Atom::NamedUuid("row1".into())));

        let real = ty(json!("real"));
        assert_eq!(
            Datum::from_json(&json!(2), &real).unwrap().as_atom(),
            Some(&Atom::Real(2.0))
        );
    }

    #[test]
    fn wrong_types_are_errors_naming_the_value() {
        let name = ty(json!("string"));
        let e = Datum::from_json(&json!(7), &name).unwrap_err();
        assert!(e.0.contains("String") && e.0.contains('7'), "{e}");
        assert!(Datum::from_json(&json!(["set", [1]]), &name).is_err());
        assert!(Datum::from_json(&json!(["map", []]), &name).is_err());
        assert!(Datum::from_json(&json!(["set", ["a", "a"]]), &name).is_err());
        let m = string_map();
        for bad in [
            json!("x"),
            json!(["set", []]),
            json!(["map", [["a"]]]),
            json!(["map", [["a", 1]]]),
            json!(["map", [["a", "1"], ["a", "2"]]]),
            json!(["map", {}]),
        ] {
            assert!(Datum::from_json(&bad, &m).is_err(), "{bad}");
        }
        let u = ty(json!("uuid"));
        assert!(Datum::from_json(&json!(["uuid", "nope"]), &u).is_err());
        assert!(Datum::from_json(&json!(["uuid"]), &u).is_err());
        assert!(Datum::from_json(&json!(1.5), &ty(json!("integer"))).is_err());
    }

    #[test]
    fn defaults() {
        assert_eq!(Datum::default_for(&ty(json!("string"))).as_str(), Some(""));
        assert_eq!(
            Datum::default_for(&ty(json!("integer"))).as_integer(),
            Some(0)
        );
        assert_eq!(
            Datum::default_for(&string_map()),
            Datum::Map(BTreeMap::new())
        );
        let opt = ty(json!({"key": "integer", "min": 0, "max": 1}));
        assert_eq!(Datum::default_for(&opt), Datum::Set(BTreeSet::new()));
    }

    #[test]
    fn map_diff_adds_replaces_and_removes_by_same_value() {
        let m = string_map();
        let mut cur = smap(&[("key", "5"), ("psk", "abc"), ("remote_ip", "1.2.3.4")]);
        // The update2 ovsdb-server 3.1 sent for `set options:psk=def
        // options:remote_ip=1.2.3.4 -- remove options key`: "key" with its
        // own value (removed), "psk" with a new one (replaced); remote_ip
        // unchanged is absent.
        let diff = Datum::from_json(&json!(["map", [["key", "5"], ["psk", "def"]]]), &m).unwrap();
        cur.apply_diff(diff, &m).unwrap();
        assert_eq!(cur, smap(&[("psk", "def"), ("remote_ip", "1.2.3.4")]));
        cur.apply_diff(smap(&[("new", "1")]), &m).unwrap();
        assert_eq!(cur.as_string_map().unwrap()["new"], "1");
        assert!(cur.apply_diff(Datum::Set(BTreeSet::new()), &m).is_err());
    }

    #[test]
    fn set_diff_is_symmetric_and_small_columns_are_replaced() {
        let s = ty(json!({"key": "string", "min": 0, "max": "unlimited"}));
        let mut cur = Datum::from_json(&json!(["set", ["a", "b"]]), &s).unwrap();
        cur.apply_diff(
            Datum::from_json(&json!(["set", ["b", "c"]]), &s).unwrap(),
            &s,
        )
        .unwrap();
        assert_eq!(
            cur,
            Datum::from_json(&json!(["set", ["a", "c"]]), &s).unwrap()
        );
        // ofport 3 -> 4 arrives as a bare 4 (max 1: not composite), and a
        // clear as an empty set.
        let opt = ty(json!({"key": "integer", "min": 0, "max": 1}));
        let mut p = Datum::from_json(&json!(3), &opt).unwrap();
        p.apply_diff(Datum::from_json(&json!(4), &opt).unwrap(), &opt)
            .unwrap();
        assert_eq!(p.as_integer(), Some(4));
        p.apply_diff(Datum::from_json(&json!(["set", []]), &opt).unwrap(), &opt)
            .unwrap();
        assert_eq!(p, Datum::Set(BTreeSet::new()));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn small_map() -> impl Strategy<Value = BTreeMap<u8, u8>> {
            proptest::collection::btree_map(0u8..6, 0u8..3, 0..6)
        }

        fn to_datum(m: &BTreeMap<u8, u8>) -> Datum {
            Datum::Map(
                m.iter()
                    .map(|(k, v)| (Atom::String(k.to_string()), Atom::String(v.to_string())))
                    .collect(),
            )
        }

        proptest! {
            /// Any old map and new map: the diff ovsdb-server would send,
            /// applied to the old map, gives the new one; and the diff
            /// survives the trip through JSON.
            #[test]
            fn map_diff_applied_gives_new(old in small_map(), new in small_map()) {
                let ty = string_map();
                let (old, new) = (to_datum(&old), to_datum(&new));
                let diff = Datum::diff(&old, &new, &ty);
                let diff = Datum::from_json(&diff.to_json(), &ty).unwrap();
                let mut cur = old.clone();
                cur.apply_diff(diff, &ty).unwrap();
                prop_assert_eq!(cur, new);
            }

            #[test]
            fn set_diff_applied_gives_new(
                old in proptest::collection::btree_set(any::<i64>(), 0..6),
                new in proptest::collection::btree_set(any::<i64>(), 0..6),
            ) {
                let ty = ty(json!({"key": "integer", "min": 0, "max": "unlimited"}));
                let set = |s: &BTreeSet<i64>| Datum::Set(s.iter().map(|i| Atom::Integer(*i)).collect());
                let (old, new) = (set(&old), set(&new));
                let diff = Datum::from_json(&Datum::diff(&old, &new, &ty).to_json(), &ty).unwrap();
                let mut cur = old.clone();
                cur.apply_diff(diff, &ty).unwrap();
                prop_assert_eq!(cur, new);
            }
        }
    }
}
