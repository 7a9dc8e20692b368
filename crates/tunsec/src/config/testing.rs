//! Test fixtures shared by the config modules' tests: a config with two
//! networks and a manually keyed peer, its key files, and the checks that
//! an error names the field and the value.

pub(super) use std::path::Path;

pub(super) use super::*;

pub(super) const BASE: &str = r#"
[node]
name = "host-a"
underlay = "192.0.2.1"

[[network]]
name = "blue"
vni = 100
encapsulation = "vxlan"

[[network]]
name = "red"
vni = 200
encapsulation = "gue"
port = 6080
mtu = 1360

[[network.fdb]]
mac = "02:00:00:00:00:0b"
peer = "host-b"

[[peer]]
name = "host-b"
underlay = "192.0.2.2"
networks = ["blue", "red"]
policies = { red = "clear" }

[peer.sa]
spi_in = 0x1001
spi_out = 0x2001
suite = "aes128gcm16"
key_in = "b.in"
key_out = "b.out"
"#;

pub(super) fn dir_with_keys() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_secret(
        dir.path().join("b.in"),
        "0x00112233445566778899aabbccddeeff 01020304\n",
    )
    .unwrap();
    write_secret(
        dir.path().join("b.out"),
        "ffeeddccbbaa99887766554433221100a0b0c0d0",
    )
    .unwrap();
    dir
}

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    let dir = dir_with_keys();
    Config::parse(text, dir.path())
}

/// The field, value and reason of an `Invalid` error; any other result
/// fails the test.
pub(super) fn refused<T: fmt::Debug>(result: Result<T, ConfigError>) -> (String, String, String) {
    match result {
        Err(ConfigError::Invalid {
            field,
            value,
            reason,
        }) => (field, value, reason),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

/// `text` is refused, naming `field` and `value`.
pub(super) fn assert_invalid(text: &str, field: &str, value: &str) {
    let (f, v, _) = refused(parse(text));
    assert_eq!((f.as_str(), v.as_str()), (field, value));
}

pub(super) const IKE_PEER: &str = "[peer.ike]\npsk_file = \"b.psk\"\n";

/// The base config with `ike` in place of its manual SA.
pub(super) fn ike_config(ike: &str) -> String {
    let start = BASE.find("[peer.sa]").unwrap();
    format!("{}{ike}", &BASE[..start])
}

pub(super) fn parse_ike(text: &str, psk: &[u8]) -> Result<Config, ConfigError> {
    let dir = dir_with_keys();
    write_secret(dir.path().join("b.psk"), psk).unwrap();
    Config::parse(text, dir.path())
}

/// `text`, with `psk` as the peer's key file, is refused, naming `field`
/// and `value`.
pub(super) fn assert_ike_invalid(text: &str, psk: &[u8], field: &str, value: &str) {
    let (f, v, _) = refused(parse_ike(text, psk));
    assert_eq!((f.as_str(), v.as_str()), (field, value));
}
