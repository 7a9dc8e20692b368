//! `[[network]]`: the virtual networks of overlay mode, each a VNI on a
//! tunnel port with its TAP device and static forwarding entries.

use std::collections::HashSet;

use serde::Deserialize;
use tunsec_wire::ethernet::EthernetAddress;

use super::{
    ConfigError, EspEncapsulation, EspSettings, MAX_IFNAME_LEN, check_name, invalid, quoted,
};

/// The tunnel format of a virtual network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelEncapsulation {
    /// VXLAN (RFC 7348), UDP port 4789 by default.
    Vxlan,
    /// Geneve (RFC 8926), UDP port 6081 by default; options are carried
    /// through.
    Geneve,
    /// GUE variant 0 (draft-ietf-intarea-gue); the port must be configured.
    Gue,
}

impl TunnelEncapsulation {
    /// The IANA port, where there is one.
    pub fn default_port(self) -> Option<u16> {
        match self {
            Self::Vxlan => Some(tunsec_wire::vxlan::PORT),
            Self::Geneve => Some(tunsec_wire::geneve::PORT),
            Self::Gue => None,
        }
    }
}

/// The MTU of a TAP device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtu {
    /// The underlay MTU minus the worst-case overhead.
    Auto,
    /// A fixed value.
    Fixed(u16),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub(super) name: String,
    pub(super) vni: u32,
    pub(super) encapsulation: TunnelEncapsulation,
    pub(super) port: Option<u16>,
    pub(super) tap: Option<String>,
    pub(super) bridge: Option<String>,
    pub(super) mtu: Option<toml::Value>,
    #[serde(default)]
    pub(super) fdb: Vec<RawFdbEntry>,
    pub(super) layout: Option<NetworkLayout>,
}

/// Where ESP goes in a network's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkLayout {
    /// ESP in UDP on `esp.port`, the tunnel datagram inside (the default;
    /// what strongSwan and the kernel speak).
    #[default]
    EspInUdp,
    /// The Encrypted VXLAN layout, tunsec to tunsec only: the VXLAN
    /// header (and VNI) in the clear on the tunnel port, then ESP sealing
    /// the frame. Needs keys per network with every peer of the network.
    EncryptedVxlan,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFdbEntry {
    pub(super) mac: String,
    pub(super) peer: String,
}

/// A virtual network.
#[derive(Debug, Clone)]
pub struct Network {
    /// Its name.
    pub name: String,
    /// Its VNI (24 bits).
    pub vni: u32,
    /// The tunnel format.
    pub encapsulation: TunnelEncapsulation,
    /// The tunnel's UDP port.
    pub port: u16,
    /// The TAP device name.
    pub tap: String,
    /// An existing Linux bridge that tunsecd enslaves the TAP device to
    /// at every start (a restart makes a new TAP device).
    pub bridge: Option<String>,
    /// The TAP device MTU.
    pub mtu: Mtu,
    /// Static forwarding entries: MAC to peer name.
    pub fdb: Vec<(EthernetAddress, String)>,
    /// Where ESP goes in its packets.
    pub layout: NetworkLayout,
}

/// Every `[[network]]`: each valid, and no two with the same name, VNI
/// (on one encapsulation and port), TAP device, or port of different
/// encapsulations.
pub(super) fn validate_networks(
    raw: Vec<RawNetwork>,
    peer_names: &HashSet<&str>,
    esp: EspSettings,
) -> Result<Vec<Network>, ConfigError> {
    let mut networks = Vec::with_capacity(raw.len());
    let mut names = HashSet::new();
    let mut vnis = HashSet::new();
    let mut taps = HashSet::new();
    for (i, n) in raw.into_iter().enumerate() {
        let net = validate_network(i, n, peer_names, esp)?;
        if !names.insert(net.name.clone()) {
            return Err(invalid(
                format!("network[{i}].name"),
                quoted(&net.name),
                "is used by another network",
            ));
        }
        if !vnis.insert((net.encapsulation, net.port, net.vni)) {
            return Err(invalid(
                format!("network[{i}].vni"),
                net.vni,
                "is used by another network of the same encapsulation and port",
            ));
        }
        if let Some(other) = networks
            .iter()
            .find(|o: &&Network| o.port == net.port && o.encapsulation != net.encapsulation)
        {
            return Err(invalid(
                format!("network[{i}].port"),
                net.port,
                format!(
                    "is already the {:?} port of network {:?}; one port carries one encapsulation",
                    other.encapsulation, other.name
                ),
            ));
        }
        if !taps.insert(net.tap.clone()) {
            return Err(invalid(
                format!("network[{i}].tap"),
                quoted(&net.tap),
                "is used by another network",
            ));
        }
        networks.push(net);
    }

    Ok(networks)
}

fn validate_network(
    i: usize,
    raw: RawNetwork,
    peer_names: &HashSet<&str>,
    esp: EspSettings,
) -> Result<Network, ConfigError> {
    let f = |name: &str| format!("network[{i}].{name}");
    check_name(&f("name"), &raw.name)?;
    if tunsec_wire::vxlan::Vni::new(raw.vni).is_none() {
        return Err(invalid(
            f("vni"),
            raw.vni,
            "does not fit in 24 bits (0..=16777215)",
        ));
    }
    let port = match (raw.port, raw.encapsulation.default_port()) {
        (Some(0), _) => return Err(invalid(f("port"), 0, "is not a usable port")),
        (Some(p), _) => p,
        (None, Some(p)) => p,
        (None, None) => {
            return Err(invalid(
                f("port"),
                "(missing)",
                "is required for gue: the GUE draft assigns no port",
            ));
        }
    };
    if esp.encapsulation == EspEncapsulation::Udp && port == esp.port {
        return Err(invalid(
            f("port"),
            port,
            "is the ESP-in-UDP port (esp.port)",
        ));
    }
    let tap = raw.tap.unwrap_or_else(|| format!("ts-{}", raw.name));
    let ifname = |field: &str, name: &str| {
        if name.is_empty()
            || name.len() > MAX_IFNAME_LEN
            || name.contains(['/', ' ', '\0'])
            || name == "."
            || name == ".."
        {
            return Err(invalid(
                f(field),
                quoted(name),
                format!(
                    "is not a valid interface name (1 to {MAX_IFNAME_LEN} characters, no '/' or spaces)"
                ),
            ));
        }
        Ok(())
    };
    ifname("tap", &tap)?;
    if let Some(bridge) = &raw.bridge {
        ifname("bridge", bridge)?;
        if *bridge == tap {
            return Err(invalid(
                f("bridge"),
                quoted(bridge),
                "is the network's own TAP device; name the existing bridge to enslave it to",
            ));
        }
    }
    let mtu = match raw.mtu {
        None => Mtu::Auto,
        Some(toml::Value::String(s)) if s == "auto" => Mtu::Auto,
        Some(toml::Value::Integer(n)) if (576..=65_000).contains(&n) => Mtu::Fixed(n as u16),
        Some(v) => {
            return Err(invalid(
                f("mtu"),
                v,
                "must be \"auto\" or a number from 576 to 65000",
            ));
        }
    };
    let mut fdb = Vec::with_capacity(raw.fdb.len());
    for (j, e) in raw.fdb.into_iter().enumerate() {
        let mac = parse_mac(&e.mac).ok_or_else(|| {
            invalid(
                format!("network[{i}].fdb[{j}].mac"),
                quoted(&e.mac),
                "is not a MAC address like 02:00:00:00:00:01",
            )
        })?;
        if !mac.is_unicast() {
            return Err(invalid(
                format!("network[{i}].fdb[{j}].mac"),
                quoted(&e.mac),
                "must be a unicast MAC address",
            ));
        }
        if !peer_names.contains(e.peer.as_str()) {
            return Err(invalid(
                format!("network[{i}].fdb[{j}].peer"),
                quoted(&e.peer),
                "is not the name of a peer",
            ));
        }
        fdb.push((mac, e.peer));
    }
    let layout = raw.layout.unwrap_or_default();
    if layout == NetworkLayout::EncryptedVxlan && raw.encapsulation != TunnelEncapsulation::Vxlan {
        return Err(invalid(
            f("layout"),
            "\"encrypted_vxlan\"",
            format!(
                "needs encapsulation = \"vxlan\", not {:?}",
                format!("{:?}", raw.encapsulation).to_lowercase()
            ),
        ));
    }
    Ok(Network {
        name: raw.name,
        vni: raw.vni,
        encapsulation: raw.encapsulation,
        port,
        tap,
        bridge: raw.bridge,
        mtu,
        fdb,
        layout,
    })
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<EthernetAddress> {
    let mut bytes = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut bytes {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(EthernetAddress(bytes))
}

#[cfg(test)]
mod test {
    use super::super::testing::*;
    use super::*;

    /// `layout = "encrypted_vxlan"`: VXLAN only, and every peer of the
    /// network with `require` and keys per network.
    #[test]
    fn encrypted_vxlan_needs_vxlan_require_and_keys_per_network() {
        let encrypted = |ike: &str| {
            ike_config(ike).replacen(
                "encapsulation = \"vxlan\"\n",
                "encapsulation = \"vxlan\"\nlayout = \"encrypted_vxlan\"\n",
                1,
            )
        };
        let psk = b"a key long enough for the test";
        let keys = "[peer.ike]\npsk_file = \"b.psk\"\nkeys = \"per_network\"\n";
        let c = parse_ike(&encrypted(keys), psk).unwrap();
        assert_eq!(c.networks[0].layout, NetworkLayout::EncryptedVxlan);
        assert_eq!(c.networks[1].layout, NetworkLayout::EspInUdp);
        assert_ike_invalid(&encrypted(IKE_PEER), psk, "peer[0].ike.keys", "\"shared\"");
        assert_ike_invalid(
            &encrypted(keys).replace(
                "policies = { red = \"clear\" }",
                "policies = { blue = \"prefer\" }",
            ),
            psk,
            "peer[0].policies.blue",
            "\"prefer\"",
        );
        assert_invalid(
            &BASE.replacen(
                "port = 6080\n",
                "port = 6080\nlayout = \"encrypted_vxlan\"\n",
                1,
            ),
            "network[1].layout",
            "\"encrypted_vxlan\"",
        );
        // Manual keys have no per-network SA.
        assert_invalid(
            &BASE.replacen(
                "encapsulation = \"vxlan\"\n",
                "encapsulation = \"vxlan\"\nlayout = \"encrypted_vxlan\"\n",
                1,
            ),
            "peer[0].ike.keys",
            "(no [peer.ike])",
        );
    }

    #[test]
    fn network_errors_name_the_field_and_value() {
        assert_invalid(
            &BASE.replace("vni = 100", "vni = 16777216"),
            "network[0].vni",
            "16777216",
        );
        assert_invalid(
            &BASE.replace("port = 6080\n", ""),
            "network[1].port",
            "(missing)",
        );
        assert_invalid(
            &BASE.replace("port = 6080", "port = 4500"),
            "network[1].port",
            "4500",
        );
        assert_invalid(
            &BASE.replace("mtu = 1360", "mtu = 100"),
            "network[1].mtu",
            "100",
        );
        assert_invalid(
            &BASE.replace("peer = \"host-b\"", "peer = \"host-z\""),
            "network[1].fdb[0].peer",
            "\"host-z\"",
        );
        assert_invalid(
            &BASE.replace("02:00:00:00:00:0b", "01:00:5e:00:00:01"),
            "network[1].fdb[0].mac",
            "\"01:00:5e:00:00:01\"",
        );
        assert_invalid(
            &BASE.replace("name = \"red\"", "name = \"blue\""),
            "network[1].name",
            "\"blue\"",
        );
        assert_invalid(
            &BASE
                .replace("vni = 200", "vni = 100\nport = 4789")
                .replace("\"gue\"", "\"vxlan\"")
                .replace("port = 6080\n", ""),
            "network[1].vni",
            "100",
        );
        // GUE on the VXLAN port: one port, one encapsulation.
        assert_invalid(
            &BASE.replace("port = 6080", "port = 4789"),
            "network[1].port",
            "4789",
        );
        assert_invalid(
            &BASE.replace(
                "vni = 100",
                "vni = 100\ntap = \"a-very-long-interface-name\"",
            ),
            "network[0].tap",
            "\"a-very-long-interface-name\"",
        );
        assert_invalid(
            &BASE.replace("vni = 100", "vni = 100\nbridge = \"br/blue\""),
            "network[0].bridge",
            "\"br/blue\"",
        );
        assert_invalid(
            &BASE.replace("vni = 100", "vni = 100\nbridge = \"ts-blue\""),
            "network[0].bridge",
            "\"ts-blue\"",
        );
        let bridged = parse(&BASE.replace("vni = 100", "vni = 100\nbridge = \"br-blue\"")).unwrap();
        assert_eq!(bridged.networks[0].bridge.as_deref(), Some("br-blue"));
        assert_eq!(parse(BASE).unwrap().networks[0].bridge, None);
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:00:00:00:00:0b"),
            Some(EthernetAddress([2, 0, 0, 0, 0, 0x0b]))
        );
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:0b:0c"), None);
        assert_eq!(parse_mac("2:00:00:00:00:0b"), None);
        assert_eq!(parse_mac("zz:00:00:00:00:0b"), None);
    }
}
