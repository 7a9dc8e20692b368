//! The peers by slot, in either mode, and the plan that takes them to
//! another set at run time: from `tunsec reload` of a changed file, or
//! (gateway mode) from the tunnel rows of the OVS database.
//!
//! A peer keeps its slot while it is configured: the tables, the IKE
//! driver, the guard's counters and `tunsec status` all name it by the
//! slot. Peers are matched by name:
//! - a new name is added, into the first vacant slot;
//! - a name that is gone is removed, and its slot becomes vacant;
//! - a peer whose address, selectors or keying (manual or IKE) changed
//!   is renewed in its slot: its SAs are deleted and new ones negotiated
//!   with the new settings (its traffic is dropped meanwhile);
//! - a peer whose `[peer.ike]` alone changed (PSK, certificates,
//!   identities, proposals, lifetimes) is re-authenticated: a new IKE SA
//!   with the new settings beside the old one, which carries the traffic
//!   until the new one is up (make before break, RFC 7296 section
//!   2.8.3);
//! - every other peer is untouched.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use tunsec_datapath::shared_sa::SharedSa;
use tunsec_esp::{Direction, Sa, SaConfig};

use crate::config::{Config, Peer};
use crate::ike::{
    CertRenewal, IkeCommands, IkeStates, IkeView, Reloaded, same_auth, same_negotiation,
};
use crate::keys::KeyExport;
use crate::service::PeerSas;

/// The configured peers by slot; `None` is a vacant slot.
#[derive(Debug, Clone, Default)]
pub struct PeerSlots {
    slots: Vec<Option<Peer>>,
}

/// What [`PeerSlots::plan`] found to do.
#[derive(Debug, Default)]
pub struct PeerPlan {
    /// New peers and the slots they get.
    pub add: Vec<(usize, Peer)>,
    /// Peers to remove, by slot (the peer as it was).
    pub remove: Vec<(usize, Peer)>,
    /// Peers renewed in their slot: the new settings.
    pub renew: Vec<(usize, Peer)>,
    /// Peers to re-authenticate with new `[peer.ike]` settings, in their
    /// slot.
    pub reauth: Vec<(usize, Peer)>,
    /// How many peers stay as they are.
    pub unchanged: usize,
}

impl PeerPlan {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.remove.is_empty()
            && self.renew.is_empty()
            && self.reauth.is_empty()
    }

    /// One line for the log and for `tunsec reload`'s answer: `added:
    /// h3; removed: h4; new credentials for h2; 5 unchanged`.
    pub fn summary(&self) -> String {
        let names = |v: &[(usize, Peer)]| {
            v.iter()
                .map(|(_, p)| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        for (what, list) in [
            ("added: ", &self.add),
            ("removed: ", &self.remove),
            ("renewed: ", &self.renew),
            ("new credentials for ", &self.reauth),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}{}", names(list)));
            }
        }
        if parts.is_empty() {
            parts.push("no peer changed".to_owned());
        }
        format!("{}; {} unchanged", parts.join("; "), self.unchanged)
    }

    /// The plan's changes to a mode's tables: the removed and renewed
    /// peers' slots are emptied, the added and renewed peers get their
    /// entries (with manual SAs or none), and a re-authenticated peer
    /// keeps its entry and SAs under its (new) name.
    pub(crate) fn apply_to_tables(
        &self,
        t: &mut impl PeerTables,
        config: &Config,
        now: Instant,
    ) -> anyhow::Result<()> {
        for (slot, _) in self.remove.iter().chain(&self.renew) {
            t.remove_slot(*slot);
        }
        for (slot, p) in self.add.iter().chain(&self.renew) {
            t.insert_slot(config, *slot, p, now)?;
        }
        for (slot, p) in &self.reauth {
            // Only `[peer.ike]` changed: the entry and its SAs stay.
            t.rename_slot(*slot, &p.name);
        }
        Ok(())
    }
}

/// A mode's tables, as a [`PeerPlan`] changes them by slot.
pub(crate) trait PeerTables {
    /// Empties `slot`: its peer and the peer's SAs leave the tables.
    fn remove_slot(&mut self, slot: usize);
    /// Puts `peer` into `slot`, with its manual SAs if it has some.
    fn insert_slot(
        &mut self,
        config: &Config,
        slot: usize,
        peer: &Peer,
        now: Instant,
    ) -> anyhow::Result<()>;
    /// Names the peer in `slot` `name`; its entry and SAs stay.
    fn rename_slot(&mut self, slot: usize, name: &str);
}

impl PeerSlots {
    /// The peers of a configuration, in its order: slot `i` is
    /// `peers[i]`.
    pub fn new(peers: &[Peer]) -> Self {
        Self {
            slots: peers.iter().cloned().map(Some).collect(),
        }
    }

    /// The peer in `slot`.
    pub fn get(&self, slot: usize) -> Option<&Peer> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// The slot of the peer named `name`.
    pub fn slot_of(&self, name: &str) -> Option<usize> {
        self.iter().find(|(_, p)| p.name == name).map(|(i, _)| i)
    }

    /// The configured peers and their slots, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Peer)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
    }

    /// How many slots there are, vacant ones included.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no peer is configured.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// What it takes to go from these peers to `wanted` (whose names are
    /// unique, as a loaded configuration's are). Added peers get the
    /// vacant slots first, lowest first, then new ones; a removed peer's
    /// slot is not reused within the same plan, so that its SAs are gone
    /// before another peer takes it.
    pub fn plan(&self, wanted: &[Peer]) -> PeerPlan {
        let mut plan = PeerPlan::default();
        for (slot, old) in self.iter() {
            if !wanted.iter().any(|p| p.name == old.name) {
                plan.remove.push((slot, old.clone()));
            }
        }
        let mut vacant = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_none())
            .map(|(i, _)| i);
        let mut next = self.slots.len();
        for p in wanted {
            match self.slot_of(&p.name) {
                None => {
                    let slot = vacant.next().unwrap_or_else(|| {
                        next += 1;
                        next - 1
                    });
                    plan.add.push((slot, p.clone()));
                }
                Some(slot) => {
                    let old = self.get(slot).expect("slot_of found it");
                    match change(old, p) {
                        Change::None => plan.unchanged += 1,
                        Change::Ike => plan.reauth.push((slot, p.clone())),
                        Change::Renew => plan.renew.push((slot, p.clone())),
                    }
                }
            }
        }
        plan
    }

    /// Records a carried-out plan.
    pub fn apply(&mut self, plan: &PeerPlan) {
        for (slot, _) in &plan.remove {
            self.slots[*slot] = None;
        }
        for (slot, p) in plan.add.iter().chain(&plan.renew).chain(&plan.reauth) {
            if self.slots.len() <= *slot {
                self.slots.resize(*slot + 1, None);
            }
            self.slots[*slot] = Some(p.clone());
        }
    }
}

/// A peer's manually keyed SA pair (`[peer.sa]`), for the tables: the
/// outbound SA, and the inbound one with its SPI; `None` for an IKE peer.
pub fn manual_sas(
    config: &Config,
    p: &Peer,
    now: Instant,
) -> anyhow::Result<Option<(SharedSa, u32, SharedSa)>> {
    let Some(sa) = &p.sa else {
        return Ok(None);
    };
    let mk = |spi, direction, keys: &tunsec_esp::SaKeys| {
        let mut cfg = SaConfig::new(spi, direction, sa.suite, keys.clone());
        cfg.esn = sa.esn;
        cfg.replay_window = config.esp.replay_window;
        Sa::new(cfg, now)
            .map(|sa| Arc::new(Mutex::new(sa)))
            .with_context(|| format!("peer {:?}: SA {spi:#x}", p.name))
    };
    Ok(Some((
        mk(sa.spi_out, Direction::Outbound, &sa.keys_out)?,
        sa.spi_in,
        mk(sa.spi_in, Direction::Inbound, &sa.keys_in)?,
    )))
}

/// What both daemons' control sockets and reloads hold of their peers
/// and of the IKE driver: the peers by slot, the driver's view and
/// commands, and the certificate renewal.
pub(crate) struct PeerControl {
    /// The peers now, by slot: changed at run time by `reload` (and in
    /// gateway mode by the OVS database). Held while a change is carried
    /// out, so changes go one at a time.
    pub(crate) slots: Mutex<PeerSlots>,
    /// The IKE driver's view, for `tunsec status`.
    pub(crate) ike_states: IkeStates,
    /// The IKE driver's commands.
    pub(crate) ike_commands: IkeCommands,
    /// Re-authentication before our certificates expire.
    renewal: CertRenewal,
}

impl PeerControl {
    /// The peers of `config` in `slots`, with the IKE driver's handles.
    pub(crate) fn new(
        config: &Config,
        slots: PeerSlots,
        ike_states: IkeStates,
        ike_commands: IkeCommands,
    ) -> Self {
        Self {
            slots: Mutex::new(slots),
            ike_states,
            ike_commands,
            renewal: CertRenewal::new(config),
        }
    }

    /// Hands `command` for the peer named `peer` to the IKE driver, by
    /// its slot (`tunsec down/up/rekey/reauth`, both modes): what
    /// happened, or why not.
    pub(crate) fn ike_command(
        &self,
        peer: &str,
        command: &dyn Fn(usize) -> crate::ike::IkeCommand,
    ) -> Result<String, String> {
        let slots = self
            .slots
            .lock()
            .map_err(|_| "the peer table is poisoned".to_owned())?;
        let found = slots.slot_of(peer).and_then(|i| Some((i, slots.get(i)?)));
        crate::ike::send_command(found, &self.ike_commands, peer, command)
    }

    /// Certificate renewal, from the housekeeping: reloads the file
    /// (`reload`, the daemon's own `tunsec reload`) when a certificate is
    /// due, and re-authenticates the peers whose certificate was renewed.
    pub(crate) fn renew_certificates(
        &self,
        now: Instant,
        reload: &dyn Fn() -> Result<Reloaded, String>,
    ) {
        self.renewal.tick(
            now,
            reload,
            &|name| self.slots.lock().ok()?.slot_of(name),
            &self.ike_commands,
        );
    }

    /// `tunsec keys export`: every SA in `tables` (and the rekeyed
    /// outbound SAs the IKE driver holds), with the IKE SAs; see
    /// [`crate::ike::export_keys`].
    pub(crate) fn export_keys(&self, tables: &impl PeerSas) -> Result<KeyExport, String> {
        let esp = crate::keys::esp_rows(tables.local(), tables.peer_sas());
        crate::ike::export_keys(&self.ike_commands, esp)
    }

    /// The IKE driver's view now (empty if its lock is poisoned).
    pub(crate) fn ike_view(&self) -> IkeView {
        self.ike_states
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
}

/// The first IKE step of a plan, in both modes: the IKE SAs of the peers
/// that go or are renewed are deleted (a DELETE reaches each), and the
/// driver forgets them. `slots` is the state before the plan.
pub(crate) fn ike_remove(
    slots: &PeerSlots,
    plan: &PeerPlan,
    ike: &IkeCommands,
) -> Result<(), String> {
    let renewed_old = plan
        .renew
        .iter()
        .filter_map(|(s, _)| Some((*s, slots.get(*s)?)));
    let going = plan
        .remove
        .iter()
        .map(|(s, p)| (*s, p))
        .chain(renewed_old)
        .filter(|(_, p)| p.ike.is_some());
    for (slot, _) in going {
        ike.remove_peer(slot)?;
    }
    Ok(())
}

/// The last IKE step of a plan, in both modes: the driver takes up the
/// added and renewed peers (with `tunnel_ports` of each: overlay mode's
/// Child SA selectors) and the new `[peer.ike]` of the others, which it
/// re-authenticates at once with `reauth_now`.
pub(crate) fn ike_add(
    plan: &PeerPlan,
    ike: &IkeCommands,
    tunnel_ports: impl Fn(&Peer) -> Vec<u16>,
    reauth_now: bool,
) -> Result<(), String> {
    for (slot, p) in plan.add.iter().chain(&plan.renew) {
        if p.ike.is_some() {
            ike.add_peer(*slot, p, tunnel_ports(p))?;
        }
    }
    let updates: Vec<_> = plan
        .reauth
        .iter()
        .filter_map(|(s, p)| Some((*s, Box::new(p.ike.clone()?))))
        .collect();
    if updates.is_empty() {
        return Ok(());
    }
    ike.update_peers(updates, reauth_now)
}

/// Reads the configuration file at `path` again for `tunsec reload`, in
/// either mode: the file must load and be in the same mode (`gateway`),
/// else the error names the file and says nothing changed. Returns the
/// configuration and the path, for further errors.
pub(crate) fn load_for_reload(
    path: Option<&std::path::Path>,
    gateway: bool,
) -> Result<(Config, &std::path::Path), String> {
    let path = path.ok_or("reload: tunsecd was started without a configuration file")?;
    let new = Config::load(path)
        .map_err(|e| format!("reload: {}: {e}; nothing changed", path.display()))?;
    if new.gateway.is_some() != gateway {
        let has = if gateway { "has no" } else { "has" };
        return Err(format!(
            "reload: {}: {has} [gateway]; switching modes needs a restart; nothing changed",
            path.display()
        ));
    }
    Ok((new, path))
}

/// What a reload that carried out `plan` did, from the configuration
/// `running` to `new`: its answer ([`reload_message`]), logged.
pub(crate) fn reloaded(plan: &PeerPlan, running: &Config, new: Config) -> Reloaded {
    let message = reload_message(plan, running, &new);
    tracing::info!("{message}");
    Reloaded {
        config: new,
        message,
    }
}

/// `tunsec reload`'s answer for a carried-out plan, with the sections of
/// the new file that only a restart changes.
pub fn reload_message(plan: &PeerPlan, running: &Config, new: &Config) -> String {
    let mut message = format!("reloaded: {}", plan.summary());
    if !plan.reauth.is_empty() {
        message.push_str(
            " (new IKE settings: new IKE SAs use them; established ones are re-authenticated at their next rekey, or now with tunsec reauth PEER)",
        );
    }
    let mut ignored = Vec::new();
    if new.node != running.node {
        ignored.push("[node]");
    }
    if new.esp != running.esp {
        ignored.push("[esp]");
    }
    if new.gateway != running.gateway {
        ignored.push("[gateway]");
    }
    if !ignored.is_empty() {
        message.push_str(&format!(
            "; ignored (they change with a restart): {}",
            ignored.join(", ")
        ));
    }
    message
}

/// How one peer changed.
enum Change {
    None,
    /// Only its `[peer.ike]`.
    Ike,
    /// What it protects or negotiates.
    Renew,
}

fn change(old: &Peer, new: &Peer) -> Change {
    if old.underlay != new.underlay
        || old.selectors != new.selectors
        || old.vnis != new.vnis
        || old.networks != new.networks
        || old.sa != new.sa
    {
        return Change::Renew;
    }
    match (&old.ike, &new.ike) {
        (None, None) => Change::None,
        (Some(a), Some(b)) if same_auth(a, b) && same_negotiation(a, b) => Change::None,
        (Some(_), Some(_)) => Change::Ike,
        _ => Change::Renew,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(peers: &[(&str, &str, &str, u16)]) -> Config {
        let mut text = String::from(
            "[node]\nname = \"a\"\nunderlay = \"10.9.0.1\"\n\
             [gateway]\ntun = \"tsgw0\"\n",
        );
        for (name, addr, psk, port) in peers {
            text.push_str(&format!(
                "[[peer]]\nname = \"{name}\"\nunderlay = \"{addr}\"\n\
                 [[peer.selector]]\nprotocol = \"udp\"\nports = {port}\n\
                 [peer.ike]\npsk_env = \"{psk}\"\n"
            ));
        }
        // `psk_env` names the key; the key is the name itself, reversed.
        let env = |name: &str| Some(name.chars().rev().collect::<String>().into());
        Config::parse_with_env(&text, std::path::Path::new("."), &env).unwrap()
    }

    fn names(v: &[(usize, Peer)]) -> Vec<(usize, &str)> {
        v.iter().map(|(i, p)| (*i, p.name.as_str())).collect()
    }

    #[test]
    fn plan_by_name_keeps_slots() {
        let old = config(&[
            ("b", "10.9.0.2", "SECRET_ONE_1234", 4789),
            ("c", "10.9.0.3", "SECRET_ONE_1234", 4789),
            ("d", "10.9.0.4", "SECRET_ONE_1234", 4789),
        ]);
        let mut slots = PeerSlots::new(&old.peers);
        // c goes, d gets a new PSK, e comes, b is the same.
        let new = config(&[
            ("e", "10.9.0.5", "SECRET_ONE_1234", 4789),
            ("d", "10.9.0.4", "SECRET_TWO_1234", 4789),
            ("b", "10.9.0.2", "SECRET_ONE_1234", 4789),
        ]);
        let plan = slots.plan(&new.peers);
        assert_eq!(names(&plan.remove), [(1, "c")]);
        // c's slot is not reused in the plan that frees it.
        assert_eq!(names(&plan.add), [(3, "e")]);
        assert_eq!(names(&plan.reauth), [(2, "d")]);
        assert!(plan.renew.is_empty());
        assert_eq!(plan.unchanged, 1);
        slots.apply(&plan);
        assert_eq!(
            slots
                .iter()
                .map(|(i, p)| (i, p.name.as_str()))
                .collect::<Vec<_>>(),
            [(0, "b"), (2, "d"), (3, "e")]
        );
        // The next peer takes the vacant slot.
        let more = config(&[
            ("e", "10.9.0.5", "SECRET_ONE_1234", 4789),
            ("d", "10.9.0.4", "SECRET_TWO_1234", 4789),
            ("b", "10.9.0.2", "SECRET_ONE_1234", 4789),
            ("f", "10.9.0.6", "SECRET_ONE_1234", 4789),
        ]);
        let plan = slots.plan(&more.peers);
        assert_eq!(names(&plan.add), [(1, "f")]);
        assert_eq!(plan.unchanged, 3);
        assert!(!plan.is_empty());
        assert!(slots.plan(&new.peers).remove.is_empty());
    }

    #[test]
    fn a_new_port_or_address_renews_the_peer() {
        let old = config(&[("b", "10.9.0.2", "SECRET_ONE_1234", 4789)]);
        let slots = PeerSlots::new(&old.peers);
        let port = config(&[("b", "10.9.0.2", "SECRET_ONE_1234", 6081)]);
        assert_eq!(names(&slots.plan(&port.peers).renew), [(0, "b")]);
        let addr = config(&[("b", "10.9.0.7", "SECRET_ONE_1234", 4789)]);
        assert_eq!(names(&slots.plan(&addr.peers).renew), [(0, "b")]);
        let same = slots.plan(&old.peers);
        assert!(same.is_empty());
        assert_eq!(same.summary(), "no peer changed; 1 unchanged");
    }

    /// What counts as new `[peer.ike]` settings (`same_auth`,
    /// `same_negotiation`): a new PSK, proposals, identity or certificate
    /// re-authenticates the peer in its slot; the same settings change
    /// nothing; a new name is an added peer.
    #[test]
    fn new_ike_settings_reauthenticate() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let parse = |ike: &str| {
            let text = format!(
                "[node]\nname = \"a\"\nunderlay = \"192.0.2.1\"\n\n\
                 [[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\n\n\
                 [[peer]]\nname = \"b\"\nunderlay = \"192.0.2.2\"\nnetworks = [\"blue\"]\n\n\
                 [peer.ike]\n{ike}"
            );
            Config::parse(&text, p).unwrap()
        };
        let plan = |old: &Config, new: &Config| PeerSlots::new(&old.peers).plan(&new.peers);
        crate::config::write_secret(p.join("k1"), "first key").unwrap();
        crate::config::write_secret(p.join("k2"), "second key").unwrap();
        let old = parse("psk_file = \"k1\"\n");
        let same = plan(&old, &parse("psk_file = \"k1\"\n"));
        assert!(same.is_empty());
        assert_eq!(same.unchanged, 1);
        for ike in [
            "psk_file = \"k2\"\n",
            "psk_file = \"k1\"\nesp_proposals = [\"aes256gcm16\"]\n",
            "psk_file = \"k1\"\nremote_id = \"fqdn:b\"\n",
        ] {
            assert_eq!(names(&plan(&old, &parse(ike)).reauth), [(0, "b")], "{ike}");
        }
        crate::pki::init_ca(crate::pki::KeyAlg::EcdsaP256, "CA", 1, &p.join("ca")).unwrap();
        for out in ["one", "two"] {
            crate::pki::issue(
                &p.join("ca"),
                "a",
                &[],
                crate::pki::KeyAlg::EcdsaP256,
                1,
                &p.join(out),
            )
            .unwrap();
        }
        let cert = |d: &str| {
            parse(&format!(
                "auth = \"cert\"\ncert = \"{d}/a.pem\"\nkey = \"{d}/a.key\"\nca = [\"ca/ca.pem\"]\nremote_id = \"fqdn:b\"\n"
            ))
        };
        let one = cert("one");
        assert!(plan(&one, &cert("one")).is_empty());
        assert_eq!(plan(&one, &cert("two")).reauth.len(), 1);
        assert_eq!(plan(&old, &one).reauth.len(), 1);
        let mut two_peers = old.clone();
        two_peers.peers.push(old.peers[0].clone());
        two_peers.peers[1].name = "c".into();
        assert_eq!(names(&plan(&old, &two_peers).add), [(1, "c")]);
    }
}
