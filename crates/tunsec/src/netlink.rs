//! rtnetlink, for the few link and routing changes tunsecd makes at start
//! and stop: gateway mode's rules and routes (`gateway::steering`), and
//! overlay mode's TAP devices enslaved to a bridge (`[[network]]
//! bridge`).
//!
//! Each call runs on a short-lived single-threaded runtime
//! ([`with_handle`]): the data path stays on plain threads.

use anyhow::{Context, bail};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

/// Runs `f` with an rtnetlink handle on a short-lived single-threaded
/// runtime: the data path stays on plain threads, and links and routes
/// change only at start and stop.
pub fn with_handle<T>(f: impl AsyncFnOnce(Handle) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start a runtime for rtnetlink")?;
    rt.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
        let conn = tokio::spawn(connection);
        let r = f(handle).await;
        conn.abort();
        r
    })
}

/// The device called `name`, or `None` if there is none.
pub async fn link(handle: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        // The kernel answers ENODEV for a name it does not know.
        Err(rtnetlink::Error::NetlinkError(e))
            if e.to_io().raw_os_error() == Some(nix::errno::Errno::ENODEV as i32) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot look up device {name:?}")),
    }
}

/// The index of the device called `name`.
pub async fn link_index(handle: &Handle, name: &str) -> anyhow::Result<u32> {
    match link(handle, name).await? {
        Some(link) => Ok(link.header.index),
        None => bail!("no device {name:?}"),
    }
}

/// The kind of a device (`bridge`, `veth`, `tun`...), if it has one.
fn kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// Why a device cannot be a bridge to enslave a TAP device to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeProblem {
    /// No device of that name.
    Missing,
    /// A device of another kind (`veth`, `openvswitch`...), or of none.
    NotABridge(String),
}

/// Why `bridge` cannot take a port (it does not exist, or it is not a
/// Linux bridge); `None` if it can.
pub fn bridge_problem(bridge: &str) -> anyhow::Result<Option<BridgeProblem>> {
    with_handle(async |handle| {
        Ok(match link(&handle, bridge).await? {
            None => Some(BridgeProblem::Missing),
            Some(l) => match kind(&l) {
                Some(InfoKind::Bridge) => None,
                Some(k) => Some(BridgeProblem::NotABridge(k.to_string())),
                None => Some(BridgeProblem::NotABridge(
                    "device without a kind".to_owned(),
                )),
            },
        })
    })
}

/// Makes the device `port` a port of the Linux bridge `bridge` and sets
/// it up (`ip link set PORT master BRIDGE up`).
pub fn enslave(port: &str, bridge: &str) -> anyhow::Result<()> {
    with_handle(async |handle| {
        let port_index = link_index(&handle, port).await?;
        let bridge_index = link_index(&handle, bridge).await?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(port_index)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("cannot make {port:?} a port of bridge {bridge:?}"))
    })
}
