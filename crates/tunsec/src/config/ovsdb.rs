//! `[ovsdb]`: gateway-mode peers from the tunnel interfaces of an Open
//! vSwitch database, as `ovs-monitor-ipsec` reads them (see
//! [`crate::ovs`]).

use serde::Deserialize;
use tunsec_ovsdb::Remote;

use super::{ConfigError, invalid, quoted};

/// The database `ovs-vswitchd` and `ovs-monitor-ipsec` use.
pub(super) const DEFAULT_DATABASE: &str = "Open_vSwitch";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOvsdb {
    remote: String,
    database: Option<String>,
    unixctl: Option<std::path::PathBuf>,
}

/// Where the tunnels come from (`[ovsdb]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovsdb {
    /// The server: `unix:/var/run/openvswitch/db.sock` or `tcp:HOST:PORT`.
    pub remote: Remote,
    /// The database, `Open_vSwitch` unless set.
    pub database: String,
    /// Where tunsecd answers `ovs-appctl -t PATH tunnels/show`, as
    /// `ovs-monitor-ipsec` does; none unless set.
    pub unixctl: Option<std::path::PathBuf>,
}

/// Checks `[ovsdb]`: a remote that parses, and gateway mode (OVS's
/// tunnels are the kernel's, which only gateway mode protects).
pub(super) fn validate_ovsdb(raw: RawOvsdb, gateway: bool) -> Result<Ovsdb, ConfigError> {
    let remote: Remote = raw.remote.parse().map_err(|e: tunsec_ovsdb::RemoteError| {
        invalid("ovsdb.remote", quoted(&raw.remote), e.reason)
    })?;
    if !gateway {
        return Err(invalid(
            "ovsdb.remote",
            quoted(&raw.remote),
            "needs [gateway]: the tunnels of the OVS database are the kernel's, which tunsecd protects in gateway mode",
        ));
    }
    let database = raw.database.unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
    if database.is_empty() {
        return Err(invalid("ovsdb.database", quoted(&database), "is empty"));
    }
    Ok(Ovsdb {
        remote,
        database,
        unixctl: raw.unixctl,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{parse, refused};
    use super::*;

    const NODE: &str = "[node]\nname = \"a\"\nunderlay = \"192.0.2.1\"\n";

    #[test]
    fn remote_needs_gateway_mode_and_a_scheme() {
        let c = parse(&format!(
            "{NODE}[gateway]\n[ovsdb]\nremote = \"unix:/run/openvswitch/db.sock\"\n"
        ))
        .unwrap();
        let o = c.ovsdb.unwrap();
        assert_eq!(o.remote, Remote::Unix("/run/openvswitch/db.sock".into()));
        assert_eq!(o.database, "Open_vSwitch");
        let (field, value, reason) = refused(parse(&format!(
            "{NODE}[ovsdb]\nremote = \"unix:/run/openvswitch/db.sock\"\n"
        )));
        assert_eq!(
            (field.as_str(), value.as_str()),
            ("ovsdb.remote", "\"unix:/run/openvswitch/db.sock\"")
        );
        assert!(reason.contains("needs [gateway]"), "{reason}");
        let (field, _, reason) = refused(parse(&format!(
            "{NODE}[gateway]\n[ovsdb]\nremote = \"/run/openvswitch/db.sock\"\n"
        )));
        assert_eq!(field, "ovsdb.remote");
        assert!(reason.contains("unix:PATH or tcp:HOST:PORT"), "{reason}");
    }
}
