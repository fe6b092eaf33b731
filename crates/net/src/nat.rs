//! nftables by libnftnl: table `ip starling` masquerades what the VM network sends out, and
//! each VM with published ports has a table of its own, `ip starling-vmN`, that forwards
//! (DNAT) those ports to it and is deleted with it. Every change is one atomic batch that
//! first adds and deletes the table it replaces, so running it again changes nothing and a
//! table is never seen half made.
//!
//! Published ports are reached from the host itself too (`localhost:PORT`, as docker's users
//! expect): an output-hook DNAT for connections routed to the host's own addresses (out
//! through `lo`, so the host's connections to other machines' ports are never caught), the
//! bridge allowed to route 127.0.0.0/8 (`route_localnet`) and such connections masqueraded
//! as the gateway. What that sysctl would open, a guest sending to (or from) 127.0.0.0/8
//! through the bridge, is dropped before routing.

use std::ffi::CString;
use std::net::Ipv4Addr;

use nftnl::expr::{Immediate, InterfaceName, Nat, NatType, Register};
use nftnl::nftnl_sys::libc;
use nftnl::{
    nft_expr, Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, ProtoFamily, Rule, Table,
};

use crate::{Error, Proto, Publish, BRIDGE, PREFIX, SUBNET};

const TABLE: &str = "starling";

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn vm_table(index: u32) -> CString {
    cstr(&format!("starling-vm{index}"))
}

/// Masquerade for the VM network's traffic leaving through any other interface.
pub fn ensure_masquerade() -> Result<(), Error> {
    let name = cstr(TABLE);
    let table = Table::new(&name, ProtoFamily::Ipv4);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    let chain_name = cstr("postrouting");
    let mut chain = Chain::new(&chain_name, &table);
    chain.set_hook(Hook::PostRouting, 100);
    chain.set_type(ChainType::Nat);
    batch.add(&chain, MsgType::Add);
    let mask = u32::MAX << (32 - u32::from(PREFIX));
    let mut rule = Rule::new(&chain);
    rule.add_expr(&nft_expr!(payload ipv4 saddr));
    rule.add_expr(&nft_expr!(bitwise mask Ipv4Addr::from(mask), xor Ipv4Addr::UNSPECIFIED));
    rule.add_expr(&nft_expr!(cmp == SUBNET));
    rule.add_expr(&nft_expr!(meta oifname));
    rule.add_expr(&nft_expr!(cmp != InterfaceName::Exact(cstr(BRIDGE))));
    rule.add_expr(&nft_expr!(masquerade));
    batch.add(&rule, MsgType::Add);
    // The host's own connections to a published port from a loopback address.
    let mut rule = Rule::new(&chain);
    loopback(&mut rule, Field::Source);
    rule.add_expr(&nft_expr!(meta oifname));
    rule.add_expr(&nft_expr!(cmp == InterfaceName::Exact(cstr(BRIDGE))));
    rule.add_expr(&nft_expr!(masquerade));
    batch.add(&rule, MsgType::Add);
    // route_localnet's other side: loopback addresses never come in from the bridge.
    let guard_name = cstr("guard");
    let mut guard = Chain::new(&guard_name, &table);
    guard.set_hook(Hook::PreRouting, -300);
    guard.set_type(ChainType::Filter);
    batch.add(&guard, MsgType::Add);
    for field in [Field::Destination, Field::Source] {
        let mut rule = Rule::new(&guard);
        rule.add_expr(&nft_expr!(meta iifname));
        rule.add_expr(&nft_expr!(cmp == InterfaceName::Exact(cstr(BRIDGE))));
        loopback(&mut rule, field);
        rule.add_expr(&nft_expr!(verdict drop));
        batch.add(&rule, MsgType::Add);
    }
    send(&batch.finalize(), "masquerade rules (table ip starling)")
}

enum Field {
    Source,
    Destination,
}

/// Matches packets whose source or destination is in 127.0.0.0/8.
fn loopback(rule: &mut Rule, field: Field) {
    match field {
        Field::Source => rule.add_expr(&nft_expr!(payload ipv4 saddr)),
        Field::Destination => rule.add_expr(&nft_expr!(payload ipv4 daddr)),
    }
    rule.add_expr(&nft_expr!(bitwise mask Ipv4Addr::new(255, 0, 0, 0), xor Ipv4Addr::UNSPECIFIED));
    rule.add_expr(&nft_expr!(cmp == Ipv4Addr::new(127, 0, 0, 0)));
}

/// Forwards each of `ports` arriving from outside the VM network, or from the host itself,
/// to `address`.
pub fn publish(index: u32, address: Ipv4Addr, ports: &[Publish]) -> Result<(), Error> {
    if ports.is_empty() {
        return Ok(());
    }
    let name = vm_table(index);
    let table = Table::new(&name, ProtoFamily::Ipv4);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    // From outside: arriving through any interface but the bridge. From the host itself:
    // routed to one of its own addresses (out through `lo`), which no connection to
    // another machine is.
    let pre_name = cstr("prerouting");
    let out_name = cstr("output");
    let lo = cstr("lo");
    let bridge = cstr(BRIDGE);
    for (chain_name, hook, iface) in [
        (&pre_name, Hook::PreRouting, nft_expr!(meta iifname)),
        (&out_name, Hook::Out, nft_expr!(meta oifname)),
    ] {
        let mut chain = Chain::new(chain_name, &table);
        chain.set_hook(hook, -100);
        chain.set_type(ChainType::Nat);
        batch.add(&chain, MsgType::Add);
        for p in ports {
            let proto = match p.proto {
                Proto::Tcp => libc::IPPROTO_TCP as u8,
                Proto::Udp => libc::IPPROTO_UDP as u8,
            };
            let mut rule = Rule::new(&chain);
            rule.add_expr(&iface);
            if hook == Hook::Out {
                rule.add_expr(&nft_expr!(cmp == InterfaceName::Exact(lo.clone())));
            } else {
                rule.add_expr(&nft_expr!(cmp != InterfaceName::Exact(bridge.clone())));
            }
            rule.add_expr(&nft_expr!(meta l4proto));
            rule.add_expr(&nft_expr!(cmp == proto));
            match p.proto {
                Proto::Tcp => rule.add_expr(&nft_expr!(payload tcp dport)),
                Proto::Udp => rule.add_expr(&nft_expr!(payload udp dport)),
            }
            rule.add_expr(&nft_expr!(cmp == p.host.to_be()));
            rule.add_expr(&Immediate::new(address.octets(), Register::Reg1));
            rule.add_expr(&Immediate::new(p.guest.to_be(), Register::Reg2));
            rule.add_expr(&Nat {
                nat_type: NatType::DNat,
                family: ProtoFamily::Ipv4,
                ip_register: Register::Reg1,
                port_register: Some(Register::Reg2),
            });
            batch.add(&rule, MsgType::Add);
        }
    }
    send(
        &batch.finalize(),
        &format!("published ports (table ip {})", name.to_string_lossy()),
    )
}

/// Deletes VM `index`'s table of published ports, if there is one.
pub fn remove_vm(index: u32) {
    let name = vm_table(index);
    let table = Table::new(&name, ProtoFamily::Ipv4);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    let _ = send(&batch.finalize(), "removing published ports");
}

fn send(batch: &FinalizedBatch, what: &str) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::from_os(what, &e);
    let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(io)?;
    let portid = socket.portid();
    socket.send_all(batch).map_err(io)?;
    let mut buffer = vec![0; nftnl::nft_nlmsg_maxsize() as usize];
    let mut expected = batch.sequence_numbers();
    while !expected.is_empty() {
        for message in socket.recv(&mut buffer[..]).map_err(io)? {
            let message = message.map_err(io)?;
            let Some(seq) = expected.next() else {
                return Err(Error::Netlink(format!(
                    "{what}: an answer nobody asked for"
                )));
            };
            mnl::cb_run(message, seq, portid).map_err(io)?;
        }
    }
    Ok(())
}
