//! The configs the documentation shows load, so that they cannot rot:
//!
//! - every ```` ```toml ```` block of `docs/config.md` and `README.md`:
//!   a complete config must pass `Config` parsing and validation as it
//!   is; a block marked `<!-- fragment of [[peer]] -->` (or `[[network]]`)
//!   on the line before it is validated inside a small complete config (a
//!   `[[peer]]` fragment after a peer `host-b` of network `blue`, a
//!   `[[network]]` fragment before a peer that carries its networks); an
//!   unknown mark fails the test;
//! - every `examples/*.toml` (at least the four the docs name), through
//!   `Config` and through `tunsecd --check`.
//!
//! The files a config names (pre-shared keys, manual keys, certificates,
//! keys, CAs, CRLs, pinned certificates) do not exist in the repository.
//! The test makes each one where the config points, with content that
//! `Config` accepts: secrets with mode 0600, manual keys of the suite's
//! length, and certificates from `tunsec pki` (a CA, and a node
//! certificate for the name in `local_id`, or else `node.name`). The
//! examples' absolute paths under `/etc/tunsec/` are moved under a
//! temporary directory; that is the only change made to any text. So a
//! config passes only if it would load on a host where its files exist.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tunsec::config::{Config, dn_to_der, ip_identity, write_secret};
use tunsec::pki::{self, KeyAlg};
use tunsec_ike::cert::describe_identity;
use tunsec_ike::message::Identity;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const TUNSECD: &str = env!("CARGO_BIN_EXE_tunsecd");
/// Where the examples keep their secret files.
const ETC: &str = "/etc/tunsec/";

/// A ```` ```toml ```` block of a Markdown file.
#[derive(Debug)]
struct Block {
    /// `docs/config.md:54`, for messages.
    at: String,
    /// `Some("[[peer]]")` for a block marked `<!-- fragment of [[peer]] -->`.
    fragment: Option<String>,
    text: String,
}

/// Every ```` ```toml ```` block of `file` (relative to the repository),
/// indented ones (in a list) included.
fn toml_blocks(file: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(Path::new(ROOT).join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let info = line.trim().strip_prefix("```");
        if info.is_none_or(|info| info.is_empty()) {
            i += 1;
            continue;
        }
        let info = info.unwrap().trim();
        let start = i;
        let mut body = String::new();
        i += 1;
        while i < lines.len() && lines[i].trim() != "```" {
            let l = lines[i];
            body.push_str(
                l.get(indent.min(l.len() - l.trim_start().len())..)
                    .unwrap_or(""),
            );
            body.push('\n');
            i += 1;
        }
        assert!(
            i < lines.len(),
            "{file}:{}: a code block that never ends",
            start + 1
        );
        i += 1;
        if info != "toml" {
            assert!(
                !info.starts_with("toml"),
                "{file}:{}: write ```toml, and mark a fragment with an HTML comment before the block",
                start + 1
            );
            continue;
        }
        let mark = lines[..start]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim());
        let fragment = mark
            .and_then(|m| m.strip_prefix("<!-- fragment of "))
            .map(|m| {
                m.strip_suffix("-->")
                    .unwrap_or_else(|| panic!("{file}:{start}: an unclosed mark: {m}"))
                    .trim()
                    .to_owned()
            });
        blocks.push(Block {
            at: format!("{file}:{}", start + 1),
            fragment,
            text: body,
        });
    }
    blocks
}

const NODE: &str = "[node]\nname = \"host-a\"\nunderlay = \"192.0.2.1\"\n\n";

/// The complete config a block is checked as.
fn complete(block: &Block) -> String {
    match block.fragment.as_deref() {
        None => block.text.clone(),
        // After a peer of network blue, whose tables the fragment fills.
        Some("[[peer]]") => format!(
            "{NODE}[[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\n\n\
             [[peer]]\nname = \"host-b\"\nunderlay = \"192.0.2.2\"\nnetworks = [\"blue\"]\n\n{}",
            block.text
        ),
        // Before a peer that carries the fragment's networks.
        Some("[[network]]") => {
            let table: toml::Table = block
                .text
                .parse()
                .unwrap_or_else(|e| panic!("{}: not TOML: {e}", block.at));
            let names: Vec<String> = table["network"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: no [[network]] in the fragment", block.at))
                .iter()
                .map(|n| format!("{}", n["name"]))
                .collect();
            format!(
                "{NODE}{}\n[[peer]]\nname = \"host-b\"\nunderlay = \"192.0.2.2\"\n\
                 networks = [{}]\n\n[peer.ike]\npsk_file = \"keys/host-b.psk\"\n",
                block.text,
                names.join(", ")
            )
        }
        Some(other) => panic!(
            "{}: unknown mark \"fragment of {other}\" (the test knows [[peer]] and [[network]])",
            block.at
        ),
    }
}

/// The bytes of key material each manual-SA suite takes.
fn key_len(suite: &str) -> usize {
    match suite {
        "aes128gcm16" => 20,
        "aes256gcm16" | "chacha20poly1305" => 36,
        "aes256-sha256" => 64,
        other => panic!("unknown suite {other:?} in a manual SA"),
    }
}

/// Makes every file `text` names (relative paths from `base`), as a host
/// that runs it would have them.
fn provide_files(text: &str, base: &Path, scratch: &Path) {
    let config: toml::Table = text.parse().expect("TOML");
    let path = |v: &toml::Value| {
        let p = Path::new(v.as_str().expect("a path"));
        // Absolute paths must have been moved into the test's directory.
        assert!(
            p.is_relative() || p.starts_with(std::env::temp_dir()),
            "{}: an absolute path outside {ETC}",
            p.display()
        );
        let p = base.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    };
    let node = config["node"]["name"].as_str().unwrap().to_owned();
    let peers = config.get("peer").and_then(|p| p.as_array()).cloned();
    for (i, peer) in peers.unwrap_or_default().iter().enumerate() {
        if let Some(sa) = peer.get("sa") {
            let len = key_len(sa["suite"].as_str().unwrap());
            for field in ["key_in", "key_out"] {
                let key: String = (0..len).map(|b| format!("{:02x}", b + i)).collect();
                write_secret(path(&sa[field]), key).unwrap();
            }
        }
        let Some(ike) = peer.get("ike") else { continue };
        if let Some(p) = ike.get("psk_file") {
            write_secret(path(p), "docs-example-psk\n").unwrap();
        }
        if ike.get("auth").and_then(|a| a.as_str()) != Some("cert") {
            continue;
        }
        // A CA, and our certificate for the name local_id gives.
        let ca = scratch.join(format!("ca{i}"));
        pki::init_ca(KeyAlg::EcdsaP256, "docs CA", 30, &ca).unwrap();
        let name = match ike.get("local_id").and_then(|v| v.as_str()) {
            Some(id) => id.strip_prefix("fqdn:").unwrap_or(id).to_owned(),
            None => node.clone(),
        };
        let out = scratch.join(format!("node{i}"));
        let (cert, key) = pki::issue(&ca, &name, &[], KeyAlg::EcdsaP256, 30, &out).unwrap();
        std::fs::copy(&cert, path(&ike["cert"])).unwrap();
        write_secret(path(&ike["key"]), std::fs::read(&key).unwrap()).unwrap();
        for (field, file) in [
            ("ca", ca.join("ca.pem")),
            ("intermediates", ca.join("ca.pem")),
        ] {
            for p in ike
                .get(field)
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                std::fs::copy(&file, path(p)).unwrap();
            }
        }
        for p in ike
            .get("crl")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            pki::crl(&ca, &[], 7, &path(p)).unwrap();
        }
        if let Some(p) = ike.get("pin_cert") {
            let remote = ike
                .get("remote_id")
                .and_then(|v| v.as_str())
                .unwrap_or("peer");
            let remote = remote.strip_prefix("fqdn:").unwrap_or(remote);
            let pinned = scratch.join(format!("pinned{i}"));
            let (cert, _) = pki::self_signed(remote, &[], KeyAlg::EcdsaP256, 30, &pinned).unwrap();
            std::fs::copy(&cert, path(p)).unwrap();
        }
    }
}

/// Loads `text` as a host with its files would: makes them under a fresh
/// directory, then parses and validates. `psk_env` finds a key in any
/// variable it names.
fn load(at: &str, text: &str) -> (tempfile::TempDir, PathBuf, Config) {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("config");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&base).unwrap();
    provide_files(text, &base, &scratch);
    let file = base.join("tunsec.toml");
    std::fs::write(&file, text).unwrap();
    let config = Config::parse_with_env(text, &base, &|_| Some("docs-example-psk".into()))
        .unwrap_or_else(|e| panic!("{at} does not load: {e}\n{text}"));
    (dir, file, config)
}

/// `id` as the peer would have it in the same config with the two hosts
/// swapped (the examples' convention: host-b's file is host-a's with the
/// names and addresses exchanged).
fn mirrored(id: &Identity, node: (&str, IpAddr), peer: (&str, IpAddr)) -> Identity {
    match id {
        Identity::Fqdn(n) => Identity::Fqdn(
            String::from_utf8_lossy(n)
                .replace(node.0, peer.0)
                .into_bytes(),
        ),
        Identity::DerAsn1Dn(dn) => {
            let text = tunsec::config::der_to_dn(dn).expect("a DN in dn: notation");
            Identity::DerAsn1Dn(dn_to_der(&text.replace(node.0, peer.0)).unwrap())
        }
        ip @ (Identity::Ipv4(_) | Identity::Ipv6(_)) if *ip == ip_identity(node.1) => {
            ip_identity(peer.1)
        }
        other => other.clone(),
    }
}

/// One host's `local_id` must be the other's `remote_id`: each IKE peer's
/// `remote_id` is what the peer presents when its config is this one with
/// the hosts swapped. (The old certificate example set `remote_id =
/// "fqdn:host-b"` and left `local_id` at the certificate's DN: each side
/// then refused the other.)
fn check_identities_meet(at: &str, config: &Config) {
    let node = (config.node.name.as_str(), config.node.underlay);
    for p in &config.peers {
        let Some(ike) = &p.ike else { continue };
        let Some(remote) = &ike.remote_id else {
            continue;
        };
        let peer_presents = mirrored(&ike.local_id, node, (&p.name, p.underlay));
        assert!(
            &peer_presents == remote,
            "{at}: peer {} would present {} (this config's local_id with the hosts swapped), \
             but remote_id expects {}: set local_id",
            p.name,
            describe_identity(&peer_presents),
            describe_identity(remote)
        );
    }
}

#[test]
fn docs_toml_blocks_load() {
    let mut blocks = toml_blocks("docs/config.md");
    let in_config = blocks.len();
    blocks.extend(toml_blocks("README.md"));
    // The full example, gateway mode, [peer.ike], certificates, bridge.
    assert!(
        in_config >= 5,
        "only {in_config} toml blocks found in docs/config.md"
    );
    for block in &blocks {
        // A fragment is TOML on its own too.
        let _: toml::Table = block
            .text
            .parse()
            .unwrap_or_else(|e| panic!("{}: not TOML: {e}", block.at));
        let text = complete(block);
        let (_dir, _, config) = load(&block.at, &text);
        check_identities_meet(&block.at, &config);
        eprintln!(
            "{}: loads ({}{} networks, {} peers{})",
            block.at,
            block
                .fragment
                .as_deref()
                .map(|f| format!("a fragment of {f}; "))
                .unwrap_or_default(),
            config.networks.len(),
            config.peers.len(),
            if config.gateway.is_some() {
                ", gateway mode"
            } else {
                ""
            }
        );
    }
}

#[test]
fn examples_load() {
    let dir = Path::new(ROOT).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "overlay-psk.toml",
        "overlay-cert.toml",
        "gateway.toml",
        "tunnel-mode.toml",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "examples/{wanted} is missing"
        );
    }
    for (file, name) in files.iter().zip(&names) {
        let at = format!("examples/{name}");
        let original = std::fs::read_to_string(file).unwrap();
        // Absolute paths only under /etc/tunsec/, moved into the test's
        // directory; relative ones stay relative to the config file.
        let root = tempfile::tempdir().unwrap();
        let etc = format!("{}{ETC}", root.path().display());
        let text = original.replace(&format!("\"{ETC}"), &format!("\"{etc}"));
        let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{at}: {e}"));
        let (_dir, config_file, config) = load(&at, &text);
        check_identities_meet(&at, &config);
        // What tunsecd --check says of it, too.
        let out = Command::new(TUNSECD)
            .args(["--check", "--config"])
            .arg(&config_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tunsecd --check refuses {at}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "{at}: loads ({} networks, {} peers{}); tunsecd --check: ok",
            config.networks.len(),
            config.peers.len(),
            if table.contains_key("gateway") {
                ", gateway mode"
            } else {
                ""
            }
        );
        drop(root);
    }
}
