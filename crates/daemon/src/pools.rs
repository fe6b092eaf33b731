//! Pools of an image's substrates (`starling pool create NAME --image [URL] IMAGE -- CMD`):
//! the VM `starling run` would start (the same boot artifact, root over virtio-fs from the
//! host cache, scratch disk), booted until its guest says `ready` and docked by the monitor's
//! pool library. The run init of a substrate waits at `ready`; activated, it runs the pool's
//! command with the activation's environment, or the activation's arguments as the command.

use std::time::Duration;

use starling_vmm::pool::{CreateOptions, PoolError, PoolInfo, Pools};

use crate::api::PoolRequest;
use crate::server::Daemon;
use crate::DaemonError;

/// The first boot of a substrate may take at most this long (a request may ask less).
const MAX_BOOT_TIMEOUT: Duration = Duration::from_secs(1800);

pub fn create(d: &Daemon, req: &PoolRequest) -> Result<PoolInfo, DaemonError> {
    if req.run.cmd.is_empty() {
        return Err(DaemonError::BadRequest(format!(
            "a pool of an image needs a command: starling pool create {} --image {} -- CMD \
             (an activation's --args replace it)",
            req.name,
            req.run.image_arg()
        )));
    }
    if req.boot_timeout_secs == 0 || req.boot_timeout_secs > MAX_BOOT_TIMEOUT.as_secs() {
        return Err(DaemonError::BadRequest(format!(
            "--timeout {}: give 1 to {} seconds",
            req.boot_timeout_secs,
            MAX_BOOT_TIMEOUT.as_secs()
        )));
    }
    let (image, boot) = crate::run::prepare(d, &req.run)?;
    let pool_err = |e: PoolError| match e {
        e @ PoolError::Exists { .. } => DaemonError::Conflict(e.to_string()),
        e @ (PoolError::BadName(_) | PoolError::TooBig(_) | PoolError::Config(_)) => {
            DaemonError::BadRequest(e.to_string())
        }
        // The guest did not boot to `ready`, a substrate did not start: the VM's logs say why.
        e => DaemonError::Upstream(e.to_string()),
    };
    let draft = Pools::new(&req.pools).begin(&req.name).map_err(pool_err)?;
    let scratch = draft.dir().join("scratch.img");
    crate::vms::scratch_disk(&scratch, &req.run, &image, true)?;
    let mut config =
        crate::vms::run_config(&req.run, &image, boot, &scratch, &d.config.objects_socket());
    // On Starling's network: the first boot has an address (its TAP goes with it); each
    // activation gets its own (`pool run`).
    let att = match req.run.net {
        crate::api::RunNet::None => None,
        crate::api::RunNet::Nat => {
            let att =
                starling_net::attach(std::process::id(), &[]).map_err(crate::vms::net_error)?;
            let (device, ip) = att.device(&req.name);
            config.cmdline = format!("{} {ip}", config.cmdline);
            config.net.push(device);
            Some(att)
        }
    };
    let made = draft
        .create(CreateOptions {
            vm: config,
            size: req.size,
            boot_timeout: Duration::from_secs(req.boot_timeout_secs),
            image: Some(image.display.clone()),
        })
        .map_err(pool_err);
    if let Some(att) = &att {
        let _ = starling_net::detach(att);
    }
    made
}
