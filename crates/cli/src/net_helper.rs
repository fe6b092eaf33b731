//! `starling net-helper`: what a monitor runs to put its clones on the network it is on
//! (`STARLING_NET_HELPER`, see starling-vmm's `clone_net`). Hidden: not a user's command.
//!
//!   attach PID COUNT HOSTNAME → a line per clone: `INDEX TAP IP` (IP in the kernel's `ip=`
//!                               form, hostname HOSTNAME-K); the leases are PID's until adopted
//!   adopt INDEX=PID …         → each lease follows its clone's monitor
//!   detach INDEX …            → the leases, TAPs and rules go

use anyhow::{bail, Context, Result};
use std::process::ExitCode;

pub fn run(args: &[String]) -> Result<ExitCode> {
    let num = |s: &str, what: &str| -> Result<u32> {
        s.parse()
            .with_context(|| format!("net-helper: {what} {s:?} is not a number"))
    };
    match args {
        [cmd, pid, count, hostname] if cmd == "attach" => {
            let (pid, count) = (num(pid, "pid")?, num(count, "count")?);
            if count == 0 || count > starling_vmm::service::MAX_CLONES {
                bail!(
                    "net-helper: {count} clones: between 1 and {}",
                    starling_vmm::service::MAX_CLONES
                );
            }
            let all = starling_net::attach_many(pid, count, &[])?;
            for (k, a) in all.iter().enumerate() {
                let ip = a.kernel_ip_param(&format!("{hostname}-{}", k + 1));
                println!("{} {} {}", a.index, a.tap, ip.trim_start_matches("ip="));
            }
            Ok(ExitCode::SUCCESS)
        }
        [cmd, pairs @ ..] if cmd == "adopt" => {
            let mut all = Vec::new();
            for p in pairs {
                let (i, pid) = p
                    .split_once('=')
                    .with_context(|| format!("net-helper: {p:?} is not INDEX=PID"))?;
                all.push((num(i, "lease")?, num(pid, "pid")?));
            }
            starling_net::adopt_all(&all)?;
            Ok(ExitCode::SUCCESS)
        }
        [cmd, indexes @ ..] if cmd == "detach" => {
            for i in indexes {
                starling_net::detach_index(num(i, "lease")?)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("net-helper: attach PID COUNT HOSTNAME | adopt INDEX=PID… | detach INDEX…"),
    }
}
