//! The parts of a database schema (RFC 7047 §3.2) the client needs: each
//! column's type. The update2 rules depend on it (a column of at most one
//! element is replaced, a larger one is diffed), and so do the defaults
//! of the columns that `initial` and `insert` leave out.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::DataError;

/// The five atomic types (RFC 7047 §3.2 `<atomic-type>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicType {
    /// A 64-bit signed integer.
    Integer,
    /// A double.
    Real,
    /// true or false.
    Boolean,
    /// A UTF-8 string.
    String,
    /// A UUID, usually a reference to a row.
    Uuid,
}

impl AtomicType {
    /// Reads the schema name (`"integer"`, `"real"`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "integer" => Self::Integer,
            "real" => Self::Real,
            "boolean" => Self::Boolean,
            "string" => Self::String,
            "uuid" => Self::Uuid,
            _ => return None,
        })
    }
}

/// A column's type (RFC 7047 §3.2 `<type>`): the key's atomic type, the
/// value's for a map, and the bounds on the number of elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType {
    /// The atomic type of the elements (of the keys, for a map).
    pub key: AtomicType,
    /// For a map, the atomic type of the values.
    pub value: Option<AtomicType>,
    /// The least number of elements (0 or 1).
    pub min: u64,
    /// The most, `None` for "unlimited".
    pub max: Option<u64>,
}

impl ColumnType {
    /// A scalar: exactly one atom, not a map (OVS's
    /// `ovsdb_type_is_scalar`).
    pub fn is_scalar(&self) -> bool {
        self.value.is_none() && self.min == 1 && self.max == Some(1)
    }

    /// More than one element allowed (OVS's `ovsdb_type_is_composite`):
    /// only such columns are diffed in an update2 `modify`.
    pub fn is_composite(&self) -> bool {
        self.max.is_none_or(|m| m > 1)
    }

    /// Reads a `<type>`: an atomic type name, or an object with `key`,
    /// optional `value`, `min` and `max` (RFC 7047 §3.2). Constraints
    /// (`enum`, ranges, `refTable`) are accepted and ignored.
    pub fn from_json(v: &Value) -> Result<Self, DataError> {
        if v.is_string() {
            return Ok(Self {
                key: base_type(v)?,
                value: None,
                min: 1,
                max: Some(1),
            });
        }
        let obj = v
            .as_object()
            .ok_or_else(|| DataError::expected("a column type", v))?;
        let key = base_type(
            obj.get("key")
                .ok_or_else(|| DataError::expected("a column type with a key", v))?,
        )?;
        let value = obj.get("value").map(base_type).transpose()?;
        let min = match obj.get("min") {
            None => 1,
            Some(m) => m
                .as_u64()
                .filter(|m| *m <= 1)
                .ok_or_else(|| DataError::expected("min 0 or 1", m))?,
        };
        let max = match obj.get("max") {
            None => Some(1),
            Some(Value::String(s)) if s == "unlimited" => None,
            Some(m) => Some(
                m.as_u64()
                    .filter(|m| *m >= 1)
                    .ok_or_else(|| DataError::expected("max >= 1 or \"unlimited\"", m))?,
            ),
        };
        Ok(Self {
            key,
            value,
            min,
            max,
        })
    }
}

/// `<base-type>`: an atomic type name, or an object whose `type` is one.
fn base_type(v: &Value) -> Result<AtomicType, DataError> {
    let name = match v {
        Value::String(s) => Some(s.as_str()),
        Value::Object(o) => o.get("type").and_then(Value::as_str),
        _ => None,
    };
    name.and_then(AtomicType::from_name)
        .ok_or_else(|| DataError::expected("an atomic type", v))
}

/// The column types of one table.
pub type TableSchema = BTreeMap<String, ColumnType>;

/// A database schema as `get_schema` returns it (RFC 7047 §4.1.2), reduced
/// to its tables' column types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// The database name.
    pub name: String,
    /// Table name to its columns.
    pub tables: BTreeMap<String, TableSchema>,
}

impl Schema {
    /// Reads a `<database-schema>` (RFC 7047 §3.2). Every table and column
    /// type is read, so a schema with one bad column is refused whole.
    pub fn from_json(v: &Value) -> Result<Self, DataError> {
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| DataError::expected("a schema with a name", v))?;
        let tables_json = v
            .get("tables")
            .and_then(Value::as_object)
            .ok_or_else(|| DataError::expected("a schema with tables", v))?;
        let mut tables = BTreeMap::new();
        for (tname, t) in tables_json {
            let cols = t
                .get("columns")
                .and_then(Value::as_object)
                .ok_or_else(|| DataError(format!("table {tname}: no columns object")))?;
            let mut columns = TableSchema::new();
            for (cname, c) in cols {
                let ty = c
                    .get("type")
                    .ok_or_else(|| DataError(format!("column {tname}.{cname}: no type")))
                    .and_then(ColumnType::from_json)
                    .map_err(|e| DataError(format!("column {tname}.{cname}: {e}")))?;
                columns.insert(cname.clone(), ty);
            }
            tables.insert(tname.clone(), columns);
        }
        Ok(Self {
            name: name.to_owned(),
            tables,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_vswitch_column_types() {
        let s = Schema::from_json(&json!({
            "name": "Open_vSwitch",
            "version": "8.3.1",
            "tables": {
                "Interface": {"columns": {
                    "name": {"type": "string", "mutable": false},
                    "options": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
                    "ofport": {"type": {"key": "integer", "min": 0, "max": 1}},
                    "type": {"type": "string"},
                    "admin_state": {"type": {"key": {"type": "string", "enum": ["set", ["up", "down"]]}, "min": 0, "max": 1}},
                }},
            },
        }))
        .unwrap();
        let i = &s.tables["Interface"];
        assert!(i["name"].is_scalar() && !i["name"].is_composite());
        assert!(i["options"].is_composite() && i["options"].value == Some(AtomicType::String));
        assert!(!i["ofport"].is_scalar() && !i["ofport"].is_composite());
        assert_eq!(i["admin_state"].key, AtomicType::String);
    }

    #[test]
    fn bad_schemas_name_the_column() {
        let e = Schema::from_json(
            &json!({"name": "d", "tables": {"T": {"columns": {"c": {"type": "float"}}}}}),
        )
        .unwrap_err();
        assert!(e.0.contains("T.c") && e.0.contains("float"), "{e}");
        for bad in [
            json!({"key": "string", "min": 2}),
            json!({"key": "string", "max": 0}),
            json!({"value": "string"}),
            json!(5),
        ] {
            assert!(ColumnType::from_json(&bad).is_err(), "{bad}");
        }
        assert!(Schema::from_json(&json!({"tables": {}})).is_err());
        assert!(Schema::from_json(&json!({"name": "d", "tables": {"T": {}}})).is_err());
    }
}
