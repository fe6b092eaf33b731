//! The agent re-addressing a guest (`starling-agent net`, what clones and restores run when
//! `whoami` gives them an address) on this host's own kernel, in network namespaces the test
//! makes (tests/net/readdress.sh): needs root.

use std::process::Command;

#[test]
fn readdressing_aborts_old_connections_without_resetting_the_peer_and_announces() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        starling_testkit::skip("network namespaces and veth pairs: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("starling-agent");
    std::fs::write(&agent, starling_guest::AGENT).unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/net/readdress.sh");
    let out = Command::new("unshare")
        .args(["-n", "bash", script])
        .arg(&agent)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    let has = |s: &str| assert!(text.contains(s), "no {s:?} in:\n{text}\n{err}");
    has("connected");
    has("agent 0 starling-agent: eth0 address 10.9.0.6 (was 10.9.0.5), 2 TCP connections from the old one aborted");
    // ECONNABORTED in the guest, and no reset reached the peers.
    has("client error 103");
    has("server error 103");
    has("host end quiet");
    has("host client quiet");
    has("garp 10.9.0.6 ");
    has("inet 10.9.0.6/24");
    has("default via 10.9.0.1 dev eth0");
    has("bad address refused 1");
    // The MAC it was given (a clone's own) is the interface's, and the one announced.
    has("link/ether 02:aa:bb:cc:dd:ee");
    has("garp 10.9.0.6 02:aa:bb:cc:dd:ee");
    assert_eq!(
        text.matches("inet 10.9.0.6/24").count(),
        2,
        "the bad address changed nothing:\n{text}"
    );
}
