//! Clones on their parent's network: each clone of a VM whose network was made for it
//! (`--net nat`) gets a TAP and an address of its own, which its guest's agent takes on when
//! `whoami` (or a pending `watch`) tells it. The monitor has no netlink or nftables code of its
//! own: whoever made the network names a helper program in `STARLING_NET_HELPER` (the
//! `starling` binary, whose hidden `net-helper` command does it) and the monitor runs it:
//!
//!   HELPER net-helper attach PID COUNT HOSTNAME → one line per clone: `INDEX TAP IP`
//!                                                 (leases held for PID until adopted)
//!   HELPER net-helper adopt INDEX=PID …           → the leases follow the clones' monitors
//!   HELPER net-helper detach INDEX …              → a fork that failed gives them back
//!
//! A VM without such a network, or a monitor started without a helper, forks clones whose
//! network devices are detached (link down), as before.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::api::CloneInfo;
use crate::spec::NetAttach;

/// The variable naming the helper program.
pub const HELPER_VAR: &str = "STARLING_NET_HELPER";

/// Most bytes of helper output read (a line per clone).
const MAX_OUTPUT: usize = 1 << 20;

/// Leases taken for the clones of one fork, the first network device's (`net0`).
pub struct CloneNetworks {
    helper: PathBuf,
    device: String,
    /// Lease number and attachment, clone 1 first.
    leases: Vec<(u32, NetAttach)>,
}

impl CloneNetworks {
    /// Takes `count` leases if this VM's device `device` was given its address by a network
    /// (`ip` is its `ip=` value) and a helper is named; None otherwise.
    pub fn attach(
        device: &str,
        ip: Option<&str>,
        count: u32,
        hostname: &str,
    ) -> Result<Option<CloneNetworks>, String> {
        let (Some(_), Some(helper)) = (ip, std::env::var_os(HELPER_VAR)) else {
            return Ok(None);
        };
        if crate::jail::jailed() {
            // The helper is not in the jail (and needs privileges the monitor gave up).
            return Ok(None);
        }
        let helper = PathBuf::from(helper);
        let pid = std::process::id().to_string();
        let out = run(
            &helper,
            &["attach", &pid, &count.to_string(), hostname],
            "giving the clones addresses",
        )?;
        let mut leases = Vec::new();
        for line in out.lines() {
            let mut w = line.split_whitespace();
            match (w.next().and_then(|i| i.parse().ok()), w.next(), w.next()) {
                (Some(index), Some(tap), Some(ip))
                    if crate::virtio::net::tap::check_name(tap).is_ok()
                        && crate::config::check_ip_param(ip).is_ok() =>
                {
                    leases.push((
                        index,
                        NetAttach {
                            tap: tap.to_owned(),
                            ip: ip.to_owned(),
                        },
                    ))
                }
                _ => {}
            }
        }
        let nets = CloneNetworks {
            helper,
            device: device.to_owned(),
            leases,
        };
        if nets.leases.len() != count as usize {
            let got = nets.leases.len();
            let why = format!(
                "network helper {}: {got} of {count} clone addresses in its answer",
                nets.helper.display()
            );
            nets.detach();
            return Err(why);
        }
        Ok(Some(nets))
    }

    /// What clone `id` (1..) restores with.
    pub fn for_clone(&self, id: u32) -> BTreeMap<String, NetAttach> {
        id.checked_sub(1)
            .and_then(|i| self.leases.get(i as usize))
            .map(|(_, a)| (self.device.clone(), a.clone()))
            .into_iter()
            .collect()
    }

    /// The clones run: their leases end with their monitors from now on.
    pub fn adopt(self, clones: &[CloneInfo]) -> Result<(), String> {
        let args: Vec<String> = clones
            .iter()
            .filter_map(|c| {
                let (index, _) = self.leases.get(c.id.checked_sub(1)? as usize)?;
                Some(format!("{index}={}", c.pid))
            })
            .collect();
        let mut all = vec!["adopt"];
        all.extend(args.iter().map(String::as_str));
        run(&self.helper, &all, "handing the clones their addresses").map(|_| ())
    }

    /// The fork failed: the leases, TAPs and rules go.
    pub fn detach(self) {
        let args: Vec<String> = self.leases.iter().map(|(i, _)| i.to_string()).collect();
        if args.is_empty() {
            return;
        }
        let mut all = vec!["detach"];
        all.extend(args.iter().map(String::as_str));
        let _ = run(&self.helper, &all, "giving the clones' addresses back");
    }
}

fn run(helper: &PathBuf, args: &[&str], what: &str) -> Result<String, String> {
    use std::io::Read;
    let mut child = Command::new(helper)
        .arg("net-helper")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: network helper {}: {e}", helper.display()))?;
    let mut out = String::new();
    if let Some(o) = child.stdout.take() {
        let _ = o.take(MAX_OUTPUT as u64).read_to_string(&mut out);
    }
    let mut err = String::new();
    if let Some(e) = child.stderr.take() {
        let _ = e.take(4096).read_to_string(&mut err);
    }
    let status = child
        .wait()
        .map_err(|e| format!("{what}: network helper: {e}"))?;
    if !status.success() {
        let last = err.lines().last().unwrap_or("no message").trim();
        return Err(format!("{what}: {last}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_helper_or_no_address_means_no_leases() {
        // Without an address the helper is never run, whatever the environment names.
        assert!(CloneNetworks::attach("net0", None, 2, "vm")
            .unwrap()
            .is_none());
    }

    #[test]
    fn helper_answers_are_checked() {
        let dir = std::env::temp_dir().join(format!("starling-clone-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let helper = dir.join("helper");
        // One good line and one with a TAP name no kernel takes: the fork is refused, and
        // the helper is asked to give back what it handed out.
        std::fs::write(
            &helper,
            format!(
                "#!/bin/sh\ncase $2 in attach) echo '7 stap7 10.213.0.8::10.213.0.1:255.255.0.0:vm-1:eth0:off'; \
                 echo '8 a/b 10.213.0.9';; detach) echo \"$@\" > {}/detached;; esac\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let nets = CloneNetworks {
            helper: helper.clone(),
            device: "net0".into(),
            leases: Vec::new(),
        };
        let out = run(&nets.helper, &["attach", "1", "2", "vm"], "test").unwrap();
        assert_eq!(out.lines().count(), 2);
        // The parsing path, through `attach` (the variable is read there).
        std::env::set_var(HELPER_VAR, &helper);
        let e = CloneNetworks::attach("net0", Some("x"), 2, "vm")
            .err()
            .unwrap();
        std::env::remove_var(HELPER_VAR);
        assert!(e.contains("1 of 2 clone addresses"), "{e}");
        let detached = std::fs::read_to_string(dir.join("detached")).unwrap();
        assert_eq!(detached.trim(), "net-helper detach 7");
        // A failing helper's last line is the error.
        std::fs::write(
            &helper,
            "#!/bin/sh\necho 'first' >&2; echo 'no addresses left' >&2; exit 1\n",
        )
        .unwrap();
        let e = run(&helper, &["attach", "1", "1", "vm"], "giving").unwrap_err();
        assert_eq!(e, "giving: no addresses left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
