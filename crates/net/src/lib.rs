//! Host plumbing for VM networks (`--net nat`): one bridge per host (`starling0`, the
//! gateway of a private /16), a TAP per VM on it, an address per VM from a lease file,
//! outbound NAT (masquerade) and published ports (DNAT), all through netlink (rtnetlink for
//! links and addresses, libnftnl for nftables): nothing shells out to `ip` or `nft`.
//!
//! What Starling creates it names (`starling0`, `stapN`, nftables tables `starling` and
//! `starling-vmN`) and it never touches anything else. A VM's TAP dies with its monitor
//! (the monitor makes it non-persistent once it holds it); its lease and its table of
//! published ports are removed when the next VM is attached after it ended, whoever ends
//! it and however (a SIGKILLed monitor leaves nothing behind for long).
//!
//! Needs CAP_NET_ADMIN; without it every call fails with [`Error::Permission`].

#![forbid(unsafe_code)]

pub mod leases;
pub mod link;
pub mod nat;
pub mod publish;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use publish::{Proto, Publish};

/// The bridge every NAT network VM is on.
pub const BRIDGE: &str = "starling0";
/// The private network behind it: the bridge is .0.1, VMs from .0.2 up.
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);
pub const PREFIX: u8 = 16;
/// Addresses VMs can have: .0.2 to .255.254.
pub const MAX_VMS: u32 = (1 << (32 - PREFIX as u32)) - 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "setting up the VM network needs CAP_NET_ADMIN (run as root): {0}; or use --net \
         tap=NAME with a TAP made for this user"
    )]
    Permission(String),
    #[error("VM network: {0}")]
    Netlink(String),
    #[error("VM network: all {MAX_VMS} addresses of {SUBNET}/{PREFIX} are in use")]
    Exhausted,
    #[error("port {0} is already published by VM {1} (monitor pid {2})")]
    PortTaken(Publish, Ipv4Addr, u32),
    #[error("VM network state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A netlink failure, as permission or otherwise.
    pub(crate) fn from_os(what: &str, e: &std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(1) | Some(13) => Error::Permission(format!("{what}: {e}")),
            _ => Error::Netlink(format!("{what}: {e}")),
        }
    }
}

/// Where the lease file lives: `$STARLING_NET_STATE`, else /run/starling/net.
pub fn state_dir() -> PathBuf {
    std::env::var_os("STARLING_NET_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/starling/net"))
}

/// What a VM on the NAT network is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The lease number: the TAP is `stapN`, the address SUBNET + N + 1.
    pub index: u32,
    pub tap: String,
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// Name servers the guest can reach (the host's own, when they are not on loopback).
    pub dns: Vec<Ipv4Addr>,
    pub published: Vec<Publish>,
}

impl Attachment {
    /// The kernel's `ip=` parameter for it (Documentation/admin-guide/nfs/nfsroot.rst):
    /// `ip=ADDR::GATEWAY:NETMASK:HOSTNAME:eth0:off[:DNS0[:DNS1]]`. Starling's initramfs and
    /// agent apply it when the kernel's own autoconfiguration cannot (virtio_net is a module).
    /// The VM's network device on this attachment (its TAP taken over by the monitor, so that
    /// it goes with the VM; the guest's address for `whoami`) and the `ip=` parameter for its
    /// kernel command line.
    pub fn device(&self, hostname: &str) -> (starling_vmm::NetConfig, String) {
        let ip = self.kernel_ip_param(hostname);
        let config = starling_vmm::NetConfig {
            tap: self.tap.clone(),
            mac: None,
            rx: None,
            tx: None,
            owned: true,
            ip: Some(ip.trim_start_matches("ip=").to_owned()),
        };
        (config, ip)
    }

    /// The attachment as a restore or an activation takes it (see `RestoreSpec::networks`).
    pub fn net_attach(&self, hostname: &str) -> starling_vmm::spec::NetAttach {
        starling_vmm::spec::NetAttach {
            tap: self.tap.clone(),
            ip: self
                .kernel_ip_param(hostname)
                .trim_start_matches("ip=")
                .to_owned(),
        }
    }

    pub fn kernel_ip_param(&self, hostname: &str) -> String {
        let mask = Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix)));
        let mut s = format!(
            "ip={}::{}:{}:{}:eth0:off",
            self.address, self.gateway, mask, hostname
        );
        for d in self.dns.iter().take(2) {
            s.push_str(&format!(":{d}"));
        }
        s
    }
}

/// Puts a new VM (its monitor will be process `pid`) on the NAT network: bridge and NAT
/// rules made if missing, stale leases of ended VMs removed, an address and a TAP of its own,
/// `publish` forwarded to it. The TAP is persistent until the monitor takes it over.
pub fn attach(pid: u32, publish: &[Publish]) -> Result<Attachment, Error> {
    attach_in(&state_dir(), pid, publish)
}

pub fn attach_in(state: &Path, pid: u32, publish: &[Publish]) -> Result<Attachment, Error> {
    let mut all = attach_many_in(state, pid, 1, publish)?;
    all.pop()
        .ok_or_else(|| Error::Invalid("no attachment made".into()))
}

/// `count` attachments at once for process `pid` (a parent monitor forking clones, which
/// hands each lease to its clone with [`adopt`]); `publish` goes to the first. All or none.
pub fn attach_many(pid: u32, count: u32, publish: &[Publish]) -> Result<Vec<Attachment>, Error> {
    attach_many_in(&state_dir(), pid, count, publish)
}

pub fn attach_many_in(
    state: &Path,
    pid: u32,
    count: u32,
    publish: &[Publish],
) -> Result<Vec<Attachment>, Error> {
    publish::check_unique(publish)?;
    let rt = link::runtime()?;
    rt.block_on(link::ensure_bridge())?;
    nat::ensure_masquerade()?;
    set_forwarding()?;
    set_route_localnet()?;
    let mut leases = leases::Leases::lock(state)?;
    for gone in leases.reap() {
        nat::remove_vm(gone.index);
        rt.block_on(link::remove_tap(&gone.tap));
    }
    let mut made: Vec<leases::Lease> = Vec::new();
    let mut result = Ok(());
    for i in 0..count {
        let publish = if i == 0 { publish } else { &[] };
        let lease = match leases.take(pid, publish) {
            Ok(l) => l,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        made.push(lease.clone());
        let tap = lease.tap.clone();
        result = (|| {
            // Starling owns the `stapN` names: one left without a lease (its lease file was
            // removed by hand) goes, rather than failing every VM that draws its number.
            rt.block_on(link::remove_tap(&tap));
            starling_vmm::virtio::net::tap::create_persistent(&tap)
                .map_err(|e| Error::Netlink(e.to_string()))?;
            rt.block_on(link::attach_to_bridge(&tap))?;
            nat::publish(lease.index, lease.address, publish)?;
            Ok(())
        })();
        if result.is_err() {
            break;
        }
    }
    if let Err(e) = result {
        for lease in made {
            nat::remove_vm(lease.index);
            rt.block_on(link::remove_tap(&lease.tap));
            leases.release(lease.index)?;
        }
        return Err(e);
    }
    leases.save()?;
    let dns = host_dns();
    Ok(made
        .into_iter()
        .enumerate()
        .map(|(i, lease)| Attachment {
            index: lease.index,
            tap: lease.tap,
            address: lease.address,
            gateway: leases::gateway(),
            prefix: PREFIX,
            dns: dns.clone(),
            published: if i == 0 { publish.to_vec() } else { Vec::new() },
        })
        .collect())
}

/// Hands lease `index` to process `pid` (the monitor, once its owner has started it): the
/// lease is then reaped when that process ends.
pub fn adopt(index: u32, pid: u32) -> Result<(), Error> {
    adopt_all(&[(index, pid)])
}

/// [`adopt`] for several leases under one lock: (lease, pid) pairs.
pub fn adopt_all(pairs: &[(u32, u32)]) -> Result<(), Error> {
    let mut leases = leases::Leases::lock(&state_dir())?;
    for &(index, pid) in pairs {
        leases.adopt(index, pid)?;
    }
    leases.save()
}

/// Takes a VM off the network now (its monitor failed to start, or it ended and its owner
/// is still there): its published ports, its TAP, its lease.
pub fn detach(att: &Attachment) -> Result<(), Error> {
    detach_in(&state_dir(), att)
}

pub fn detach_in(state: &Path, att: &Attachment) -> Result<(), Error> {
    detach_index_in(state, att.index)
}

/// Takes lease `index` off the network: its published ports, its TAP, its lease (nothing
/// if there is no such lease).
pub fn detach_index(index: u32) -> Result<(), Error> {
    detach_index_in(&state_dir(), index)
}

fn detach_index_in(state: &Path, index: u32) -> Result<(), Error> {
    let mut leases = leases::Leases::lock(state)?;
    let Some(lease) = leases.all().into_iter().find(|l| l.index == index) else {
        return Ok(());
    };
    nat::remove_vm(index);
    if let Ok(rt) = link::runtime() {
        rt.block_on(link::remove_tap(&lease.tap));
    }
    leases.release(index)?;
    leases.save()
}

/// The VMs on the network, as the lease file has them (ended ones included until reaped).
pub fn list() -> Result<Vec<leases::Lease>, Error> {
    Ok(leases::Leases::lock(&state_dir())?.all())
}

fn set_forwarding() -> Result<(), Error> {
    let p = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(p).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(p, "1").map_err(|e| Error::from_os("enabling IPv4 forwarding", &e))
}

/// Lets the bridge route 127.0.0.0/8, so the host's connections to `localhost:PORT` reach a
/// published port (see `nat`, which also drops such addresses coming in from the bridge).
fn set_route_localnet() -> Result<(), Error> {
    let p = format!("/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet");
    if std::fs::read_to_string(&p).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(&p, "1")
        .map_err(|e| Error::from_os(&format!("allowing {BRIDGE} to route localhost"), &e))
}

/// The host's name servers from /etc/resolv.conf, without loopback ones (a resolver on the
/// host's 127.0.0.53 is not reachable from a guest).
pub fn host_dns() -> Vec<Ipv4Addr> {
    parse_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
}

fn parse_resolv_conf(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_ip_parameter_and_name_servers() {
        let a = Attachment {
            index: 3,
            tap: "stap3".into(),
            address: Ipv4Addr::new(10, 213, 0, 4),
            gateway: Ipv4Addr::new(10, 213, 0, 1),
            prefix: 16,
            dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
            published: vec![],
        };
        assert_eq!(
            a.kernel_ip_param("web"),
            "ip=10.213.0.4::10.213.0.1:255.255.0.0:web:eth0:off:192.0.2.53"
        );
        assert_eq!(
            parse_resolv_conf("# x\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch a\n"),
            vec![Ipv4Addr::new(192, 0, 2, 1)]
        );
    }
}
