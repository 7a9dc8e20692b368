//! `[[peer]]` and `[peer.sa]`: the peer hosts, the networks each carries
//! with its policy, and manually keyed SAs. `[peer.ike]` is in
//! [`super::ike`], `[[peer.selector]]` in [`super::gateway`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tunsec_esp::{SaKeys, Suite};

use super::gateway::{RawSelector, validate_selector, validate_vni_policy};
use super::ike::{ChildKeys, ChildLayout, RawIke, validate_ike};
use super::{
    ChildMode, ConfigError, EspSettings, IkePeer, Network, NetworkLayout, Node, Sources,
    check_name, invalid, parse_addr, quoted, secret,
};
use tunsec_datapath::gateway::{VniAction, VniPolicy};

/// What a peer's traffic on one network must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// ESP or nothing: without a usable SA the traffic is dropped, and
    /// cleartext from the peer is refused. The default.
    Require,
    /// ESP when an SA is up; cleartext otherwise, and cleartext is
    /// accepted.
    Prefer,
    /// Cleartext only, for interop with plain tunnel endpoints and for
    /// debugging.
    Clear,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) name: String,
    pub(super) underlay: String,
    #[serde(default)]
    pub(super) networks: Vec<String>,
    #[serde(default)]
    pub(super) selector: Vec<RawSelector>,
    pub(super) policy: Option<PolicyKind>,
    #[serde(default)]
    pub(super) policies: BTreeMap<String, PolicyKind>,
    pub(super) sa: Option<RawSa>,
    pub(super) ike: Option<RawIke>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSa {
    pub(super) spi_in: u32,
    pub(super) spi_out: u32,
    pub(super) suite: String,
    pub(super) key_in: PathBuf,
    pub(super) key_out: PathBuf,
    #[serde(default)]
    pub(super) esn: bool,
}

/// A peer host.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Its underlay address.
    pub underlay: IpAddr,
    /// The networks it carries, each with its policy.
    pub networks: Vec<(String, PolicyKind)>,
    /// Manually keyed SAs, if configured.
    pub sa: Option<ManualSa>,
    /// SAs negotiated with IKEv2, if configured (never with `sa`).
    pub ike: Option<IkePeer>,
    /// Gateway mode: the kernel traffic to and from this peer that is
    /// protected (`[[peer.selector]]`); empty in overlay mode.
    pub selectors: Vec<tunsec_datapath::gateway::GatewaySelector>,
    /// Gateway mode: the policies by VNI of the selectors that name a
    /// `tunnel` (`[[peer.selector.vni]]`).
    pub vnis: Vec<VniPolicy>,
}

/// A manually keyed SA pair.
#[derive(Clone, PartialEq, Eq)]
pub struct ManualSa {
    /// The SPI of packets from the peer.
    pub spi_in: u32,
    /// The SPI of packets to the peer.
    pub spi_out: u32,
    /// The cipher suite.
    pub suite: Suite,
    /// Keys for packets from the peer.
    pub keys_in: SaKeys,
    /// Keys for packets to the peer.
    pub keys_out: SaKeys,
    /// Extended sequence numbers.
    pub esn: bool,
}

impl fmt::Debug for ManualSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualSa")
            .field("spi_in", &format_args!("{:#010x}", self.spi_in))
            .field("spi_out", &format_args!("{:#010x}", self.spi_out))
            .field("suite", &self.suite)
            .field("keys", &"<redacted>")
            .field("esn", &self.esn)
            .finish()
    }
}

/// Every `[[peer]]`: each valid, and no two with the same name,
/// underlay address or inbound SPI.
pub(super) fn validate_peers(
    raw: Vec<RawPeer>,
    node: &Node,
    networks: &[Network],
    gateway: Option<ChildMode>,
    esp: EspSettings,
    sources: &Sources<'_>,
) -> Result<Vec<Peer>, ConfigError> {
    let mut peers = Vec::with_capacity(raw.len());
    let mut seen_names = HashSet::new();
    let mut seen_addrs = HashSet::new();
    let mut spis_in = HashMap::new();
    for (i, p) in raw.into_iter().enumerate() {
        let peer = validate_peer(i, p, node, networks, gateway, esp, sources)?;
        if !seen_names.insert(peer.name.clone()) {
            return Err(invalid(
                format!("peer[{i}].name"),
                quoted(&peer.name),
                "is used by another peer",
            ));
        }
        if !seen_addrs.insert(peer.underlay) {
            return Err(invalid(
                format!("peer[{i}].underlay"),
                peer.underlay,
                "is used by another peer",
            ));
        }
        if let Some(sa) = &peer.sa {
            if let Some(other) = spis_in.insert(sa.spi_in, peer.name.clone()) {
                return Err(invalid(
                    format!("peer[{i}].sa.spi_in"),
                    format_args!("{:#x}", sa.spi_in),
                    format!("is already the inbound SPI of peer {other:?}"),
                ));
            }
        }
        peers.push(peer);
    }

    Ok(peers)
}

#[allow(clippy::too_many_arguments)]
fn validate_peer(
    i: usize,
    raw: RawPeer,
    node: &Node,
    networks: &[Network],
    gateway: Option<ChildMode>,
    esp: EspSettings,
    sources: &Sources<'_>,
) -> Result<Peer, ConfigError> {
    let f = |name: &str| format!("peer[{i}].{name}");
    check_name(&f("name"), &raw.name)?;
    let underlay = parse_addr(&f("underlay"), &raw.underlay)?;
    if underlay == node.underlay {
        return Err(invalid(
            f("underlay"),
            underlay,
            "is this node's own underlay address",
        ));
    }
    if underlay.is_ipv4() != node.underlay.is_ipv4() {
        return Err(invalid(
            f("underlay"),
            underlay,
            format!(
                "is not of the same address family as node.underlay ({})",
                node.underlay
            ),
        ));
    }
    let (selectors, vnis) = validate_selectors(i, &raw, gateway, esp)?;
    if raw.networks.is_empty() && gateway.is_none() {
        return Err(invalid(
            f("networks"),
            "[]",
            "must name at least one network",
        ));
    }
    let default_policy = raw.policy.unwrap_or(PolicyKind::Require);
    let mut nets = Vec::with_capacity(raw.networks.len());
    for (j, name) in raw.networks.iter().enumerate() {
        if !networks.iter().any(|n| &n.name == name) {
            return Err(invalid(
                format!("peer[{i}].networks[{j}]"),
                quoted(name),
                "is not the name of a network",
            ));
        }
        if nets.iter().any(|(n, _)| n == name) {
            return Err(invalid(
                format!("peer[{i}].networks[{j}]"),
                quoted(name),
                "is listed twice",
            ));
        }
        let policy = raw.policies.get(name).copied().unwrap_or(default_policy);
        nets.push((name.clone(), policy));
    }
    for name in raw.policies.keys() {
        if !raw.networks.contains(name) {
            return Err(invalid(
                format!("peer[{i}].policies.{name}"),
                quoted(name),
                "is not one of this peer's networks",
            ));
        }
    }
    if raw.sa.is_some() && raw.ike.is_some() {
        return Err(invalid(
            f("ike"),
            "[peer.ike]",
            "cannot be combined with [peer.sa]: keys are either manual or negotiated",
        ));
    }
    let sa = raw
        .sa
        .map(|sa| validate_sa(i, sa, sources.base_dir))
        .transpose()?;
    let mut ike = raw
        .ike
        .map(|ike| validate_ike(i, ike, node.underlay, underlay, sources))
        .transpose()?;
    if let (Some(ike), Some(mode)) = (ike.as_mut(), gateway) {
        // Gateway mode: one ESP mode for all peers (`gateway.mode`).
        ike.mode = mode;
    }
    Ok(Peer {
        name: raw.name,
        underlay,
        networks: nets,
        sa,
        ike,
        selectors,
        vnis,
    })
}

/// A network of the Encrypted VXLAN layout carries ESP only, each SA
/// bound to it: every peer that carries it needs `require` for it and
/// keys per network (`[peer.ike] keys = "per_network"`).
pub(super) fn validate_layouts(networks: &[Network], peers: &[Peer]) -> Result<(), ConfigError> {
    for net in networks
        .iter()
        .filter(|n| n.layout == NetworkLayout::EncryptedVxlan)
    {
        for (i, p) in peers.iter().enumerate() {
            let Some((_, policy)) = p.networks.iter().find(|(n, _)| *n == net.name) else {
                continue;
            };
            if *policy != PolicyKind::Require {
                return Err(invalid(
                    format!("peer[{i}].policies.{}", net.name),
                    quoted(&format!("{policy:?}").to_lowercase()),
                    format!(
                        "network {:?} has layout = \"encrypted_vxlan\", which carries ESP only: its policy must be \"require\"",
                        net.name
                    ),
                ));
            }
            if p.ike.as_ref().map(|ike| ike.keys) != Some(ChildKeys::PerNetwork) {
                return Err(invalid(
                    format!("peer[{i}].ike.keys"),
                    if p.ike.is_some() {
                        "\"shared\""
                    } else {
                        "(no [peer.ike])"
                    },
                    format!(
                        "network {:?} has layout = \"encrypted_vxlan\", whose SAs are one per network: set [peer.ike] keys = \"per_network\"",
                        net.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A peer's `[[peer.selector]]` tables: only in gateway mode, where they
/// are required and replace `networks`; only `require` policies per peer
/// (cleartext is chosen per VNI, by `[[peer.selector.vni]]`). Each selector is checked by
/// [`validate_selector`], and its policy by VNI by
/// [`validate_vni_policy`].
fn validate_selectors(
    i: usize,
    raw: &RawPeer,
    gateway: Option<ChildMode>,
    esp: EspSettings,
) -> Result<
    (
        Vec<tunsec_datapath::gateway::GatewaySelector>,
        Vec<VniPolicy>,
    ),
    ConfigError,
> {
    let f = |name: &str| format!("peer[{i}].{name}");
    let Some(gateway_mode) = gateway else {
        if let Some(l) = raw.ike.as_ref().and_then(|ike| ike.layout) {
            return Err(invalid(
                f("ike.layout"),
                quoted(&format!("{l:?}").to_lowercase()),
                "needs [gateway]: the layout places gateway selectors in Child SAs (overlay mode has ike.selectors)",
            ));
        }
        if !raw.selector.is_empty() {
            return Err(invalid(
                f("selector[0]"),
                "[[peer.selector]]",
                "needs [gateway]: selectors are for gateway mode",
            ));
        }
        return Ok((Vec::new(), Vec::new()));
    };
    if let Some(n) = raw.networks.first() {
        return Err(invalid(
            f("networks[0]"),
            quoted(n),
            "cannot be used in gateway mode: list [[peer.selector]] instead",
        ));
    }
    if raw.selector.is_empty() {
        return Err(invalid(
            f("selector"),
            "[]",
            "gateway mode needs at least one [[peer.selector]]",
        ));
    }
    if let Some(p) = raw.policy.filter(|p| *p != PolicyKind::Require) {
        return Err(invalid(
            f("policy"),
            quoted(&format!("{p:?}").to_lowercase()),
            "is not supported in gateway mode: only \"require\"; a VNI's traffic may be \"clear\" or \"discard\" by [[peer.selector.vni]]",
        ));
    }
    if let Some(ike) = &raw.ike {
        if let Some(s) = ike.selectors {
            return Err(invalid(
                f("ike.selectors"),
                quoted(&format!("{s:?}").to_lowercase()),
                "cannot be set in gateway mode: the Child SA's selectors are the [[peer.selector]]s",
            ));
        }
        if let Some(m) = ike.mode.filter(|m| *m != gateway_mode) {
            return Err(invalid(
                f("ike.mode"),
                quoted(&format!("{m:?}").to_lowercase()),
                format!(
                    "differs from gateway.mode ({:?}): gateway mode has one ESP mode",
                    gateway_mode
                ),
            ));
        }
    }
    let mut selectors = Vec::with_capacity(raw.selector.len());
    let mut vnis = Vec::new();
    for (j, s) in raw.selector.iter().enumerate() {
        let selector = validate_selector(i, j, s, esp)?;
        vnis.extend(validate_vni_policy(i, j, s, &selector)?);
        selectors.push(selector);
    }
    // Keys per network: each `require` VNI rule gets a Child SA of its
    // own; the default and the other selectors share one.
    if raw.ike.as_ref().and_then(|ike| ike.keys) == Some(ChildKeys::PerNetwork) {
        if raw.ike.as_ref().and_then(|ike| ike.layout) == Some(ChildLayout::Split) {
            return Err(invalid(
                f("ike.layout"),
                "\"split\"",
                "cannot be combined with keys = \"per_network\": each network's Child SA is one pair",
            ));
        }
        let mut keyed = 0;
        for rule in vnis.iter_mut().flat_map(|p: &mut VniPolicy| &mut p.rules) {
            if rule.action == VniAction::Require {
                rule.keyed = true;
                keyed += 1;
            }
        }
        if keyed == 0 {
            return Err(invalid(
                f("ike.keys"),
                "\"per_network\"",
                "needs a [[peer.selector.vni]] with policy = \"require\" in gateway mode: those are its networks",
            ));
        }
    }
    Ok((selectors, vnis))
}

fn validate_sa(i: usize, raw: RawSa, base_dir: &Path) -> Result<ManualSa, ConfigError> {
    let f = |name: &str| format!("peer[{i}].sa.{name}");
    let suite: Suite = raw.suite.parse().map_err(|_| {
        invalid(
            f("suite"),
            quoted(&raw.suite),
            "is not a known suite (aes128gcm16, aes256gcm16, chacha20poly1305, aes256-sha256)",
        )
    })?;
    for (name, spi) in [("spi_in", raw.spi_in), ("spi_out", raw.spi_out)] {
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.1
        //# The set of SPI values in the range 1 through 255 are reserved by the
        //# Internet Assigned Numbers Authority (IANA) for future use
        if spi < 256 {
            return Err(invalid(
                f(name),
                spi,
                "is reserved: SPIs 0 to 255 are not for SAs",
            ));
        }
    }
    let keys_in = read_keys(&f("key_in"), &raw.key_in, base_dir, suite)?;
    let keys_out = read_keys(&f("key_out"), &raw.key_out, base_dir, suite)?;
    Ok(ManualSa {
        spi_in: raw.spi_in,
        spi_out: raw.spi_out,
        suite,
        keys_in,
        keys_out,
        esn: raw.esn,
    })
}

/// Reads key material: hex digits (whitespace and a leading `0x` are
/// ignored), encryption key first, then the integrity key for non-AEAD
/// suites, as `ip xfrm` and IKEv2's KEYMAT order them.
fn read_keys(
    field: &str,
    path: &Path,
    base_dir: &Path,
    suite: Suite,
) -> Result<SaKeys, ConfigError> {
    let shown = quoted(&path.display().to_string());
    let bytes = secret::read(field, base_dir, path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| invalid(field, &shown, "does not hold hex key material"))?;
    let digits: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(
        text.trim()
            .trim_start_matches("0x")
            .split_whitespace()
            .collect(),
    );
    let bytes = zeroize::Zeroizing::new(
        hex::decode(digits.as_str())
            .map_err(|_| invalid(field, &shown, "does not hold hex key material"))?,
    );
    SaKeys::from_keymat(suite, &bytes).map_err(|_| {
        invalid(
            field,
            &shown,
            format!(
                "holds {} bytes of key material; {suite} needs {}",
                bytes.len(),
                suite.encryption_key_len() + suite.integrity_key_len()
            ),
        )
    })
}

#[cfg(test)]
mod test {
    use super::super::testing::*;

    #[test]
    fn peer_errors_name_the_field_and_value() {
        assert_invalid(
            &BASE.replace("underlay = \"192.0.2.2\"", "underlay = \"192.0.2.300\""),
            "peer[0].underlay",
            "\"192.0.2.300\"",
        );
        assert_invalid(
            &BASE.replace("underlay = \"192.0.2.2\"", "underlay = \"192.0.2.1\""),
            "peer[0].underlay",
            "192.0.2.1",
        );
        assert_invalid(
            &BASE.replace("underlay = \"192.0.2.2\"", "underlay = \"2001:db8::2\""),
            "peer[0].underlay",
            "2001:db8::2",
        );
        assert_invalid(
            &BASE.replace("aes128gcm16", "aes128"),
            "peer[0].sa.suite",
            "\"aes128\"",
        );
        assert_invalid(
            &BASE.replace("aes128gcm16", "aes256gcm16"),
            "peer[0].sa.key_in",
            "\"b.in\"",
        );
        assert_invalid(
            &BASE.replace("key_out = \"b.out\"", "key_out = \"missing\""),
            "peer[0].sa.key_out",
            "\"missing\"",
        );
        assert_invalid(
            &BASE.replace("spi_in = 0x1001", "spi_in = 7"),
            "peer[0].sa.spi_in",
            "7",
        );
        assert_invalid(
            &BASE.replace(
                "networks = [\"blue\", \"red\"]",
                "networks = [\"blue\", \"green\"]",
            ),
            "peer[0].networks[1]",
            "\"green\"",
        );
        assert_invalid(
            &BASE.replace("red = \"clear\"", "blue = \"clear\", pink = \"clear\""),
            "peer[0].policies.pink",
            "\"pink\"",
        );
    }
}
