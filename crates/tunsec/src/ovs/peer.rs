//! A tunnel of the OVS contract as a gateway-mode peer.
//!
//! The peer is written as the `[[peer]]` section a user would write and
//! read with the configuration's own validation, so a tunnel from the
//! database is held to exactly the rules of one from a file (key file
//! modes, certificates that match their keys, identities in the
//! certificate), and an error names the option at fault.
//!
//! What the stock stack configures (`ovs-monitor-ipsec`'s strongSwan
//! templates), and what the peer gets:
//! - selectors: the tunnel's port, both ways (`udp/4789`, `udp/6081`,
//!   `tcp/7471`), or all of IP protocol 47 for GRE;
//! - PSK: `authby=psk` with the hosts' addresses as identities, as
//!   `[peer.ike]` does by default;
//! - certificates: `leftid=$local_name`, `rightid=$remote_name`, where
//!   `local_name` is our certificate's CN: `local_id = "fqdn:CN"` and
//!   `remote_id = "fqdn:remote_name"`, the peer's CN;
//!   `rightcert=$remote_cert` pins the peer's certificate (`pin_cert`),
//!   `ca_cert` makes it the CA (`ca`);
//! - proposals: ours first, then the stock `aes256gcm16-sha256-modp2048`
//!   (IKE) and `aes256gcm16-modp2048` (ESP: strongSwan's CREATE_CHILD_SA
//!   insists on its D-H group, PFS), so that a chassis that still runs
//!   the stock stack finds one it knows;
//! - Child SAs: `layout = "split"`, the stock stack's two per tunnel with
//!   ports (`leftprotoport=udp/4789 rightprotoport=udp` and the reverse),
//!   so that a stock chassis finds the ones it expects, and each of them
//!   covers the vxlan device's per-flow source ports.

use std::ffi::OsString;
use std::path::Path;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::{OvsTunnel, PeerTrust, TunnelAuth};
use crate::config::{ChildMode, Config, EspEncapsulation, Peer};

/// The IKE proposals of a tunnel from the database: tunsec's defaults,
/// then the one the stock stack offers.
pub const IKE_PROPOSALS: [&str; 4] = [
    "aes128gcm16-prfsha256-x25519",
    "aes256gcm16-prfsha384-ecp384",
    "aes256-sha256-modp2048",
    "aes256gcm16-prfsha256-modp2048",
];

/// The ESP proposals of a tunnel from the database: tunsec's defaults,
/// then the one the stock stack offers, with its D-H group for PFS.
pub const ESP_PROPOSALS: [&str; 4] = [
    "aes128gcm16",
    "aes256gcm16",
    "aes256-sha256",
    "aes256gcm16-modp2048",
];

/// The name under which the row's PSK is handed to the configuration's
/// `psk_env` (never the process's environment).
const PSK_VARIABLE: &str = "OVS_TUNNEL_PSK";

/// `tunnel` as a gateway peer of `running` (whose `[node]`, `[esp]` and
/// `[gateway]` it shares), or why it cannot be one.
pub fn peer_of(tunnel: &OvsTunnel, running: &Config) -> Result<Peer, String> {
    let local = running.node.underlay;
    if let Some(l) = tunnel.local_ip.filter(|&l| l != local) {
        return Err(format!(
            "options:local_ip {l} is not this host's underlay address {local}"
        ));
    }
    if tunnel.remote_ip == local {
        return Err(format!(
            "options:remote_ip {} is this host's own address",
            tunnel.remote_ip
        ));
    }
    let text = section(tunnel, running)?;
    let env = |name: &str| match (&tunnel.auth, name) {
        (TunnelAuth::Psk(psk), PSK_VARIABLE) => Some(OsString::from(psk)),
        _ => None,
    };
    let config = Config::parse_with_env(&text, Path::new("/"), &env)
        .map_err(|e| e.to_string().replace("peer[0].", ""))?;
    config
        .peers
        .into_iter()
        .next()
        .ok_or_else(|| "no peer came of it".to_owned())
}

/// A TOML string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The configuration text of `tunnel`'s peer, under the running
/// configuration's `[node]`, `[esp]` and `[gateway] mode`.
fn section(tunnel: &OvsTunnel, running: &Config) -> Result<String, String> {
    let mode = match running.gateway.as_ref().map(|g| g.mode) {
        Some(ChildMode::Tunnel) => "tunnel",
        _ => "transport",
    };
    let encapsulation = match running.esp.encapsulation {
        EspEncapsulation::Udp => "udp",
        EspEncapsulation::Esp => "esp",
    };
    let mut t = format!(
        "[node]\nname = {}\nunderlay = {}\n\
         [esp]\nencapsulation = \"{encapsulation}\"\nport = {}\n\
         [gateway]\nmode = \"{mode}\"\n\
         [[peer]]\nname = {}\nunderlay = {}\n",
        quote(&running.node.name),
        quote(&running.node.underlay.to_string()),
        running.esp.port,
        quote(&tunnel.name),
        quote(&tunnel.remote_ip.to_string()),
    );
    for s in tunnel.kind.selectors() {
        if s.has_ports() {
            let proto = if s.protocol == 6 { "tcp" } else { "udp" };
            t.push_str(&format!(
                "[[peer.selector]]\nprotocol = \"{proto}\"\nports = {}\n",
                s.ports.start()
            ));
        } else {
            t.push_str("[[peer.selector]]\nprotocol = \"gre\"\n");
        }
    }
    let list = |l: &[&str]| l.iter().map(|p| quote(p)).collect::<Vec<_>>().join(", ");
    t.push_str(&format!(
        "[peer.ike]\nmode = \"{mode}\"\nlayout = \"split\"\nike_proposals = [{}]\nesp_proposals = [{}]\n",
        list(&IKE_PROPOSALS),
        list(&ESP_PROPOSALS)
    ));
    match &tunnel.auth {
        TunnelAuth::Psk(_) => t.push_str(&format!("psk_env = \"{PSK_VARIABLE}\"\n")),
        TunnelAuth::Cert {
            certificate,
            private_key,
            peer,
        } => {
            let cn = common_name(certificate)?;
            t.push_str(&format!(
                "auth = \"cert\"\ncert = {}\nkey = {}\nlocal_id = {}\n",
                quote(&certificate.to_string_lossy()),
                quote(&private_key.to_string_lossy()),
                quote(&format!("fqdn:{cn}")),
            ));
            match peer {
                PeerTrust::Pinned { remote_cert } => {
                    t.push_str(&format!(
                        "pin_cert = {}\n",
                        quote(&remote_cert.to_string_lossy())
                    ));
                }
                PeerTrust::Ca {
                    ca_cert,
                    remote_name,
                } => t.push_str(&format!(
                    "ca = [{}]\nremote_id = {}\n",
                    quote(&ca_cert.to_string_lossy()),
                    quote(&format!("fqdn:{remote_name}"))
                )),
            }
        }
    }
    Ok(t)
}

/// The CN of the certificate in `path` (PEM or DER): the name the stock
/// stack gives this host (`local_name`).
fn common_name(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("other_config:certificate {}: {e}", path.display()))?;
    let der = match x509_parser::pem::parse_x509_pem(&bytes) {
        Ok((_, pem)) => pem.contents,
        Err(_) => bytes,
    };
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| {
        format!(
            "other_config:certificate {}: not a certificate: {e}",
            path.display()
        )
    })?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "other_config:certificate {}: its subject has no CN",
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovs::{InterfaceRow, Pki, tunnel};

    fn running() -> Config {
        Config::parse(
            "[node]\nname = \"c1\"\nunderlay = \"192.0.2.1\"\n[gateway]\n",
            Path::new("."),
        )
        .unwrap()
    }

    fn row(kind: &str, options: &[(&str, &str)]) -> InterfaceRow {
        InterfaceRow {
            name: "ovn-c2-0".into(),
            kind: kind.into(),
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn a_psk_vxlan_tunnel_is_a_peer_with_its_port() {
        let r = row("vxlan", &[("remote_ip", "192.0.2.2"), ("psk", "swordfish")]);
        let t = tunnel(&r, &Pki::default()).unwrap().unwrap();
        let p = peer_of(&t, &running()).unwrap();
        assert_eq!(p.name, "ovn-c2-0");
        assert_eq!(p.underlay, "192.0.2.2".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(p.selectors.len(), 1);
        assert_eq!(
            (p.selectors[0].protocol, p.selectors[0].ports.clone()),
            (17, 4789..=4789)
        );
        let ike = p.ike.unwrap();
        assert_eq!(ike.psk.expose(), b"swordfish");
        assert_eq!(ike.ike_proposals.len(), IKE_PROPOSALS.len());
        assert_eq!(ike.esp_proposals.len(), ESP_PROPOSALS.len());
        assert_eq!(ike.layout, crate::config::ChildLayout::Split);
    }

    #[test]
    fn gre_takes_the_whole_protocol() {
        let r = row("gre", &[("remote_ip", "192.0.2.2"), ("psk", "swordfish")]);
        let p = peer_of(&tunnel(&r, &Pki::default()).unwrap().unwrap(), &running()).unwrap();
        assert_eq!(p.selectors[0].protocol, 47);
        assert!(!p.selectors[0].has_ports());
    }

    #[test]
    fn errors_name_the_option() {
        let local = row(
            "vxlan",
            &[
                ("remote_ip", "192.0.2.2"),
                ("local_ip", "192.0.2.9"),
                ("psk", "k"),
            ],
        );
        let t = tunnel(&local, &Pki::default()).unwrap().unwrap();
        let e = peer_of(&t, &running()).unwrap_err();
        assert!(e.contains("options:local_ip 192.0.2.9"), "{e}");
        let ours = row("vxlan", &[("remote_ip", "192.0.2.1"), ("psk", "k")]);
        let e = peer_of(
            &tunnel(&ours, &Pki::default()).unwrap().unwrap(),
            &running(),
        )
        .unwrap_err();
        assert!(e.contains("own address"), "{e}");
        let pki = Pki {
            certificate: Some("/nonexistent/c1.pem".into()),
            private_key: Some("/nonexistent/c1.key".into()),
            ca_cert: Some("/nonexistent/ca.pem".into()),
        };
        let cert = row(
            "geneve",
            &[("remote_ip", "192.0.2.2"), ("remote_name", "c2")],
        );
        let e = peer_of(&tunnel(&cert, &pki).unwrap().unwrap(), &running()).unwrap_err();
        assert!(
            e.contains("other_config:certificate /nonexistent/c1.pem"),
            "{e}"
        );
    }
}
