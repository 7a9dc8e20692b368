//! The contract of Open vSwitch's IPsec, as `ovs-monitor-ipsec` 3.1
//! reads it from the local OVSDB: which tunnel interfaces need IPsec,
//! what they carry, and how the two ends authenticate. Pure functions
//! over an `Interface` row and `Open_vSwitch:other_config`. [`peer`]
//! turns a tunnel into a gateway peer; [`watch`] follows the database
//! and keeps the peers in step with it.
//!
//! The rules, from the script (`IPsecTunnel.update_conf` and
//! `_is_valid_tunnel_conf`):
//! - A tunnel of type `gre`, `geneve`, `vxlan` or `stt` needs IPsec when
//!   its options hold `psk`, `remote_name` or `remote_cert`.
//! - `remote_ip` is required; `local_ip` is optional.
//! - PSK: `psk`, and none of `certificate`, `private_key`, `ca_cert`
//!   (global) or `remote_cert`, `remote_name` (the tunnel's).
//! - Certificates: `remote_name` (or `remote_cert`, whose CN is the
//!   name), `certificate` and `private_key`, and one of `remote_cert` (a
//!   pinned self-signed peer) or `ca_cert` (a CA-signed peer named
//!   `remote_name`).
//! - `ipsec_X=V` options go to the IKE daemon as `X=V`; OVN sets
//!   `ipsec_encapsulation=yes` to force UDP encapsulation.
//!
//! The stock stack protects a vxlan tunnel's UDP 4789 and a geneve
//! tunnel's UDP 6081 whatever the interface's `dst_port`; tunsec follows
//! `dst_port` when it is set, since that is where the traffic goes.

pub mod peer;
pub mod unixctl;
pub mod watch;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use tunsec_datapath::gateway::{GRE, GatewaySelector};

/// The tunnel types `ovs-monitor-ipsec` configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    /// VXLAN, UDP (4789 unless `dst_port`).
    Vxlan {
        /// The UDP port.
        port: u16,
    },
    /// Geneve, UDP (6081 unless `dst_port`).
    Geneve {
        /// The UDP port.
        port: u16,
    },
    /// GRE, IP protocol 47 (also `gre64`'s wire format).
    Gre,
    /// STT, TCP 7471.
    Stt,
}

impl TunnelKind {
    /// The gateway selectors of the tunnel's traffic.
    pub fn selectors(self) -> Vec<GatewaySelector> {
        let one = |protocol, port| GatewaySelector {
            protocol,
            ports: port..=port,
        };
        match self {
            Self::Vxlan { port } | Self::Geneve { port } => vec![one(17, port)],
            Self::Gre => vec![GatewaySelector::whole_protocol(GRE)],
            Self::Stt => vec![one(6, 7471)],
        }
    }
}

/// How the two ends of a tunnel authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelAuth {
    /// A pre-shared key (the option's value; never printed by `Debug` of
    /// [`OvsTunnel`]).
    Psk(String),
    /// Our certificate and key; the peer pinned by its self-signed
    /// certificate (`remote_cert`), or named `remote_name` and signed by
    /// `ca_cert`.
    Cert {
        /// Our certificate (`Open_vSwitch:other_config:certificate`).
        certificate: PathBuf,
        /// Our key (`other_config:private_key`).
        private_key: PathBuf,
        /// How the peer is trusted.
        peer: PeerTrust,
    },
}

/// How a certificate peer is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerTrust {
    /// Its own self-signed certificate, pinned.
    Pinned {
        /// The certificate file.
        remote_cert: PathBuf,
    },
    /// Signed by the CA, with CN = `remote_name`.
    Ca {
        /// The CA's certificate (`other_config:ca_cert`).
        ca_cert: PathBuf,
        /// The peer's name (for OVN, its chassis system-id).
        remote_name: String,
    },
}

/// A tunnel interface that needs IPsec, as the contract describes it.
#[derive(Clone, PartialEq, Eq)]
pub struct OvsTunnel {
    /// The interface's name.
    pub name: String,
    /// Its type and ports.
    pub kind: TunnelKind,
    /// The peer's address.
    pub remote_ip: IpAddr,
    /// Our address, if set.
    pub local_ip: Option<IpAddr>,
    /// How the ends authenticate.
    pub auth: TunnelAuth,
    /// `ipsec_X=V` options, as `X` -> `V`.
    pub custom: BTreeMap<String, String>,
}

impl OvsTunnel {
    /// Whether UDP encapsulation is forced (`ipsec_encapsulation=yes`,
    /// which OVN sets).
    pub fn force_encapsulation(&self) -> bool {
        self.custom.get("encapsulation").is_some_and(|v| v == "yes")
    }
}

impl std::fmt::Debug for OvsTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            TunnelAuth::Psk(_) => "psk <redacted>".to_owned(),
            TunnelAuth::Cert { peer, .. } => format!("cert {peer:?}"),
        };
        f.debug_struct("OvsTunnel")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("remote_ip", &self.remote_ip)
            .field("local_ip", &self.local_ip)
            .field("auth", &auth)
            .field("custom", &self.custom)
            .finish()
    }
}

/// One row of the `Interface` table: the columns the contract reads.
#[derive(Debug, Clone, Default)]
pub struct InterfaceRow {
    /// `name`.
    pub name: String,
    /// `type`.
    pub kind: String,
    /// `options`.
    pub options: BTreeMap<String, String>,
}

/// `Open_vSwitch:other_config`'s PKI keys.
#[derive(Debug, Clone, Default)]
pub struct Pki {
    /// `certificate`.
    pub certificate: Option<PathBuf>,
    /// `private_key`.
    pub private_key: Option<PathBuf>,
    /// `ca_cert`.
    pub ca_cert: Option<PathBuf>,
}

impl Pki {
    /// The PKI keys of an `other_config` map.
    pub fn from_other_config(other_config: &BTreeMap<String, String>) -> Self {
        let path = |k: &str| {
            other_config
                .get(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            certificate: path("certificate"),
            private_key: path("private_key"),
            ca_cert: path("ca_cert"),
        }
    }
}

/// The tables and columns the contract reads, for a monitor request:
/// `Interface` (`name`, `type`, `options`) and `Open_vSwitch`
/// (`other_config`).
pub const MONITORED: [(&str, &[&str]); 2] = [
    ("Interface", &["name", "type", "options"]),
    ("Open_vSwitch", &["other_config"]),
];

/// The `Interface` rows and the PKI keys of `Open_vSwitch:other_config`
/// in a cache of the vswitch database, rows sorted by name.
pub fn from_cache(cache: &tunsec_ovsdb::Cache) -> (Vec<InterfaceRow>, Pki) {
    let owned = |m: BTreeMap<&str, &str>| {
        m.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    let mut rows: Vec<InterfaceRow> = cache
        .table("Interface")
        .into_iter()
        .flat_map(|t| t.rows())
        .map(|(_, r)| InterfaceRow {
            name: r.str("name").to_owned(),
            kind: r.str("type").to_owned(),
            options: owned(r.string_map("options")),
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    // One row in Open_vSwitch; none before ovs-vsctl init.
    let pki = cache
        .table("Open_vSwitch")
        .and_then(|t| {
            t.rows()
                .next()
                .map(|(_, r)| owned(r.string_map("other_config")))
        })
        .map(|oc| Pki::from_other_config(&oc))
        .unwrap_or_default();
    (rows, pki)
}

/// Whether `row` is a tunnel that the contract protects: a supported
/// type with `psk`, `remote_name` or `remote_cert` in its options
/// (`is_tunneling_type_supported` and `is_ipsec_required`).
pub fn needs_ipsec(row: &InterfaceRow) -> bool {
    matches!(
        row.kind.as_str(),
        "gre" | "gre64" | "geneve" | "vxlan" | "stt"
    ) && ["psk", "remote_name", "remote_cert"]
        .iter()
        .any(|k| row.options.contains_key(*k))
}

/// The tunnel that `row` describes, or why it is invalid, in the words
/// of `ovs-monitor-ipsec` where it has them. `None` for a row that needs
/// no IPsec.
pub fn tunnel(row: &InterfaceRow, pki: &Pki) -> Option<Result<OvsTunnel, String>> {
    needs_ipsec(row).then(|| validate(row, pki))
}

fn validate(row: &InterfaceRow, pki: &Pki) -> Result<OvsTunnel, String> {
    let opt = |k: &str| {
        row.options
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let port = |default: u16| -> Result<u16, String> {
        match opt("dst_port") {
            None => Ok(default),
            Some(p) => p
                .parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("options:dst_port {p:?} is not a port")),
        }
    };
    let kind = match row.kind.as_str() {
        "vxlan" => TunnelKind::Vxlan { port: port(4789)? },
        "geneve" => TunnelKind::Geneve { port: port(6081)? },
        "gre" | "gre64" => TunnelKind::Gre,
        "stt" => TunnelKind::Stt,
        other => {
            return Err(format!(
                "type {other:?} is not a tunnel type IPsec supports"
            ));
        }
    };
    let remote_ip = opt("remote_ip").ok_or("'remote_ip' is not set")?;
    let remote_ip: IpAddr = remote_ip.parse().map_err(|_| {
        format!("options:remote_ip {remote_ip:?} is not an IP address (\"flow\" is not supported)")
    })?;
    let local_ip = opt("local_ip")
        .map(|l| {
            l.parse::<IpAddr>()
                .map_err(|_| format!("options:local_ip {l:?} is not an IP address"))
        })
        .transpose()?;
    if local_ip.is_some_and(|l| l.is_ipv4() != remote_ip.is_ipv4()) {
        return Err("local_ip and remote_ip are of different address families".to_owned());
    }
    let remote_cert = opt("remote_cert").map(PathBuf::from);
    let remote_name = opt("remote_name");
    let auth = if let Some(psk) = opt("psk") {
        if pki.certificate.is_some()
            || pki.private_key.is_some()
            || pki.ca_cert.is_some()
            || remote_cert.is_some()
            || remote_name.is_some()
        {
            return Err(
                "'certificate', 'private_key', 'ca_cert', 'remote_cert', and \
                        'remote_name' must be unset with PSK"
                    .to_owned(),
            );
        }
        TunnelAuth::Psk(psk.to_owned())
    } else if remote_name.is_some() || remote_cert.is_some() {
        let certificate = pki.certificate.clone().ok_or(
            "must set 'certificate' as local certificate when using CA-signed certificate \
             or self-signed certificate to authenticate peers",
        )?;
        let private_key = pki.private_key.clone().ok_or(
            "must set 'private_key' as local private key when using CA-signed certificate \
             or self-signed certificate to authenticate peers",
        )?;
        let peer = match (remote_cert, &pki.ca_cert, remote_name) {
            (Some(remote_cert), _, _) => PeerTrust::Pinned { remote_cert },
            (None, Some(ca_cert), Some(name)) => PeerTrust::Ca {
                ca_cert: ca_cert.clone(),
                remote_name: name.to_owned(),
            },
            _ => {
                return Err("must set 'remote_cert' when using self-signed certificate \
                            authentication or 'ca_cert' when using CA-signed certificate \
                            authentication"
                    .to_owned());
            }
        };
        TunnelAuth::Cert {
            certificate,
            private_key,
            peer,
        }
    } else {
        return Err("must choose a authentication method".to_owned());
    };
    let custom = row
        .options
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("ipsec_")?.to_owned(), v.clone())))
        .collect();
    Ok(OvsTunnel {
        name: row.name.clone(),
        kind,
        remote_ip,
        local_ip,
        auth,
        custom,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, options: &[(&str, &str)]) -> InterfaceRow {
        InterfaceRow {
            name: "tun1".into(),
            kind: kind.into(),
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn pki(certificate: bool, private_key: bool, ca_cert: bool) -> Pki {
        Pki {
            certificate: certificate.then(|| "/etc/ipsec.d/certs/h1.pem".into()),
            private_key: private_key.then(|| "/etc/ipsec.d/private/h1.key".into()),
            ca_cert: ca_cert.then(|| "/etc/ipsec.d/cacerts/ca.pem".into()),
        }
    }

    fn invalid(r: &InterfaceRow, p: &Pki) -> String {
        tunnel(r, p).unwrap().unwrap_err()
    }

    #[test]
    fn which_tunnels_need_ipsec() {
        assert!(needs_ipsec(&row("vxlan", &[("psk", "x")])));
        assert!(needs_ipsec(&row("geneve", &[("remote_name", "c2")])));
        assert!(needs_ipsec(&row("gre", &[("remote_cert", "/c.pem")])));
        // No IPsec option, or a type the contract does not know.
        assert!(!needs_ipsec(&row("vxlan", &[("remote_ip", "192.0.2.2")])));
        assert!(!needs_ipsec(&row("internal", &[("psk", "x")])));
        assert!(tunnel(&row("vxlan", &[]), &Pki::default()).is_none());
    }

    #[test]
    fn psk_vxlan_with_ovn_options() {
        let r = row(
            "vxlan",
            &[
                ("remote_ip", "192.0.2.2"),
                ("local_ip", "192.0.2.1"),
                ("psk", "swordfish"),
                ("key", "flow"),
                ("ipsec_encapsulation", "yes"),
            ],
        );
        let t = tunnel(&r, &Pki::default()).unwrap().unwrap();
        assert_eq!(t.kind, TunnelKind::Vxlan { port: 4789 });
        assert_eq!(t.remote_ip, "192.0.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(t.auth, TunnelAuth::Psk("swordfish".into()));
        assert!(t.force_encapsulation());
        assert!(
            !format!("{t:?}").contains("swordfish"),
            "the PSK never prints"
        );
        let sel = t.kind.selectors();
        assert_eq!((sel[0].protocol, sel[0].ports.clone()), (17, 4789..=4789));
    }

    #[test]
    fn ports_and_protocols_by_type() {
        let with = |kind: &str, extra: &[(&str, &str)]| {
            let mut o = vec![("remote_ip", "192.0.2.2"), ("psk", "k")];
            o.extend_from_slice(extra);
            tunnel(&row(kind, &o), &Pki::default())
                .unwrap()
                .unwrap()
                .kind
        };
        assert_eq!(with("geneve", &[]), TunnelKind::Geneve { port: 6081 });
        assert_eq!(
            with("vxlan", &[("dst_port", "8472")]),
            TunnelKind::Vxlan { port: 8472 }
        );
        assert_eq!(with("gre", &[]), TunnelKind::Gre);
        assert!(!TunnelKind::Gre.selectors()[0].has_ports());
        assert_eq!(TunnelKind::Stt.selectors()[0].protocol, 6);
        let bad = row(
            "vxlan",
            &[("remote_ip", "192.0.2.2"), ("psk", "k"), ("dst_port", "x")],
        );
        assert!(invalid(&bad, &Pki::default()).contains("dst_port"));
    }

    #[test]
    fn certificates_ca_signed_and_pinned() {
        // OVN: remote_name = the peer chassis, CA-signed.
        let r = row(
            "geneve",
            &[("remote_ip", "192.0.2.3"), ("remote_name", "chassis-3")],
        );
        let t = tunnel(&r, &pki(true, true, true)).unwrap().unwrap();
        match t.auth {
            TunnelAuth::Cert {
                peer: PeerTrust::Ca { remote_name, .. },
                ..
            } => assert_eq!(remote_name, "chassis-3"),
            other => panic!("{other:?}"),
        }
        // Self-signed: the peer's certificate pinned (with or without a CA).
        let r = row(
            "vxlan",
            &[
                ("remote_ip", "192.0.2.3"),
                ("remote_cert", "/etc/ipsec.d/certs/h3.pem"),
            ],
        );
        let t = tunnel(&r, &pki(true, true, false)).unwrap().unwrap();
        assert!(matches!(
            t.auth,
            TunnelAuth::Cert {
                peer: PeerTrust::Pinned { .. },
                ..
            }
        ));
    }

    #[test]
    fn invalid_combinations_say_why() {
        let base = [("remote_ip", "192.0.2.2")];
        let with = |extra: &[(&str, &str)]| {
            let mut o = base.to_vec();
            o.extend_from_slice(extra);
            row("vxlan", &o)
        };
        assert!(
            invalid(&row("vxlan", &[("psk", "k")]), &Pki::default())
                .contains("'remote_ip' is not set")
        );
        assert!(
            invalid(&with(&[("psk", "k")]), &pki(true, false, false))
                .contains("must be unset with PSK")
        );
        assert!(
            invalid(
                &with(&[("psk", "k"), ("remote_name", "c2")]),
                &Pki::default()
            )
            .contains("must be unset with PSK")
        );
        // A remote_cert without a certificate of our own.
        assert!(
            invalid(&with(&[("remote_cert", "/c.pem")]), &Pki::default())
                .contains("must set 'certificate'")
        );
        assert!(
            invalid(&with(&[("remote_name", "c2")]), &pki(true, false, true))
                .contains("must set 'private_key'")
        );
        assert!(
            invalid(&with(&[("remote_name", "c2")]), &pki(true, true, false))
                .contains("must set 'remote_cert'")
        );
        assert!(
            invalid(
                &row("vxlan", &[("remote_ip", "flow"), ("psk", "k")]),
                &Pki::default()
            )
            .contains("remote_ip")
        );
        assert!(
            invalid(
                &with(&[("psk", "k"), ("local_ip", "2001:db8::1")]),
                &Pki::default()
            )
            .contains("address families")
        );
    }

    /// The rows as ovsdb-server 3.1 sends them (update2's `initial`),
    /// through the cache, to tunnels.
    #[test]
    fn from_a_cache_of_the_vswitch_database() {
        use serde_json::json;
        use tunsec_ovsdb::{Cache, ColumnType, Notation};
        let ty = |v: serde_json::Value| ColumnType::from_json(&v).unwrap();
        let smap = json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"});
        let tables = BTreeMap::from([
            (
                "Interface".to_owned(),
                BTreeMap::from([
                    ("name".to_owned(), ty(json!("string"))),
                    ("type".to_owned(), ty(json!("string"))),
                    ("options".to_owned(), ty(smap.clone())),
                ]),
            ),
            (
                "Open_vSwitch".to_owned(),
                BTreeMap::from([("other_config".to_owned(), ty(smap))]),
            ),
        ]);
        let mut cache = Cache::new(tables);
        cache
            .resync(
                Notation::Update2,
                &json!({
                    "Interface": {
                        "532c2c64-ee67-4308-ad2d-a939ebd1992f": {"initial": {"name": "ovn-c2-0", "type": "geneve",
                            "options": ["map", [["csum", "true"], ["key", "flow"], ["local_ip", "192.0.2.1"],
                                                ["remote_ip", "192.0.2.2"], ["remote_name", "chassis-2"]]]}},
                        "9115ea55-0e51-4e49-a167-b981e2bfda07": {"initial": {"name": "br-int", "type": "internal"}},
                    },
                    "Open_vSwitch": {"5343ffe7-7b38-44be-9c44-87a45fd284e8": {"initial": {
                        "other_config": ["map", [["ca_cert", "/ca.pem"], ["certificate", "/c1.pem"], ["private_key", "/c1.key"]]]}}},
                }),
            )
            .unwrap();
        let (rows, pki) = from_cache(&cache);
        assert_eq!(
            rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["br-int", "ovn-c2-0"]
        );
        let tunnels: Vec<OvsTunnel> = rows
            .iter()
            .filter_map(|r| tunnel(r, &pki))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tunnels.len(), 1, "br-int needs no IPsec");
        assert_eq!(tunnels[0].kind, TunnelKind::Geneve { port: 6081 });
        assert!(matches!(
            &tunnels[0].auth,
            TunnelAuth::Cert { peer: PeerTrust::Ca { remote_name, .. }, .. } if remote_name == "chassis-2"
        ));
    }

    #[test]
    fn pki_from_other_config() {
        let oc: BTreeMap<String, String> = [
            ("certificate", "/c.pem"),
            ("private_key", ""),
            ("ipsec_skb_mark", "0/1"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let p = Pki::from_other_config(&oc);
        assert_eq!(p.certificate, Some(PathBuf::from("/c.pem")));
        assert_eq!(p.private_key, None, "an empty value is unset");
        assert_eq!(p.ca_cert, None);
    }
}
