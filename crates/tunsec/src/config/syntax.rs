//! The first pass: TOML text into the `Raw*` structs, with errors that
//! guide and never leak.
//!
//! toml's own error text quotes the offending line, and serde's quotes the
//! offending value: with `psk = "hunter2` on a broken line, or a key
//! pasted where a file name belongs (`key_in = 0x0011...`), that puts the
//! secret on stderr and into the journal. So the errors here are rebuilt
//! from their parts: the field's path (serde_path_to_error, in the same
//! notation as the validation errors: `peer[0].selector[0].ports`), the
//! line and column, and what was expected and found. They never quote
//! the text, and never a value of a field that holds or names a secret.

use serde::de::DeserializeOwned;

use super::ConfigError;

/// The fields whose values are never shown in an error: they name or
/// hold keys, and a key pasted in the wrong place would be shown.
const SECRET_FIELDS: [&str; 6] = ["psk", "psk_file", "psk_env", "key", "key_in", "key_out"];

/// Deserializes config text. Errors are [`ConfigError::Syntax`]: a TOML
/// syntax error with its line and column; a wrong type, an unknown or
/// missing field with the field's path as well.
pub(super) fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
        field: None,
        at: e.span().map(|s| line_column(text, s.start)),
        reason: format!("TOML syntax error: {}", e.message()),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let e = e.into_inner();
        let found_at = e.span().map(|s| &text[s.start.min(text.len())..]);
        let (field, reason) = describe(&path, e.message(), found_at);
        ConfigError::Syntax {
            field,
            at: e.span().map(|s| line_column(text, s.start)),
            reason,
        }
    })
}

/// The 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// The field and the reason of a deserialization error at `path` with
/// serde's (or toml's) `message`; `found_at` is the text from the value's
/// start on, to tell its TOML type where the message does not.
fn describe(path: &str, message: &str, found_at: Option<&str>) -> (Option<String>, String) {
    let field = (path != ".").then(|| path.to_owned());
    let secret = field.as_deref().is_some_and(is_secret);
    // serde: "missing field `name`" at the table that lacks it.
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        let field = match field {
            Some(table) => format!("{table}.{name}"),
            None => name.to_owned(),
        };
        return (Some(field), "is required but missing".to_owned());
    }
    // serde: "unknown field `colour`, expected one of `name`, `vni`": the
    // path already ends with the unknown name.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let known = rest.split_once("`, ").map_or("", |(_, known)| known);
        let reason = match known.strip_prefix("expected ") {
            Some(known) => format!("is not a known field; expected {known}"),
            None => "is not a known field (there are none here)".to_owned(),
        };
        return (field, reason);
    }
    // serde: "invalid type: string \"100\", expected u32", and "invalid
    // value: integer `70000`, expected u16" for a number out of range.
    for (prefix, in_range) in [("invalid type: ", false), ("invalid value: ", true)] {
        if let Some((found, expected)) = message
            .strip_prefix(prefix)
            .and_then(|m| m.rsplit_once(", expected "))
        {
            let mut reason = format!(
                "expected {}, found {}",
                expected_text(expected, in_range),
                found_text(found, secret, found_at)
            );
            // `[peer]` where `[[peer]]` was meant.
            let header = found_at.is_some_and(|t| t.starts_with('[') && !t.starts_with("[["));
            if expected == "a sequence" && found == "map" && header {
                reason
                    .push_str(" (an array of tables has a [[double-bracketed]] header per entry)");
            }
            return (field, reason);
        }
    }
    // toml, for an enum given as something else than a string.
    if message == "wanted string or table" {
        let found = found_at.map_or("another type", toml_type);
        return (field, format!("expected a string, found {found}"));
    }
    if secret {
        // Whatever the message says, it might quote the value.
        let reason = "is not valid here (the value is not shown: this field names a secret)";
        return (field, reason.to_owned());
    }
    // "unknown variant `nvgre`, expected one of `vxlan`, ...", and the rest.
    (field, message.to_owned())
}

fn is_secret(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    let name = last.split('[').next().unwrap_or(last);
    SECRET_FIELDS.contains(&name)
}

/// serde's "expected" part, in the words of docs/config.md.
fn expected_text(expected: &str, in_range: bool) -> String {
    let range = |min: i128, max: i128| {
        if in_range {
            format!("an integer from {min} to {max}")
        } else {
            "an integer".to_owned()
        }
    };
    match expected {
        "u8" => range(0, u8::MAX.into()),
        "u16" => range(0, u16::MAX.into()),
        "u32" => range(0, u32::MAX.into()),
        "u64" | "usize" => range(0, u64::MAX.into()),
        "i64" => range(i64::MIN.into(), i64::MAX.into()),
        "a string" => "a string".to_owned(),
        "path string" => "a string (a file path)".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" | "map" => "a table".to_owned(),
        e if e.starts_with("struct ") => "a table".to_owned(),
        e => e.to_owned(),
    }
}

/// serde's "unexpected" part (`string "100"`, ``integer `5` ``, `map`),
/// with the value only if the field is not a secret.
fn found_text(found: &str, secret: bool, found_at: Option<&str>) -> String {
    let ticked = |s: &str| {
        s.strip_prefix('`')
            .and_then(|s| s.strip_suffix('`'))
            .map(str::to_owned)
    };
    let (kind, value) = if let Some(v) = found.strip_prefix("string ") {
        ("a string", Some(v.to_owned()))
    } else if let Some(v) = found.strip_prefix("integer ") {
        ("an integer", ticked(v))
    } else if let Some(v) = found.strip_prefix("floating point ") {
        ("a float", ticked(v))
    } else if let Some(v) = found.strip_prefix("boolean ") {
        ("a boolean", ticked(v))
    } else if found == "sequence" {
        ("an array", None)
    } else if found == "map" {
        // toml hands a date or time over as a map too.
        match found_at {
            Some(text) if text.starts_with(|c: char| c.is_ascii_digit()) => (toml_type(text), None),
            _ => ("a table", None),
        }
    } else if secret {
        ("a value of another type", None)
    } else {
        return found.to_owned();
    };
    match value {
        Some(v) if !secret => format!("the {} {v}", kind.split_once(' ').map_or(kind, |k| k.1)),
        _ => kind.to_owned(),
    }
}

/// The TOML type of the value that starts `text`, from its first
/// character.
fn toml_type(text: &str) -> &'static str {
    match text.chars().next() {
        Some('"' | '\'') => "a string",
        Some('[') => "an array",
        Some('{') => "a table",
        Some('t' | 'f') => "a boolean",
        Some(c) if c.is_ascii_digit() && text.get(4..5) == Some("-") => "a date",
        Some(c) if c.is_ascii_digit() && text.get(2..3) == Some(":") => "a time",
        Some('0'..='9' | '+' | '-' | 'i' | 'n') => "a number",
        _ => "a value of another type",
    }
}

#[cfg(test)]
mod test {
    use super::*;

    use crate::config::RawConfig;

    use crate::config::testing::BASE;

    /// The error of `BASE` with `from` replaced by `to`.
    fn error(from: &str, to: &str) -> ConfigError {
        assert!(BASE.contains(from), "{from}");
        from_str::<RawConfig>(&BASE.replacen(from, to, 1)).unwrap_err()
    }

    /// The line (from 1) of BASE on which `text` starts.
    fn line_of(text: &str) -> usize {
        BASE[..BASE.find(text).unwrap()].matches('\n').count() + 1
    }

    #[test]
    fn the_base_parses() {
        from_str::<RawConfig>(BASE).unwrap();
    }

    #[test]
    fn wrong_types_name_the_field() {
        // An array of tables, as the issue and docs/config.md show it.
        assert_eq!(
            error("vni = 100", "vni = \"100\"").to_string(),
            format!(
                "network[0].vni: expected an integer, found the string \"100\" (line {}, column 7)",
                line_of("vni = 100")
            )
        );
        for (from, to, field, reason) in [
            // A top-level table.
            (
                "underlay = \"192.0.2.1\"",
                "underlay = \"192.0.2.1\"\nworkers = \"4\"",
                "node.workers",
                "expected an integer, found the string \"4\"",
            ),
            (
                "[node]\n",
                "node = 5\n[x]\n",
                "node",
                "expected a table, found the integer 5",
            ),
            (
                "[[peer]]\n",
                "[peer]\n",
                "peer",
                "expected an array, found a table (an array of tables has a [[double-bracketed]] header per entry)",
            ),
            // A table in an array of tables.
            (
                "key_out = \"b.out\"",
                "key_out = \"b.out\"\nesn = \"yes\"",
                "peer[0].sa.esn",
                "expected true or false, found the string \"yes\"",
            ),
            // The second element of an array of tables.
            (
                "port = 6080",
                "port = 70000",
                "network[1].port",
                "expected an integer from 0 to 65535, found the integer 70000",
            ),
            (
                "networks = [\"blue\", \"red\"]",
                "networks = [\"blue\", 5]",
                "peer[0].networks[1]",
                "expected a string, found the integer 5",
            ),
            (
                "vni = 100",
                "vni = 1979-05-27",
                "network[0].vni",
                "expected an integer, found a date",
            ),
            (
                "encapsulation = \"vxlan\"",
                "encapsulation = 4",
                "network[0].encapsulation",
                "expected a string, found a number",
            ),
            (
                "encapsulation = \"vxlan\"",
                "encapsulation = \"nvgre\"",
                "network[0].encapsulation",
                "unknown variant `nvgre`, expected one of `vxlan`, `geneve`, `gue`",
            ),
            // Unknown fields are named, with the known ones.
            (
                "vni = 100",
                "vni = 100\ncolour = \"blue\"",
                "network[0].colour",
                "is not a known field; expected one of `name`, `vni`, `encapsulation`, `port`, `tap`, `bridge`, `mtu`, `fdb`",
            ),
            (
                "[node]\n",
                "colour = 1\n[node]\n",
                "colour",
                "is not a known field; expected one of",
            ),
            // Missing fields name the field, not the table.
            (
                "name = \"blue\"\n",
                "",
                "network[0].name",
                "is required but missing",
            ),
            (
                "[node]\nname = \"host-a\"\nunderlay = \"192.0.2.1\"\n",
                "",
                "node",
                "is required but missing",
            ),
        ] {
            match error(from, to) {
                ConfigError::Syntax {
                    field: Some(f),
                    at: Some(_),
                    reason: r,
                } if f == field && r.starts_with(reason) => {}
                ConfigError::Syntax {
                    field: Some(f),
                    at: None,
                    reason: r,
                } if f == field && r.starts_with(reason) && reason.contains("missing") => {}
                other => panic!("{field}: {reason}: got {other:?}"),
            }
        }
    }

    /// A key pasted where its file's name belongs is not shown, nor a
    /// secret on a line that does not parse.
    #[test]
    fn secrets_are_never_shown() {
        let secret = "1122334455667788";
        for (from, to, field) in [
            (
                "key_in = \"b.in\"",
                format!("key_in = 0x{secret}"),
                "peer[0].sa.key_in",
            ),
            (
                "key_out = \"b.out\"",
                format!("key_out = {secret}"),
                "peer[0].sa.key_out",
            ),
            (
                "key_out = \"b.out\"",
                format!("key_out = {secret}.5"),
                "peer[0].sa.key_out",
            ),
            (
                "key_out = \"b.out\"",
                format!("key_out = [\"{secret}\"]"),
                "peer[0].sa.key_out",
            ),
        ] {
            let err = error(from, &to);
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("{field}: expected a string (a file path), found ")),
                "{text}"
            );
            assert!(!text.contains(secret) && !text.contains("1122"), "{text}");
        }
        let ike = |extra: &str| {
            let start = BASE.find("[peer.sa]").unwrap();
            format!("{}[peer.ike]\n{extra}\n", &BASE[..start])
        };
        let e = from_str::<RawConfig>(&ike(&format!("psk_file = {secret}")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "peer[0].ike.psk_file: expected a string (a file path), found an integer"
            ),
            "{e}"
        );
        assert!(!e.contains(secret), "{e}");
        let e = from_str::<RawConfig>(&ike(&format!("psk = \"{secret}\"")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("peer[0].ike.psk: is not a known field"),
            "{e}"
        );
        assert!(!e.contains(secret), "{e}");

        // Lines that do not parse: the error has the line, never the text.
        let line = BASE.matches('\n').count() + 1;
        for broken in [
            "psk = \"hunter2".to_owned(),
            "psk = hunter2".to_owned(),
            "psk = 'hunter2' junk".to_owned(),
            "psk_file = \"hunter2\"\npsk_file = \"hunter2\"".to_owned(),
            "psk_file = \"\"\"hunter2".to_owned(),
            "psk = { value = \"hunter2\"".to_owned(),
            "psk = [\"hunter2\",,]".to_owned(),
            "\"hunter2\" = 1 = 2".to_owned(),
        ] {
            let err = from_str::<RawConfig>(&format!("{BASE}{broken}\n")).unwrap_err();
            let text = err.to_string();
            assert!(!text.contains("hunter2"), "{broken}: {text}");
            assert!(
                matches!(&err, ConfigError::Syntax { at: Some((l, _)), .. } if *l >= line),
                "{broken}: {err:?}"
            );
            assert!(
                text.contains(&format!("line {line}"))
                    || text.contains(&format!("line {}", line + 1)),
                "{broken}: {text}"
            );
            assert!(text.contains("TOML syntax error"), "{broken}: {text}");
        }
    }

    #[test]
    fn line_and_column() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // Columns count characters, not bytes.
        assert_eq!(line_column(text, text.rfind('=').unwrap()), (2, 4));
        assert_eq!(line_column(text, 8), (2, 2));
        assert_eq!(line_column(text, 1000), (3, 1));
    }

    #[test]
    fn secret_fields() {
        for path in [
            "peer[0].ike.psk_file",
            "peer[3].sa.key_in",
            "peer[0].sa.key_out",
            "peer[0].ike.key",
            "peer[0].ike.psk",
            "peer[0].ike.psk_env",
        ] {
            assert!(is_secret(path), "{path}");
        }
        for path in [
            "network[0].vni",
            "peer[0].ike.cert",
            "peer[0].networks[1]",
            ".",
        ] {
            assert!(!is_secret(path), "{path}");
        }
    }

    #[test]
    fn found_values_are_shown_except_secrets() {
        assert_eq!(
            found_text("string \"100\"", false, None),
            "the string \"100\""
        );
        assert_eq!(found_text("integer `5`", false, None), "the integer 5");
        assert_eq!(
            found_text("floating point `1.5`", false, None),
            "the float 1.5"
        );
        assert_eq!(
            found_text("boolean `true`", false, None),
            "the boolean true"
        );
        assert_eq!(found_text("sequence", false, None), "an array");
        assert_eq!(found_text("map", false, Some("{ a = 1 }")), "a table");
        assert_eq!(found_text("map", false, Some("[peer]\n")), "a table");
        assert_eq!(found_text("map", false, Some("1979-05-27\n")), "a date");
        assert_eq!(found_text("map", false, Some("07:32:00\n")), "a time");
        assert_eq!(found_text("string \"hunter2\"", true, None), "a string");
        assert_eq!(found_text("integer `1234`", true, None), "an integer");
        assert_eq!(
            found_text("newtype struct", true, None),
            "a value of another type"
        );
    }

    #[test]
    fn expected_in_the_docs_words() {
        assert_eq!(expected_text("u32", false), "an integer");
        assert_eq!(expected_text("u16", true), "an integer from 0 to 65535");
        assert_eq!(
            expected_text("path string", false),
            "a string (a file path)"
        );
        assert_eq!(expected_text("struct RawNode", false), "a table");
        assert_eq!(expected_text("a boolean", false), "true or false");
    }
}
