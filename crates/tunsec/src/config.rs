//! The configuration file: one TOML document, read once, validated in full
//! before anything is changed on the host.
//!
//! Parsing has two passes, as in the rest of the project's boundaries:
//! serde reads the text into `Raw*` structs (unknown keys are errors;
//! `syntax`), then `Config::validate` checks every rule and turns them
//! into typed values. Each error names the field, as a path like
//! `peer[1].sa.suite`, and the value that was wrong, except where the
//! value may be a secret. `docs/config.md` documents every field.
//!
//! This module holds `Config`, its loading and the checks across
//! sections; each section has a module of its own with its `Raw*` struct,
//! its typed value, its validation and its tests: `node` (`[node]`,
//! `[esp]`, `[offload]`), `network`, `gateway` (with `[[peer.selector]]`),
//! `peer` (with `[peer.sa]`) and `ike` (`[peer.ike]`, with `cert` for
//! its certificates and `identity` for `local_id` and `remote_id`).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use gateway::RawGateway;
use network::RawNetwork;
use node::{RawEsp, RawNode, RawOffload};
use peer::RawPeer;

mod cert;
mod gateway;
mod identity;
mod ike;
mod mtu;
mod network;
mod node;
mod ovsdb;
mod peer;
mod secret;
mod syntax;
#[cfg(test)]
mod testing;
pub use cert::AuthKind;
pub use gateway::{Gateway, GuardScopeKind, OnStop, gateway_defaults};
#[cfg(test)]
pub(crate) use identity::parse_identity;
pub use identity::{der_to_dn, dn_to_der, ip_identity};
pub use ike::{ChildKeys, ChildLayout, ChildMode, ChildSelectors, IkePeer};
pub use mtu::NetworkMtu;
pub use network::{Mtu, Network, NetworkLayout, TunnelEncapsulation, parse_mac};
pub use node::{EspEncapsulation, EspSettings, MAX_WORKERS, Node, Offload};
pub use ovsdb::Ovsdb;
pub use peer::{ManualSa, Peer, PolicyKind};
pub use secret::write_secret;

/// Where the control socket lives unless the config says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tunsec/tunsecd.sock";
/// The default ESP-in-UDP port (RFC 3948).
pub const DEFAULT_ESP_PORT: u16 = 4500;
/// How often a host behind a NAT sends a NAT keepalive unless the config
/// says otherwise (RFC 3948 section 4 suggests 20 s).
pub const DEFAULT_NAT_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(20);
/// The longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// A configuration that failed validation: the field, its value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's message.
        reason: String,
    },
    /// The text is not valid TOML, or a value has the wrong type, or a
    /// key is unknown or missing. It never quotes the text (a line may
    /// hold a secret), nor the value of a field that names a secret.
    #[error("{}", syntax_message(field.as_deref(), *at, reason))]
    Syntax {
        /// The field's path, such as `network[0].vni`, where known.
        field: Option<String>,
        /// The line and column (from 1) of the error, where known.
        at: Option<(usize, usize)>,
        /// What is wrong, such as `expected an integer, found the string
        /// "100"`.
        reason: String,
    },
    /// A value breaks a rule.
    #[error("{field}: {value} {reason}")]
    Invalid {
        /// The field's path, such as `peer[1].sa.suite`.
        field: String,
        /// The value as written.
        value: String,
        /// The rule it breaks.
        reason: String,
    },
}

/// `network[0].vni: expected ... (line 8, column 7)`, or without a field
/// `TOML syntax error ... at line 8, column 7`.
fn syntax_message(field: Option<&str>, at: Option<(usize, usize)>, reason: &str) -> String {
    match (field, at) {
        (Some(field), Some((line, column))) => {
            format!("{field}: {reason} (line {line}, column {column})")
        }
        (Some(field), None) => format!("{field}: {reason}"),
        (None, Some((line, column))) => format!("line {line}, column {column}: {reason}"),
        (None, None) => reason.to_owned(),
    }
}

fn invalid(
    field: impl Into<String>,
    value: impl fmt::Display,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    esp: RawEsp,
    #[serde(default)]
    offload: RawOffload,
    #[serde(default)]
    network: Vec<RawNetwork>,
    #[serde(default)]
    peer: Vec<RawPeer>,
    gateway: Option<RawGateway>,
    ovsdb: Option<ovsdb::RawOvsdb>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This host.
    pub node: Node,
    /// ESP settings shared by every peer.
    pub esp: EspSettings,
    /// Which offloads the data path uses.
    pub offload: Offload,
    /// The virtual networks, in file order.
    pub networks: Vec<Network>,
    /// The peers, in file order.
    pub peers: Vec<Peer>,
    /// Gateway mode (`[gateway]`): the kernel's own tunnels, steered into
    /// a TUN device by policy routing, instead of overlay networks.
    pub gateway: Option<Gateway>,
    /// Gateway mode: more peers, from the tunnel interfaces of an Open
    /// vSwitch database (`[ovsdb]`).
    pub ovsdb: Option<Ovsdb>,
}

impl Config {
    /// Reads and validates a config file. Relative key file paths are
    /// taken from the config file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    /// Parses and validates config text, with the process's environment
    /// for `psk_env`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, base_dir, &|name| std::env::var_os(name))
    }

    /// Parses and validates config text; `env` looks up environment
    /// variables (tests pass their own instead of the process's).
    pub fn parse_with_env(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = syntax::from_str(text)?;
        Self::validate(raw, &Sources { base_dir, env })
    }

    fn validate(raw: RawConfig, sources: &Sources<'_>) -> Result<Self, ConfigError> {
        let node = node::validate_node(raw.node)?;
        let esp = node::validate_esp(raw.esp, &node)?;
        let gateway = raw.gateway.map(gateway::validate_gateway).transpose()?;
        let ovsdb = raw
            .ovsdb
            .map(|o| ovsdb::validate_ovsdb(o, gateway.is_some()))
            .transpose()?;

        if gateway.is_some() && !raw.network.is_empty() {
            return Err(invalid(
                "network[0].name",
                quoted(&raw.network[0].name),
                "cannot be combined with [gateway]: gateway mode protects the kernel's own tunnels, not overlay networks",
            ));
        }
        let peer_names: HashSet<&str> = raw.peer.iter().map(|p| p.name.as_str()).collect();

        let networks = network::validate_networks(raw.network, &peer_names, esp)?;
        let peers = peer::validate_peers(
            raw.peer,
            &node,
            &networks,
            gateway.as_ref().map(|g| g.mode),
            esp,
            sources,
        )?;
        peer::validate_layouts(&networks, &peers)?;
        let offload = node::validate_offload(raw.offload)?;

        let config = Self {
            node,
            esp,
            offload,
            networks,
            peers,
            gateway,
            ovsdb,
        };
        // Last: the overhead depends on the peers' ESP modes.
        for net in &config.networks {
            config.network_mtu(net)?;
        }
        Ok(config)
    }

    /// The network with this name.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// The longest name of a node, network or peer.
const MAX_NAME_LEN: usize = 63;

/// A node, network or peer name: 1 to `MAX_NAME_LEN` characters.
fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    check_chars(field, name, MAX_NAME_LEN)
}

/// An interface name that tunsecd makes or looks up (`gateway.tun`,
/// `gateway.tunnel_devices`): 1 to `MAX_IFNAME_LEN` characters.
fn check_ifname(field: &str, name: &str) -> Result<(), ConfigError> {
    check_chars(field, name, MAX_IFNAME_LEN)
}

/// 1 to `max` characters of letters, digits, '-', '_' or '.'.
fn check_chars(field: &str, name: &str, max: usize) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            quoted(name),
            format!("must be 1 to {max} characters of letters, digits, '-', '_' or '.'"),
        ))
    }
}

fn parse_addr(field: &str, value: &str) -> Result<IpAddr, ConfigError> {
    let addr: IpAddr = value
        .parse()
        .map_err(|_| invalid(field, quoted(value), "is not an IPv4 or IPv6 address"))?;
    if addr.is_unspecified() || addr.is_multicast() {
        return Err(invalid(field, quoted(value), "must be a unicast address"));
    }
    Ok(addr)
}

/// Where a config's values from outside the text come from.
struct Sources<'a> {
    /// Relative key file paths are taken from here.
    base_dir: &'a Path,
    /// Looks up an environment variable (`psk_env`).
    env: &'a dyn Fn(&str) -> Option<OsString>,
}

#[cfg(test)]
mod test {
    use super::testing::*;

    #[test]
    fn full_example_parses() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.node.name, "host-a");
        assert_eq!(c.node.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.esp.encapsulation, EspEncapsulation::Udp);
        assert_eq!(c.esp.port, 4500);
        assert_eq!(c.networks[0].port, 4789);
        assert_eq!(c.networks[0].tap, "ts-blue");
        assert_eq!(c.networks[0].mtu, Mtu::Auto);
        assert_eq!(c.networks[1].mtu, Mtu::Fixed(1360));
        assert_eq!(c.networks[1].fdb[0].1, "host-b");
        let p = &c.peers[0];
        assert_eq!(
            p.networks,
            vec![
                ("blue".to_owned(), PolicyKind::Require),
                ("red".to_owned(), PolicyKind::Clear)
            ]
        );
        let sa = p.sa.as_ref().unwrap();
        assert_eq!(sa.keys_in.encryption.len(), 20);
        assert!(!format!("{sa:?}").contains("0011"), "keys never print");
    }

    /// Secret files (`psk_file`, `key_in`, `key_out`) that every user can
    /// read are refused, with the field, the file, its mode and the fix;
    /// the same files with mode 0600 load.
    #[test]
    fn secret_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let dir = dir_with_keys();
        write_secret(dir.path().join("b.psk"), "correct horse").unwrap();
        let ike = ike_config(IKE_PEER);
        for (text, file, field) in [
            (BASE, "b.in", "peer[0].sa.key_in"),
            (BASE, "b.out", "peer[0].sa.key_out"),
            (ike.as_str(), "b.psk", "peer[0].ike.psk_file"),
        ] {
            let path = dir.path().join(file);
            chmod(&path, 0o644);
            let err = Config::parse(text, dir.path()).unwrap_err();
            assert!(!err.to_string().contains("horse"), "{err}");
            let (f, value, reason) = refused(Err::<Config, _>(err));
            assert_eq!(
                (f.as_str(), value.as_str()),
                (field, format!("{file:?}").as_str())
            );
            for part in [
                "readable by every user",
                "mode 0644",
                &format!("chmod 600 {}", path.display()),
            ] {
                assert!(reason.contains(part), "{field}: {reason}");
            }
            chmod(&path, 0o600);
            Config::parse(text, dir.path()).unwrap();
        }
    }

    #[test]
    fn syntax_and_unknown_keys() {
        let err = parse(&BASE.replace("vni = 100", "vni = 100\ncolour = \"blue\"")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = parse(&BASE.replace("vni = 100", "vni = \"one hundred\"")).unwrap_err();
        assert!(err.to_string().contains("vni"), "{err}");
        let err = parse(&BASE.replace("encapsulation = \"vxlan\"", "encapsulation = \"nvgre\""))
            .unwrap_err();
        assert!(err.to_string().contains("nvgre"), "{err}");
    }
}
