//! Key export for Wireshark (`tunsec keys export --wireshark DIR`), as
//! strongSwan's save-keys plugin offers: the keys of the live SAs in the
//! two decryption tables of Wireshark's preferences, `esp_sa` (its ESP
//! dissector's SA table) and `ikev2_decryption_table` (its IKEv2
//! dissector's), so that Wireshark or tshark decrypts a capture.
//!
//! The keys leave tunsecd only on this explicit request, over the control
//! socket (mode 0600: root only). The daemon logs a warning naming the SAs
//! exported (never a key); `tunsec` warns on stderr, and writes the two
//! files with mode 0600 (the directory, if it makes it, 0700).
//!
//! [`KeyExport`] is what travels: our own names for the transforms
//! (strongSwan's proposal syntax, as `tunsec status` shows them) and the
//! keys in hex. [`esp_sa_table`] and [`ikev2_table`] write Wireshark's
//! names, those of Wireshark 4.0 (Debian 12's tshark, which the tests
//! run).

use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use tunsec_esp::{Direction, Sa, Suite};

/// The file name of Wireshark's ESP SA table (the `esp_sa` UAT).
pub const ESP_SA_FILE: &str = "esp_sa";
/// The file name of Wireshark's IKEv2 decryption table.
pub const IKEV2_FILE: &str = "ikev2_decryption_table";

/// Key bytes in lowercase hex: wiped on drop, `<redacted>` in `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(transparent)]
pub struct HexKey(String);

impl HexKey {
    /// The hex of `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        Self(hex::encode(bytes))
    }

    /// The hex digits. Handle with care.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The keys of every live SA of a daemon, as `tunsec keys export` gets
/// them over the control socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyExport {
    /// The IKE SAs.
    pub ike: Vec<IkeSaExport>,
    /// The ESP SAs, both directions.
    pub esp: Vec<EspSaExport>,
}

/// One IKE SA: what Wireshark's IKEv2 decryption table holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IkeSaExport {
    /// The peer's name.
    pub peer: String,
    /// The initiator's SPI.
    pub spi_i: u64,
    /// The responder's SPI.
    pub spi_r: u64,
    /// The cipher, in strongSwan's syntax (`aes128gcm16`, `aes256`).
    pub encryption: String,
    /// The integrity algorithm (`sha256`); `None` with an AEAD cipher.
    pub integrity: Option<String>,
    /// SK_ei (with the AEAD salt at its end).
    pub sk_ei: HexKey,
    /// SK_er (with the AEAD salt at its end).
    pub sk_er: HexKey,
    /// SK_ai; empty with an AEAD cipher.
    pub sk_ai: HexKey,
    /// SK_ar; empty with an AEAD cipher.
    pub sk_ar: HexKey,
}

/// One ESP SA, one direction: what a row of Wireshark's ESP SA table
/// holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EspSaExport {
    /// The peer's name.
    pub peer: String,
    /// `in` or `out`.
    pub direction: String,
    /// The SPI.
    pub spi: u32,
    /// The outer source address of its packets.
    pub src: IpAddr,
    /// The outer destination address of its packets.
    pub dst: IpAddr,
    /// The suite, in strongSwan's syntax (`aes128gcm16`, `aes256-sha256`).
    pub suite: String,
    /// The encryption key, with the AEAD salt at its end (RFC 4106
    /// section 8.1), as Wireshark expects it.
    pub encryption_key: HexKey,
    /// The integrity key; empty with an AEAD suite.
    pub integrity_key: HexKey,
}

impl EspSaExport {
    /// The row of the SA `sa` of peer `peer` (underlay address `remote`)
    /// on this host (underlay address `local`).
    pub fn of(peer: &str, local: IpAddr, remote: IpAddr, sa: &Sa) -> Self {
        let (direction, src, dst) = match sa.direction() {
            Direction::Outbound => ("out", local, remote),
            Direction::Inbound => ("in", remote, local),
        };
        let keys = sa.export_keys();
        Self {
            peer: peer.to_owned(),
            direction: direction.to_owned(),
            spi: sa.spi(),
            src,
            dst,
            suite: sa.suite().name().to_owned(),
            encryption_key: HexKey::new(keys.encryption.expose()),
            integrity_key: HexKey::new(keys.integrity.expose()),
        }
    }
}

/// The rows of the data path's SAs: `(peer name, peer underlay address,
/// SA)`, on this host at `local`. An SA whose lock is poisoned is left
/// out.
pub(crate) fn esp_rows<'a>(
    local: IpAddr,
    sas: impl IntoIterator<Item = (&'a str, IpAddr, &'a Mutex<Sa>)>,
) -> Vec<EspSaExport> {
    sas.into_iter()
        .filter_map(|(peer, remote, sa)| {
            let sa = sa.lock().ok()?;
            Some(EspSaExport::of(peer, local, remote, &sa))
        })
        .collect()
}

/// Wireshark's names of an IKE SA's cipher and integrity algorithm, as
/// its IKEv2 decryption table spells them (`vs_ikev2_encr_algs`,
/// `vs_ikev2_auth_algs` of packet-isakmp.c); `None` for a cipher it
/// cannot decrypt (ChaCha20-Poly1305).
fn wireshark_ike(
    encryption: &str,
    integrity: Option<&str>,
) -> Option<(&'static str, &'static str)> {
    let encr = match encryption {
        "aes128" => "AES-CBC-128 [RFC3602]",
        "aes256" => "AES-CBC-256 [RFC3602]",
        // RFC 5282: the key includes the 4-byte salt.
        "aes128gcm16" => "AES-GCM-128 with 16 octet ICV [RFC5282]",
        "aes256gcm16" => "AES-GCM-256 with 16 octet ICV [RFC5282]",
        _ => return None,
    };
    let integ = match integrity {
        None => "NONE [RFC4306]",
        Some("sha256") => "HMAC_SHA2_256_128 [RFC4868]",
        Some("sha384") => "HMAC_SHA2_384_192 [RFC4868]",
        Some("sha512") => "HMAC_SHA2_512_256 [RFC4868]",
        Some(_) => return None,
    };
    Some((encr, integ))
}

/// Wireshark's names of an ESP suite's encryption and authentication
/// algorithms, as its ESP SA table spells them
/// (`esp_encryption_type_vals`, `esp_authentication_type_vals` of
/// packet-ipsec.c), and whether Wireshark 4.0 knows them; `None` for a
/// suite it cannot decrypt.
fn wireshark_esp(suite: &str) -> Option<(&'static str, &'static str, bool)> {
    match suite.parse::<Suite>().ok()? {
        // The key includes the 4-byte salt (RFC 4106 section 8.1); the
        // ICV is checked by the cipher: no separate authentication.
        Suite::AesGcm128 | Suite::AesGcm256 => {
            Some(("AES-GCM with 16 octet ICV [RFC4106]", "NULL", true))
        }
        Suite::AesCbc256HmacSha256 => {
            Some(("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]", true))
        }
        // Wireshark 4.2 and later; 4.0 refuses the whole table over it.
        Suite::ChaCha20Poly1305 => Some(("ChaCha20 with Poly1305 [RFC7634]", "NULL", false)),
    }
}

/// The prefix of a row that Wireshark 4.0 would refuse (and with it the
/// whole table): a comment, to take off for Wireshark 4.2 and later.
pub const NEWER_WIRESHARK: &str = "# Wireshark 4.2+: ";

/// The first line of both files.
const HEADER: &str = "# SECRET: keys of live IPsec SAs, written by `tunsec keys export`; \
                      whoever reads this file can decrypt the traffic. Delete it after use.\n";

/// What [`esp_sa_table`] or [`ikev2_table`] wrote, and what it left out.
#[derive(Debug, Default)]
pub struct Table {
    /// The file's text: Wireshark UAT records, one per line.
    pub text: String,
    /// How many records.
    pub rows: usize,
    /// The SAs left out, and why.
    pub skipped: Vec<String>,
}

/// Wireshark's `esp_sa` table: per SA, protocol, source, destination,
/// SPI, encryption algorithm and key, authentication algorithm and key,
/// each quoted (the columns of Wireshark 4.0's ESP SA table; the
/// addresses are those of the outer header, the underlay's).
pub fn esp_sa_table(export: &KeyExport) -> Table {
    let mut t = Table {
        text: HEADER.to_owned(),
        ..Table::default()
    };
    for sa in &export.esp {
        let Some((encr, auth, in_4_0)) = wireshark_esp(&sa.suite) else {
            t.skipped.push(format!(
                "ESP SA {:#010x} ({}, {}): Wireshark has no {}",
                sa.spi, sa.peer, sa.direction, sa.suite
            ));
            continue;
        };
        let protocol = if sa.src.is_ipv4() { "IPv4" } else { "IPv6" };
        let auth_key = if sa.integrity_key.expose().is_empty() {
            String::new()
        } else {
            format!("0x{}", sa.integrity_key.expose())
        };
        if !in_4_0 {
            t.text.push_str(NEWER_WIRESHARK);
            t.skipped.push(format!(
                "ESP SA {:#010x} ({}, {}): {} is for Wireshark 4.2 and later: its row is a \
                 comment, remove the leading \"{NEWER_WIRESHARK}\" to use it",
                sa.spi, sa.peer, sa.direction, sa.suite
            ));
        } else {
            t.rows += 1;
        }
        t.text.push_str(&format!(
            "\"{protocol}\",\"{}\",\"{}\",\"0x{:08x}\",\"{encr}\",\"0x{}\",\"{auth}\",\"{auth_key}\"\n",
            sa.src,
            sa.dst,
            sa.spi,
            sa.encryption_key.expose(),
        ));
    }
    t
}

/// Wireshark's `ikev2_decryption_table`: per IKE SA, the initiator's and
/// the responder's SPI, SK_ei, SK_er, the cipher, SK_ai, SK_ar and the
/// integrity algorithm (SPIs and keys in bare hex, the names quoted: the
/// format of strongSwan's save-keys plugin).
pub fn ikev2_table(export: &KeyExport) -> Table {
    let mut t = Table {
        text: HEADER.to_owned(),
        ..Table::default()
    };
    for sa in &export.ike {
        let Some((encr, integ)) = wireshark_ike(&sa.encryption, sa.integrity.as_deref()) else {
            t.skipped.push(format!(
                "IKE SA {:016x}_i/{:016x}_r ({}): Wireshark cannot decrypt {}",
                sa.spi_i, sa.spi_r, sa.peer, sa.encryption
            ));
            continue;
        };
        t.text.push_str(&format!(
            "{:016x},{:016x},{},{},\"{encr}\",{},{},\"{integ}\"\n",
            sa.spi_i,
            sa.spi_r,
            sa.sk_ei.expose(),
            sa.sk_er.expose(),
            sa.sk_ai.expose(),
            sa.sk_ar.expose(),
        ));
        t.rows += 1;
    }
    t
}

/// What [`write_wireshark`] did.
#[derive(Debug)]
pub struct Written {
    /// The files written, with their record counts.
    pub files: Vec<(PathBuf, usize)>,
    /// The SAs left out, and why.
    pub skipped: Vec<String>,
}

/// Writes [`ESP_SA_FILE`] and [`IKEV2_FILE`] into `dir` (made, mode
/// 0700, if missing), each mode 0600 whatever the umask or an older
/// file's mode, replacing an older one. A symbolic link in their place is
/// refused, not followed. `dir` can be a Wireshark profile directory.
pub fn write_wireshark(dir: &Path, export: &KeyExport) -> anyhow::Result<Written> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Written {
        files: Vec::new(),
        skipped: Vec::new(),
    };
    for (name, mut table) in [
        (ESP_SA_FILE, esp_sa_table(export)),
        (IKEV2_FILE, ikev2_table(export)),
    ] {
        let path = dir.join(name);
        let mut file = open_secret(&path)?;
        file.write_all(table.text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
        table.text.zeroize();
        written.files.push((path, table.rows));
        written.skipped.append(&mut table.skipped);
    }
    Ok(written)
}

/// Opens `path` for writing, truncated, mode 0600; refuses a symbolic
/// link.
fn open_secret(path: &Path) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| {
            format!(
                "cannot open {} (mode 0600, no symbolic link)",
                path.display()
            )
        })?;
    // An older file keeps its mode through O_CREAT: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} mode 0600", path.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;
    use std::time::Instant;

    use tunsec_esp::{SaConfig, SaKeys};

    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn sa(spi: u32, direction: Direction, suite: Suite) -> Sa {
        let n = suite.encryption_key_len() + suite.integrity_key_len();
        let keymat: Vec<u8> = (0..n).map(|i| 0xa0 ^ i as u8).collect();
        let keys = SaKeys::from_keymat(suite, &keymat).unwrap();
        Sa::new(SaConfig::new(spi, direction, suite, keys), Instant::now()).unwrap()
    }

    fn export() -> KeyExport {
        let rows = [
            sa(0x1111_2222, Direction::Outbound, Suite::AesGcm128),
            sa(0x3333_4444, Direction::Inbound, Suite::AesCbc256HmacSha256),
            sa(0x5555_6666, Direction::Inbound, Suite::ChaCha20Poly1305),
        ]
        .map(Mutex::new);
        let mut esp = esp_rows(LOCAL, rows.iter().map(|sa| ("h2", REMOTE, sa)));
        esp.push(EspSaExport {
            suite: "no-such-suite".into(),
            spi: 0x7777_8888,
            ..esp[0].clone()
        });
        KeyExport {
            ike: vec![
                IkeSaExport {
                    peer: "h2".into(),
                    spi_i: 0x0123_4567_89ab_cdef,
                    spi_r: 0xfedc_ba98_7654_3210,
                    encryption: "aes128gcm16".into(),
                    integrity: None,
                    sk_ei: HexKey::new(&[1; 20]),
                    sk_er: HexKey::new(&[2; 20]),
                    sk_ai: HexKey::default(),
                    sk_ar: HexKey::default(),
                },
                IkeSaExport {
                    peer: "h3".into(),
                    spi_i: 1,
                    spi_r: 2,
                    encryption: "aes256".into(),
                    integrity: Some("sha384".into()),
                    sk_ei: HexKey::new(&[3; 32]),
                    sk_er: HexKey::new(&[4; 32]),
                    sk_ai: HexKey::new(&[5; 48]),
                    sk_ar: HexKey::new(&[6; 48]),
                },
                IkeSaExport {
                    peer: "h4".into(),
                    spi_i: 3,
                    spi_r: 4,
                    encryption: "chacha20poly1305".into(),
                    integrity: None,
                    sk_ei: HexKey::new(&[7; 36]),
                    sk_er: HexKey::new(&[8; 36]),
                    sk_ai: HexKey::default(),
                    sk_ar: HexKey::default(),
                },
            ],
            esp,
        }
    }

    /// The rows of both tables, field by field: Wireshark 4.0's names,
    /// the salt in the AES-GCM key, both directions' addresses.
    #[test]
    fn tables_in_wireshark_syntax() {
        let e = export();
        let esp = esp_sa_table(&e);
        let lines: Vec<&str> = esp.text.lines().collect();
        assert!(lines[0].starts_with("# SECRET"), "{}", esp.text);
        let gcm_key: String = (0..20).map(|i| format!("{:02x}", 0xa0 ^ i)).collect();
        assert_eq!(
            lines[1],
            format!(
                "\"IPv4\",\"192.0.2.1\",\"192.0.2.2\",\"0x11112222\",\
                 \"AES-GCM with 16 octet ICV [RFC4106]\",\"0x{gcm_key}\",\"NULL\",\"\""
            )
        );
        let cbc_enc: String = (0..32).map(|i| format!("{:02x}", 0xa0 ^ i)).collect();
        let cbc_auth: String = (32..64).map(|i| format!("{:02x}", 0xa0 ^ i)).collect();
        assert_eq!(
            lines[2],
            format!(
                "\"IPv4\",\"192.0.2.2\",\"192.0.2.1\",\"0x33334444\",\"AES-CBC [RFC3602]\",\
                 \"0x{cbc_enc}\",\"HMAC-SHA-256-128 [RFC4868]\",\"0x{cbc_auth}\""
            )
        );
        // ChaCha20-Poly1305: a comment for Wireshark 4.2 and later.
        assert!(
            lines[3].starts_with(&format!("{NEWER_WIRESHARK}\"IPv4\",\"192.0.2.2\""))
                && lines[3].contains("\"0x55556666\",\"ChaCha20 with Poly1305 [RFC7634]\""),
            "{}",
            lines[3]
        );
        assert_eq!((lines.len(), esp.rows), (4, 2));
        assert_eq!(esp.skipped.len(), 2, "{:?}", esp.skipped);
        assert!(esp.skipped[0].contains("4.2"), "{:?}", esp.skipped);
        assert!(esp.skipped[1].contains("0x77778888"), "{:?}", esp.skipped);

        let ike = ikev2_table(&e);
        let lines: Vec<&str> = ike.text.lines().collect();
        assert_eq!(
            lines[1],
            format!(
                "0123456789abcdef,fedcba9876543210,{},{},\
                 \"AES-GCM-128 with 16 octet ICV [RFC5282]\",,,\"NONE [RFC4306]\"",
                "01".repeat(20),
                "02".repeat(20)
            )
        );
        assert_eq!(
            lines[2],
            format!(
                "0000000000000001,0000000000000002,{},{},\"AES-CBC-256 [RFC3602]\",{},{},\
                 \"HMAC_SHA2_384_192 [RFC4868]\"",
                "03".repeat(32),
                "04".repeat(32),
                "05".repeat(48),
                "06".repeat(48)
            )
        );
        assert_eq!((lines.len(), ike.rows), (3, 2));
        assert!(
            ike.skipped[0].contains("chacha20poly1305"),
            "{:?}",
            ike.skipped
        );
    }

    /// The files are mode 0600 also over an older, wider file and under a
    /// permissive umask; a symbolic link in their place is refused.
    #[test]
    fn files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("profile");
        std::fs::create_dir(&out).unwrap();
        let old = out.join(ESP_SA_FILE);
        std::fs::write(&old, "old").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let written = write_wireshark(&out, &export()).unwrap();
        assert_eq!(written.files.len(), 2);
        for (path, _) in &written.files {
            let meta = std::fs::metadata(path).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o600, "{}", path.display());
        }
        assert!(
            std::fs::read_to_string(&old)
                .unwrap()
                .contains("0x11112222")
        );
        assert_eq!(written.skipped.len(), 3, "{:?}", written.skipped);
        // A new directory is 0700.
        let fresh = dir.path().join("a/b");
        write_wireshark(&fresh, &export()).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A planted link is not followed.
        let target = dir.path().join("victim");
        std::fs::write(&target, "keep me").unwrap();
        let trap = dir.path().join("trap");
        std::fs::create_dir(&trap).unwrap();
        std::os::unix::fs::symlink(&target, trap.join(ESP_SA_FILE)).unwrap();
        let err = write_wireshark(&trap, &export()).unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }

    /// The export travels as JSON with the keys in hex, and prints none
    /// of them in `Debug`.
    #[test]
    fn json_carries_keys_debug_hides_them() {
        let e = export();
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(&"01".repeat(20)), "{json}");
        assert_eq!(serde_json::from_str::<KeyExport>(&json).unwrap(), e);
        let shown = format!("{e:?}");
        assert!(!shown.contains(&"01".repeat(20)), "{shown}");
        assert!(!shown.contains(e.esp[0].encryption_key.expose()), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
