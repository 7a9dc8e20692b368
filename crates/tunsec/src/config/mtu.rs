//! The MTU of each network's TAP device: `mtu = "auto"` is what fits the
//! underlay, and a fixed `mtu` that does not fit is refused when the
//! config is validated, with the largest that does. Both use the data
//! path's own worst-case overhead ([`overlay::frame_overhead`]), which the
//! daemon sizes its frames by.

use tunsec_datapath::overlay::{self, TunnelEncap};
use tunsec_datapath::packet::EspTransport;
use tunsec_wire::ethernet;

use super::{
    ChildMode, Config, ConfigError, EspEncapsulation, EspSettings, Mtu, Network,
    TunnelEncapsulation, invalid,
};

/// The smallest IP packet a network must carry: every IPv4 host accepts
/// 576-byte datagrams (RFC 791).
const MIN_PACKET: usize = 576;

/// The TAP MTU and the largest frame of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkMtu {
    /// The TAP device's MTU (IP packet size inside the frame).
    pub mtu: u16,
    /// The largest frame carried, Ethernet header included.
    pub max_frame: usize,
}

impl EspSettings {
    /// How the data path sends ESP.
    pub fn transport(&self) -> EspTransport {
        match self.encapsulation {
            EspEncapsulation::Udp => EspTransport::Udp(self.port),
            EspEncapsulation::Esp => EspTransport::Raw,
        }
    }
}

impl TunnelEncapsulation {
    /// The data path's name for this tunnel format.
    pub fn datapath(self) -> TunnelEncap {
        match self {
            Self::Vxlan => TunnelEncap::Vxlan,
            Self::Geneve => TunnelEncap::Geneve,
            Self::Gue => TunnelEncap::Gue,
        }
    }
}

impl Config {
    /// The worst-case growth of a frame of `net` on its way to the
    /// underlay ([`overlay::frame_overhead`]), with tunnel mode's inner IP
    /// header when a peer that carries the network has `[peer.ike] mode =
    /// "tunnel"`.
    pub fn frame_overhead(&self, net: &Network) -> usize {
        let tunnel_mode = self.peers.iter().any(|p| {
            p.ike
                .as_ref()
                .is_some_and(|ike| ike.mode == ChildMode::Tunnel)
                && p.networks.iter().any(|(name, _)| *name == net.name)
        });
        overlay::frame_overhead(
            self.node.underlay.is_ipv6(),
            self.esp.transport(),
            net.encapsulation.datapath(),
            tunnel_mode,
        )
    }

    /// Works out a network's MTU: `auto` is the underlay MTU less the
    /// worst-case overhead and the inner Ethernet header; a fixed MTU
    /// allows one 802.1Q tag on top, and must fit the underlay as well.
    /// Validation has already refused what does not fit.
    pub fn network_mtu(&self, net: &Network) -> Result<NetworkMtu, ConfigError> {
        let overhead = self.frame_overhead(net);
        let underlay_mtu = self.node.underlay_mtu;
        let room = usize::from(underlay_mtu).saturating_sub(overhead);
        match net.mtu {
            Mtu::Auto => {
                if room < MIN_PACKET + ethernet::HEADER_LEN {
                    return Err(invalid(
                        "node.underlay_mtu",
                        underlay_mtu,
                        format!(
                            "leaves no room for a {MIN_PACKET}-byte packet on network {:?} after {overhead} bytes of tunnel and ESP overhead",
                            net.name
                        ),
                    ));
                }
                Ok(NetworkMtu {
                    mtu: (room - ethernet::HEADER_LEN) as u16,
                    max_frame: room,
                })
            }
            Mtu::Fixed(mtu) => {
                let largest = room.saturating_sub(ethernet::TAGGED_HEADER_LEN);
                if usize::from(mtu) > largest {
                    let i = self.networks.iter().position(|n| n.name == net.name);
                    let field = match i {
                        Some(i) => format!("network[{i}].mtu"),
                        None => format!("network {:?} mtu", net.name),
                    };
                    return Err(invalid(
                        field,
                        mtu,
                        format!(
                            "does not fit the underlay: the largest MTU that fits is {largest} (node.underlay_mtu {underlay_mtu} less {overhead} bytes of tunnel and ESP overhead and {} of Ethernet header with one 802.1Q tag); set {largest} or less, or mtu = \"auto\", or raise node.underlay_mtu if the underlay carries more",
                            ethernet::TAGGED_HEADER_LEN
                        ),
                    ));
                }
                Ok(NetworkMtu {
                    mtu,
                    max_frame: usize::from(mtu) + ethernet::TAGGED_HEADER_LEN,
                })
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// One VXLAN network on an IPv4 underlay of `underlay_mtu`, with an
    /// IKE peer in `mode`.
    fn config(mtu: &str, extra_node: &str, esp: &str, mode: &str) -> String {
        format!(
            "[node]\nname = \"a\"\nunderlay = \"192.0.2.1\"\n{extra_node}\n{esp}\n\
             [[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\n{mtu}\n\
             [[network]]\nname = \"red\"\nvni = 200\nencapsulation = \"geneve\"\n\n\
             [[peer]]\nname = \"b\"\nunderlay = \"192.0.2.2\"\nnetworks = [\"blue\", \"red\"]\n\n\
             [peer.ike]\npsk_file = \"b.psk\"\nmode = \"{mode}\"\n"
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        super::super::write_secret(dir.path().join("b.psk"), "k").unwrap();
        Config::parse(text, dir.path())
    }

    fn refused(text: &str) -> (String, String, String) {
        super::super::testing::refused(parse(text))
    }

    #[test]
    fn auto_is_what_fits() {
        let c = parse(&config("", "", "", "transport")).unwrap();
        // docs/config.md: 1385 for IPv4, ESP in UDP and VXLAN on 1500.
        let m = c.network_mtu(&c.networks[0]).unwrap();
        assert_eq!(
            m,
            NetworkMtu {
                mtu: 1385,
                max_frame: 1399
            }
        );
        let c = parse(&config("", "", "", "tunnel")).unwrap();
        assert_eq!(c.network_mtu(&c.networks[0]).unwrap().mtu, 1365);
    }

    #[test]
    fn a_fixed_mtu_that_fits_is_kept() {
        // 1500 - 101 bytes of overhead - 18 of tagged Ethernet header.
        let c = parse(&config("mtu = 1381", "", "", "transport")).unwrap();
        let m = c.network_mtu(&c.networks[0]).unwrap();
        assert_eq!(
            m,
            NetworkMtu {
                mtu: 1381,
                max_frame: 1399
            }
        );
        let c = parse(&config(
            "mtu = 8881",
            "underlay_mtu = 9000",
            "",
            "transport",
        ))
        .unwrap();
        assert_eq!(c.network_mtu(&c.networks[0]).unwrap().mtu, 8881);
        // Raw ESP has no UDP header: 8 bytes more.
        let raw = "[esp]\nencapsulation = \"esp\"\n";
        parse(&config("mtu = 1389", "", raw, "transport")).unwrap();
    }

    #[test]
    fn a_fixed_mtu_that_does_not_fit_is_refused() {
        for (mtu, node, esp, mode, largest) in [
            (9000, "", "", "transport", 1381),
            (1382, "", "", "transport", 1381),
            // Tunnel mode's inner IPv4 header.
            (1381, "", "", "tunnel", 1361),
            (
                1390,
                "",
                "[esp]\nencapsulation = \"esp\"\n",
                "transport",
                1389,
            ),
            (9000, "underlay_mtu = 8000", "", "transport", 7881),
        ] {
            let text = config(&format!("mtu = {mtu}"), node, esp, mode);
            let (field, value, reason) = refused(&text);
            assert_eq!((field.as_str(), value), ("network[0].mtu", mtu.to_string()));
            assert!(
                reason.contains(&format!("the largest MTU that fits is {largest} ")),
                "{mtu} {mode}: {reason}"
            );
        }
        // The error reads as one sentence.
        let err = parse(&config("mtu = 9000", "", "", "transport")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("network[0].mtu: 9000 does not fit the underlay: the largest MTU that fits is 1381 (node.underlay_mtu 1500 less 101 bytes"),
            "{err}"
        );
    }

    #[test]
    fn an_underlay_too_small_for_auto_is_refused() {
        let (field, value, reason) = refused(&config("", "underlay_mtu = 600", "", "transport"));
        assert_eq!(
            (field.as_str(), value.as_str()),
            ("node.underlay_mtu", "600")
        );
        assert!(reason.contains("\"blue\""), "{reason}");
    }
}
