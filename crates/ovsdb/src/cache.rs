//! The client's copy of the monitored tables (table -> uuid -> columns),
//! and the rules that apply the server's updates to it: `<table-updates>`
//! of `monitor` (RFC 7047 §4.1.6) and `<table-updates2>` of
//! `monitor_cond` (ovsdb-server(7) §4.1.14).
//!
//! An update is applied whole or not at all: every row update is checked
//! and computed against the current rows first, then all are committed.
//! A malformed update, or one that does not fit the rows we have (an
//! insert of a row we have, a modify or delete of one we lack), leaves the
//! cache as it was and returns an error; the client then resets the
//! connection, and the resync rebuilds the cache.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::datum::{Datum, Uuid};
use crate::error::DataError;
use crate::schema::TableSchema;

/// One row: every monitored column, with the column's default when the
/// server left it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    columns: BTreeMap<String, Datum>,
}

impl Row {
    /// A column's value; `None` only for a column that is not monitored.
    pub fn get(&self, column: &str) -> Option<&Datum> {
        self.columns.get(column)
    }

    /// Every monitored column and its value.
    pub fn columns(&self) -> impl Iterator<Item = (&str, &Datum)> {
        self.columns.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// A string column's value; `""` for a column that is not monitored or
    /// holds no single string (an empty optional string, say).
    pub fn str(&self, column: &str) -> &str {
        self.get(column).and_then(Datum::as_str).unwrap_or("")
    }

    /// A string-to-string map column (`options`, `other_config`,
    /// `external_ids`); empty for a column that is not monitored or is not
    /// such a map.
    pub fn string_map(&self, column: &str) -> BTreeMap<&str, &str> {
        self.get(column)
            .and_then(Datum::as_string_map)
            .unwrap_or_default()
    }

    /// An integer column's value, or an optional one's if it is set.
    pub fn integer(&self, column: &str) -> Option<i64> {
        self.get(column).and_then(Datum::as_integer)
    }
}

/// The rows of one monitored table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    columns: TableSchema,
    rows: BTreeMap<Uuid, Row>,
}

impl Table {
    /// The row with this UUID.
    pub fn get(&self, uuid: &Uuid) -> Option<&Row> {
        self.rows.get(uuid)
    }

    /// Every row, by UUID.
    pub fn rows(&self) -> impl Iterator<Item = (&Uuid, &Row)> {
        self.rows.iter()
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The monitored columns and their types.
    pub fn columns(&self) -> &TableSchema {
        &self.columns
    }

    /// A full row from `<row>` (RFC 7047 §5.1): monitored columns that
    /// are absent take their defaults; unmonitored ones are skipped.
    fn full_row(&self, v: &Value) -> Result<Row, DataError> {
        let obj = as_row(v)?;
        let mut columns = BTreeMap::new();
        for (name, ty) in &self.columns {
            let d = match obj.get(name) {
                Some(j) => Datum::from_json(j, ty).map_err(|e| in_column(name, e))?,
                None => Datum::default_for(ty),
            };
            columns.insert(name.clone(), d);
        }
        Ok(Row { columns })
    }

    /// `old` with an update2 `modify` `<row>` of diffs applied.
    fn modified_row(&self, old: &Row, v: &Value) -> Result<Row, DataError> {
        let obj = as_row(v)?;
        let mut row = old.clone();
        for (name, diff) in obj {
            let Some(ty) = self.columns.get(name) else {
                continue;
            };
            let diff = Datum::from_json(diff, ty).map_err(|e| in_column(name, e))?;
            let cur = row
                .columns
                .entry(name.clone())
                .or_insert_with(|| Datum::default_for(ty));
            cur.apply_diff(diff, ty).map_err(|e| in_column(name, e))?;
        }
        Ok(row)
    }
}

fn as_row(v: &Value) -> Result<&Map<String, Value>, DataError> {
    v.as_object()
        .ok_or_else(|| DataError::expected("a <row> object", v))
}

fn in_column(name: &str, e: DataError) -> DataError {
    DataError(format!("column {name}: {}", e.0))
}

/// Which notation an update is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notation {
    /// `<table-updates>` of `monitor`: `old` and `new` rows (RFC 7047
    /// §4.1.6).
    Update,
    /// `<table-updates2>` of `monitor_cond`: `initial`, `insert`,
    /// `modify` (diffs), `delete` (ovsdb-server(7) §4.1.14).
    Update2,
}

/// What applying an update did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows inserted, modified or deleted.
    pub rows: u64,
    /// Updates for tables we do not monitor, skipped.
    pub ignored_tables: u64,
}

/// The monitored tables.
#[derive(Debug, Clone)]
pub struct Cache {
    tables: BTreeMap<String, Table>,
    generation: u64,
}

/// Two caches are equal when they hold the same rows; the generation is
/// not compared.
impl PartialEq for Cache {
    fn eq(&self, other: &Self) -> bool {
        self.tables == other.tables
    }
}

impl Eq for Cache {}

impl Cache {
    /// An empty cache of these tables, each with the columns to keep and
    /// their types.
    pub fn new(tables: BTreeMap<String, TableSchema>) -> Self {
        Self {
            tables: tables
                .into_iter()
                .map(|(name, columns)| {
                    (
                        name,
                        Table {
                            columns,
                            rows: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
            generation: 0,
        }
    }

    /// A monitored table.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }

    /// Every monitored table, by name.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &Table)> {
        self.tables.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// A number that grows each time the rows change (an update or a
    /// resync that changed something), so that a reader can tell whether
    /// it has seen this state.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Applies one `update` or `update2` notification's table updates,
    /// whole or not at all.
    pub fn apply(&mut self, notation: Notation, updates: &Value) -> Result<Applied, DataError> {
        let (staged, applied) = self.stage(notation, updates)?;
        for (table, uuid, row) in staged {
            // `stage` only returns tables that exist.
            if let Some(t) = self.tables.get_mut(&table) {
                match row {
                    Some(r) => t.rows.insert(uuid, r),
                    None => t.rows.remove(&uuid),
                };
            }
        }
        if applied.rows > 0 {
            self.generation += 1;
        }
        Ok(applied)
    }

    /// Replaces every row with the state in a monitor reply (its
    /// `initial` rows), keeping the tables and their columns. Returns
    /// whether the rows changed; on an error the cache is untouched.
    pub fn resync(&mut self, notation: Notation, initial: &Value) -> Result<bool, DataError> {
        let mut fresh = self.clone();
        for t in fresh.tables.values_mut() {
            t.rows.clear();
        }
        fresh.apply(notation, initial)?;
        let changed = fresh.tables != self.tables;
        self.tables = fresh.tables;
        if changed {
            self.generation += 1;
        }
        Ok(changed)
    }

    /// Checks every row update and computes the new rows (`None`: delete).
    #[allow(clippy::type_complexity)]
    fn stage(
        &self,
        notation: Notation,
        updates: &Value,
    ) -> Result<(Vec<(String, Uuid, Option<Row>)>, Applied), DataError> {
        let tables = updates
            .as_object()
            .ok_or_else(|| DataError::expected("a <table-updates> object", updates))?;
        let mut staged = Vec::new();
        let mut applied = Applied::default();
        for (tname, rows) in tables {
            let Some(table) = self.tables.get(tname) else {
                applied.ignored_tables += 1;
                continue;
            };
            let rows = rows
                .as_object()
                .ok_or_else(|| DataError(format!("table {tname}: not a <table-update> object")))?;
            for (uuid_text, ru) in rows {
                let uuid =
                    Uuid::parse(uuid_text).map_err(|e| DataError(format!("table {tname}: {e}")))?;
                let at = |e: DataError| DataError(format!("table {tname} row {uuid}: {}", e.0));
                let existing = table.get(&uuid);
                let new = match notation {
                    Notation::Update2 => row_update2(table, existing, ru),
                    Notation::Update => row_update(table, existing, ru),
                }
                .map_err(at)?;
                staged.push((tname.clone(), uuid, new));
                applied.rows += 1;
            }
        }
        Ok((staged, applied))
    }
}

/// One `<row-update2>`: exactly one of `initial`, `insert`, `modify`,
/// `delete` (ovsdb-server(7) §4.1.14).
fn row_update2(
    table: &Table,
    existing: Option<&Row>,
    ru: &Value,
) -> Result<Option<Row>, DataError> {
    let obj = ru
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| DataError::expected("a <row-update2> with one member", ru))?;
    let Some((kind, row)) = obj.iter().next() else {
        return Err(DataError::expected("a <row-update2> with one member", ru));
    };
    match (kind.as_str(), existing) {
        // "In initial and insert updates, <row> omits columns whose values
        // equal the default value of the column type."
        ("initial" | "insert", None) => table.full_row(row).map(Some),
        ("initial" | "insert", Some(_)) => {
            Err(DataError(format!("{kind} of a row we already have")))
        }
        // "For a modify update, <row> contains only the columns that are
        // modified", each as the difference from the old value.
        ("modify", Some(old)) => table.modified_row(old, row).map(Some),
        // "<row> is always a null object for a delete update."
        ("delete", Some(_)) => Ok(None),
        ("modify" | "delete", None) => Err(DataError(format!("{kind} of a row we do not have"))),
        _ => Err(DataError(format!("unknown <row-update2> member {kind:?}"))),
    }
}

/// One `<row-update>` (RFC 7047 §4.1.6): `new` alone for an initial or
/// inserted row, `old` and `new` for a modified one (`new` then holds
/// every monitored column), `old` alone for a deleted one.
fn row_update(table: &Table, existing: Option<&Row>, ru: &Value) -> Result<Option<Row>, DataError> {
    let obj = ru
        .as_object()
        .ok_or_else(|| DataError::expected("a <row-update> object", ru))?;
    match (obj.get("old"), obj.get("new"), existing) {
        (None, Some(new), None) | (Some(_), Some(new), Some(_)) => table.full_row(new).map(Some),
        (Some(_), None, Some(_)) => Ok(None),
        (None, Some(_), Some(_)) => Err(DataError("insert of a row we already have".into())),
        (Some(_), _, None) => Err(DataError("modify or delete of a row we do not have".into())),
        (None, None, _) => Err(DataError::expected("a <row-update> with old or new", ru)),
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
pub(crate) mod tests;
