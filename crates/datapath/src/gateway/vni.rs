//! Encryption chosen per virtual network in gateway mode: the kernel's
//! own VXLAN and Geneve packets name their network (the VNI) in the
//! tunnel header, right behind the outer UDP header, so the packets that
//! policy routing steers into the TUN device can be told apart by it.
//!
//! A [`VniPolicy`] covers a peer's traffic to one tunnel port range. Each
//! VNI (range) gets an action: [`VniAction::Require`] seals it with ESP,
//! [`VniAction::Clear`] sends the packet as it came, through a socket whose
//! firewall mark the steering rules and the guard let pass, and
//! [`VniAction::Discard`] drops it. VNIs without a rule take the policy's
//! default. A packet whose tunnel header does not parse is dropped
//! (`malformed`), never sent in the clear.
//!
//! The same policy holds inbound: the guard accepts the cleartext of a
//! `clear` VNI (an nftables raw payload match on the VNI), and an opened
//! packet of a `discard` VNI is dropped.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tunsec_wire::{geneve, vxlan};

/// The tunnel header a kernel tunnel's UDP port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    /// VXLAN (RFC 7348).
    Vxlan,
    /// Geneve (RFC 8926).
    Geneve,
}

impl TunnelKind {
    /// The VNI of a UDP payload that starts with this tunnel's header;
    /// `None` if it does not parse (too short, or VXLAN without the I
    /// flag).
    pub fn vni(self, udp_payload: &[u8]) -> Option<u32> {
        match self {
            Self::Vxlan => {
                let p = vxlan::Packet::new_checked(udp_payload).ok()?;
                vxlan::Repr::parse(&p).ok().map(|r| r.vni.into())
            }
            Self::Geneve => {
                let p = geneve::Packet::new_checked(udp_payload).ok()?;
                Some(p.vni().into())
            }
        }
    }

    /// The bit offset of the VNI from the start of the UDP header, for
    /// nftables' `@th,OFFSET,24`: both headers put it at byte 4 of the
    /// tunnel header (RFC 7348 section 5, RFC 8926 section 3.4).
    pub const VNI_BIT_OFFSET: u32 = (8 + 4) * 8;

    /// `vxlan` or `geneve`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Vxlan => "vxlan",
            Self::Geneve => "geneve",
        }
    }
}

/// What happens to a VNI's traffic with a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VniAction {
    /// ESP or nothing; cleartext from the peer is refused by the guard.
    Require,
    /// Sent as it is, and accepted in the clear from the peer.
    Clear,
    /// Dropped both ways.
    Discard,
}

impl VniAction {
    /// `require`, `clear` or `discard`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Require => "require",
            Self::Clear => "clear",
            Self::Discard => "discard",
        }
    }
}

/// The packets of one VNI rule (or a policy's default).
#[derive(Debug, Default)]
pub struct VniCounters {
    /// Sealed with ESP and sent.
    pub sealed: AtomicU64,
    /// Sent in the clear (`clear`).
    pub clear: AtomicU64,
    /// Dropped, either way (`discard`).
    pub discarded: AtomicU64,
    /// Opened from the peer's ESP and delivered.
    pub opened: AtomicU64,
    /// Opened under an SA of another rule (keys per network), dropped
    /// (`network_mismatch`).
    pub network_mismatch: AtomicU64,
}

/// One rule: a VNI range and its action.
#[derive(Debug, Clone)]
pub struct VniRule {
    /// The VNIs it covers.
    pub vnis: RangeInclusive<u32>,
    /// What happens to them.
    pub action: VniAction,
    /// Keys per network (`[peer.ike] keys = "per_network"`): a `require`
    /// rule's traffic travels under a Child SA of its own, labelled with
    /// [`VniPolicy::label`] and bound to [`Self::binding`].
    pub keyed: bool,
    /// Its packets (owned by the rule, so a reload that keeps the rule
    /// may carry them over).
    pub counters: Arc<VniCounters>,
}

impl VniRule {
    /// A rule with fresh counters, without keys of its own.
    pub fn new(vnis: RangeInclusive<u32>, action: VniAction) -> Self {
        Self {
            vnis,
            action,
            keyed: false,
            counters: Arc::default(),
        }
    }

    /// The SA binding (`SaConfig::binding`) of a keyed `require` rule:
    /// its first VNI, unique among a policy's rules, which do not
    /// overlap. `None` for any other rule: its traffic travels under the
    /// peer's shared (unbound) SAs.
    pub fn binding(&self) -> Option<u32> {
        (self.keyed && self.action == VniAction::Require).then_some(*self.vnis.start())
    }
}

impl PartialEq for VniRule {
    /// Rules are equal when they cover the same VNIs with the same
    /// action and keys; their counters do not count.
    fn eq(&self, other: &Self) -> bool {
        self.vnis == other.vnis && self.action == other.action && self.keyed == other.keyed
    }
}

impl Eq for VniRule {}

/// A peer's policy by VNI for its kernel tunnel traffic to `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VniPolicy {
    /// The tunnel header on these ports.
    pub tunnel: TunnelKind,
    /// The destination ports of the tunnel traffic.
    pub ports: RangeInclusive<u16>,
    /// The rules, in ascending order of VNI, none overlapping.
    pub rules: Vec<VniRule>,
    /// The rule of every VNI that no rule covers (its range is unused).
    pub default: VniRule,
}

impl VniPolicy {
    /// A policy whose every VNI takes `default`, until rules are added.
    pub fn new(tunnel: TunnelKind, ports: RangeInclusive<u16>, default: VniAction) -> Self {
        Self {
            tunnel,
            ports,
            rules: Vec::new(),
            default: VniRule::new(0..=0xff_ffff, default),
        }
    }

    /// The rule that covers `vni` (the default if none does), by binary
    /// search over the sorted rules.
    pub fn rule(&self, vni: u32) -> &VniRule {
        let i = self.rules.partition_point(|r| *r.vnis.end() < vni);
        match self.rules.get(i) {
            Some(r) if r.vnis.contains(&vni) => r,
            _ => &self.default,
        }
    }

    /// The label in IKE of a rule's Child SA: `vxlan/100`, or
    /// `geneve/300-309` for a range; both hosts write the same rule alike.
    pub fn label(&self, rule: &VniRule) -> String {
        format!("{}/{}", self.tunnel.name(), range_text(&rule.vnis))
    }

    /// The binding a label names ([`VniRule::binding`]): its first VNI.
    pub fn binding_of_label(label: &[u8]) -> Option<u32> {
        let text = std::str::from_utf8(label).ok()?;
        let (tunnel, vnis) = text.split_once('/')?;
        if tunnel != TunnelKind::Vxlan.name() && tunnel != TunnelKind::Geneve.name() {
            return None;
        }
        let lo = vnis.split_once('-').map_or(vnis, |(lo, _)| lo);
        lo.parse().ok().filter(|&v| v <= 0xff_ffff)
    }

    /// Whether any VNI may travel in the clear.
    pub fn has_clear(&self) -> bool {
        self.default.action == VniAction::Clear
            || self.rules.iter().any(|r| r.action == VniAction::Clear)
    }
}

/// `7` for a range of one, `7-9` otherwise: how labels, status and the
/// guard's rules write ports and VNIs.
pub fn range_text<T: std::fmt::Display + PartialEq>(r: &RangeInclusive<T>) -> String {
    if r.start() == r.end() {
        r.start().to_string()
    } else {
        format!("{}-{}", r.start(), r.end())
    }
}

/// The rule for a UDP datagram's tunnel packet, if one of `policies`
/// covers its destination port: `Err(())` if the tunnel header does not
/// parse.
pub(crate) fn classify<'a>(
    policies: &'a [VniPolicy],
    dst_port: u16,
    udp_payload: &[u8],
) -> Result<Option<&'a VniRule>, ()> {
    let Some(policy) = policies.iter().find(|p| p.ports.contains(&dst_port)) else {
        return Ok(None);
    };
    let vni = policy.tunnel.vni(udp_payload).ok_or(())?;
    Ok(Some(policy.rule(vni)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> VniPolicy {
        let mut p = VniPolicy::new(TunnelKind::Vxlan, 4789..=4789, VniAction::Require);
        p.rules = vec![
            VniRule::new(200..=200, VniAction::Clear),
            VniRule::new(300..=399, VniAction::Discard),
        ];
        p
    }

    fn vxlan(vni: u32, flags: u8) -> [u8; 8] {
        let v = vni.to_be_bytes();
        [flags, 0, 0, 0, v[1], v[2], v[3], 0]
    }

    #[test]
    fn rules_cover_their_ranges_and_the_default_the_rest() {
        let p = policy();
        let action = |vni| p.rule(vni).action;
        assert_eq!(action(100), VniAction::Require);
        assert_eq!(action(199), VniAction::Require);
        assert_eq!(action(200), VniAction::Clear);
        assert_eq!(action(201), VniAction::Require);
        assert_eq!(action(300), VniAction::Discard);
        assert_eq!(action(399), VniAction::Discard);
        assert_eq!(action(400), VniAction::Require);
        assert_eq!(action(0xff_ffff), VniAction::Require);
        assert!(p.has_clear());
    }

    #[test]
    fn classify_reads_the_vni_on_the_policys_ports_only() {
        let policies = [policy()];
        let rule = |port, payload: &[u8]| classify(&policies, port, payload);
        assert_eq!(
            rule(4789, &vxlan(200, 0x08)).unwrap().unwrap().action,
            VniAction::Clear
        );
        // Another port: no policy, the peer's selectors decide.
        assert!(rule(6081, &vxlan(200, 0x08)).unwrap().is_none());
        // No I flag, or too short: not classified, and refused.
        assert!(rule(4789, &vxlan(200, 0)).is_err());
        assert!(rule(4789, &[0x08, 0, 0]).is_err());
    }

    #[test]
    fn labels_name_the_rule_and_give_its_binding() {
        let mut p = policy();
        assert_eq!(p.label(&p.rules[1]), "vxlan/300-399");
        assert_eq!(p.label(&p.rules[0]), "vxlan/200");
        assert_eq!(VniPolicy::binding_of_label(b"vxlan/300-399"), Some(300));
        assert_eq!(VniPolicy::binding_of_label(b"geneve/7"), Some(7));
        assert_eq!(VniPolicy::binding_of_label(b"gue/6080"), None);
        assert_eq!(VniPolicy::binding_of_label(b"vxlan/16777216"), None);
        // Only a keyed `require` rule has keys of its own.
        assert_eq!(p.rules[0].binding(), None);
        p.rules[0].keyed = true;
        assert_eq!(p.rules[0].binding(), None, "a clear rule");
        p.rules[0].action = VniAction::Require;
        assert_eq!(p.rules[0].binding(), Some(200));
    }

    #[test]
    fn geneve_vni_is_at_the_same_offset() {
        let mut hdr = [0u8; 8];
        hdr[2..4].copy_from_slice(&0x6558u16.to_be_bytes());
        hdr[4..7].copy_from_slice(&[0, 0x01, 0x2c]);
        assert_eq!(TunnelKind::Geneve.vni(&hdr), Some(300));
        // The offset nftables matches: byte 4 of the tunnel header.
        assert_eq!(TunnelKind::VNI_BIT_OFFSET / 8 - 8, 4);
    }
}
