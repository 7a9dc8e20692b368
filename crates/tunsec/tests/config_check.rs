//! `tunsecd --check --config FILE` on configs with the mistakes of a first
//! week: secret files every user can read, values of the wrong type,
//! lines that do not parse, a key pasted where its file's name belongs,
//! and an MTU the underlay cannot carry. Each is refused with exit status
//! 2 and a message that names the field (and line), and no secret ever
//! appears on stdout or stderr. No root and no namespaces needed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const TUNSECD: &str = env!("CARGO_BIN_EXE_tunsecd");

/// The pre-shared key and key material in the files; never to be shown.
const PSK: &str = "hunter2-correct-horse";
const KEY_HEX: &str = "00112233445566778899aabbccddeeff01020304";

const OVERLAY: &str = r#"[node]
name = "host-a"
underlay = "192.0.2.1"

[[network]]
name = "blue"
vni = 100
encapsulation = "vxlan"

[[peer]]
name = "host-b"
underlay = "192.0.2.2"
networks = ["blue"]

[peer.ike]
psk_file = "b.psk"
"#;

/// `OVERLAY` with manual keys instead of IKE.
fn manual() -> String {
    OVERLAY.replace(
        "[peer.ike]\npsk_file = \"b.psk\"\n",
        "[peer.sa]\nspi_in = 0x1001\nspi_out = 0x2001\nsuite = \"aes128gcm16\"\nkey_in = \"b.in\"\nkey_out = \"b.out\"\n",
    )
}

/// A directory with the secret files (mode 0600).
fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tunsec::config::write_secret(dir.path().join("b.psk"), format!("{PSK}\n")).unwrap();
    for name in ["b.in", "b.out"] {
        tunsec::config::write_secret(dir.path().join(name), KEY_HEX).unwrap();
    }
    dir
}

/// Runs `tunsecd --check` on `text`: its exit status and its output
/// (stdout and stderr together).
fn check(dir: &Path, text: &str) -> (Option<i32>, String) {
    let config = dir.join("tunsec.toml");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(TUNSECD)
        .args(["--check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// `tunsecd --check` refuses `text` with status 2 and a message holding
/// every one of `parts` and no secret.
fn assert_refused(dir: &Path, text: &str, parts: &[&str]) {
    let (code, out) = check(dir, text);
    assert_eq!(code, Some(2), "{out}");
    for part in parts {
        assert!(out.contains(part), "{part:?} missing from: {out}");
    }
    for secret in [PSK, "hunter2", KEY_HEX, "0011223344"] {
        assert!(!out.contains(secret), "{secret:?} shown in: {out}");
    }
}

/// The line (from 1) of `text` on which `needle` starts.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].matches('\n').count() + 1
}

#[test]
fn good_configs_pass() {
    let dir = dir();
    for text in [OVERLAY.to_owned(), manual()] {
        let (code, out) = check(dir.path(), &text);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("ok (1 networks, 1 peers)"), "{out}");
    }
}

#[test]
fn secret_files_others_can_read_are_refused() {
    let dir = dir();
    for (text, file, field) in [
        (OVERLAY.to_owned(), "b.psk", "peer[0].ike.psk_file"),
        (manual(), "b.in", "peer[0].sa.key_in"),
        (manual(), "b.out", "peer[0].sa.key_out"),
    ] {
        let path = dir.path().join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let fix = format!("chmod 600 {}", path.display());
        assert_refused(
            dir.path(),
            &text,
            &[field, &format!("{file:?}"), "mode 0644", &fix],
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(check(dir.path(), &text).0, Some(0));
    }
}

#[test]
fn wrong_types_name_the_field_and_line() {
    let dir = dir();
    let text = OVERLAY.replace("vni = 100", "vni = \"100\"");
    let line = line_of(&text, "vni =");
    assert_refused(
        dir.path(),
        &text,
        &[&format!(
            "network[0].vni: expected an integer, found the string \"100\" (line {line}, column 7)"
        )],
    );
    let text = OVERLAY.replace("vni = 100", "vni = 100\ncolour = \"blue\"");
    assert_refused(
        dir.path(),
        &text,
        &[
            "network[0].colour: is not a known field; expected one of `name`, `vni`",
            &format!("line {}", line_of(&text, "colour")),
        ],
    );
    assert_refused(
        dir.path(),
        &OVERLAY.replace("[peer.ike]\n", "[peer.ike]\nfragmentation = \"yes\"\n"),
        &["peer[0].ike.fragmentation: expected true or false, found the string \"yes\""],
    );
}

/// A line that does not parse is reported by its number, never shown:
/// it may hold a secret.
#[test]
fn broken_lines_are_never_shown() {
    let dir = dir();
    // (The line after an unterminated multi-line string is the end of
    // the file, where toml finds that it is missing its end.)
    for (broken, lines_later) in [
        (format!("psk = \"{PSK}"), 0),
        (format!("psk = {PSK}"), 0),
        (format!("psk_file = \"b.psk\" {PSK}"), 0),
        (format!("psk_file = \"\"\"{PSK}"), 1),
    ] {
        let text = OVERLAY.replace("psk_file = \"b.psk\"", &broken);
        let line = line_of(&text, &broken) + lines_later;
        assert_refused(
            dir.path(),
            &text,
            &["TOML syntax error", &format!("line {line}, column ")],
        );
    }
    // Well-formed, but a key where a file's name belongs, or inline.
    let text = manual().replace(
        "key_in = \"b.in\"",
        &format!("key_in = 0x{}", &KEY_HEX[..14]),
    );
    assert_refused(
        dir.path(),
        &text,
        &["peer[0].sa.key_in: expected a string (a file path), found an integer"],
    );
    let text = OVERLAY.replace("psk_file = \"b.psk\"", &format!("psk = \"{PSK}\""));
    assert_refused(
        dir.path(),
        &text,
        &["peer[0].ike.psk: is not a known field"],
    );
}

#[test]
fn an_mtu_the_underlay_cannot_carry_is_refused() {
    let dir = dir();
    let text = OVERLAY.replace("vni = 100", "vni = 100\nmtu = 9000");
    assert_refused(
        dir.path(),
        &text,
        &[
            "network[0].mtu: 9000 does not fit the underlay",
            "the largest MTU that fits is 1381",
        ],
    );
    // The same on a jumbo underlay fits.
    let jumbo = text.replace("[node]\n", "[node]\nunderlay_mtu = 9200\n");
    assert_eq!(check(dir.path(), &jumbo).0, Some(0));
}
