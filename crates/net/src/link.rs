//! Links and addresses by rtnetlink: the bridge (made once, with the gateway address, up),
//! a VM's TAP put on it and brought up, and taken away again.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use crate::{Error, BRIDGE, PREFIX};

/// A one-thread runtime for the netlink connection (the callers are synchronous).
pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::Netlink(format!("starting a runtime: {e}")))
}

fn nl_err(what: &str, e: rtnetlink::Error) -> Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => Error::from_os(what, &m.to_io()),
        e => Error::Netlink(format!("{what}: {e}")),
    }
}

async fn connect() -> Result<Handle, Error> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| Error::from_os("netlink socket", &e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The index of link `name`, if there is one.
async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, Error> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // No such device.
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -19 => Ok(None),
        Err(e) => Err(nl_err(&format!("looking up {name}"), e)),
    }
}

/// Makes the bridge if it is missing: `starling0`, the gateway address, up, with a MAC set
/// when it is made (a bridge whose MAC was never set takes the lowest of its ports', so a VM
/// joining would change the gateway's MAC under every other VM and flush the host's
/// neighbour cache; setting it later flushes that cache too). A bridge that exists is left
/// as it is but for being brought up.
pub async fn ensure_bridge() -> Result<(), Error> {
    let handle = connect().await?;
    let index = match index_of(&handle, BRIDGE).await? {
        Some(i) => i,
        None => {
            handle
                .link()
                .add(
                    LinkBridge::new(BRIDGE)
                        .address(starling_vmm::Mac::random().0.to_vec())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| nl_err(&format!("creating bridge {BRIDGE}"), e))?;
            let i = index_of(&handle, BRIDGE).await?.ok_or_else(|| {
                Error::Netlink(format!("bridge {BRIDGE} vanished after it was made"))
            })?;
            handle
                .address()
                .add(i, IpAddr::V4(crate::leases::gateway()), PREFIX)
                .execute()
                .await
                .map_err(|e| nl_err(&format!("addressing bridge {BRIDGE}"), e))?;
            i
        }
    };
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| nl_err(&format!("bringing bridge {BRIDGE} up"), e))
}

/// Puts TAP `tap` on the bridge and brings it up.
pub async fn attach_to_bridge(tap: &str) -> Result<(), Error> {
    let handle = connect().await?;
    let bridge = index_of(&handle, BRIDGE)
        .await?
        .ok_or_else(|| Error::Netlink(format!("no bridge {BRIDGE}")))?;
    let index = index_of(&handle, tap)
        .await?
        .ok_or_else(|| Error::Netlink(format!("no TAP {tap}")))?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| nl_err(&format!("putting {tap} on {BRIDGE}"), e))
}

/// Removes TAP `tap` if it is still there (a monitor that held it took it along).
pub async fn remove_tap(tap: &str) {
    let Ok(handle) = connect().await else {
        return;
    };
    if let Ok(Some(index)) = index_of(&handle, tap).await {
        let _ = handle.link().del(index).execute().await;
    }
}
