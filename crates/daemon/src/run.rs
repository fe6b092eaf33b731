//! `starling run` on the daemon's side: resolve the image, choose its kernel, build (or
//! reuse) the boot artifact, and start the VM; and committing a VM's writable layer.

use std::time::Duration;

use crate::api::{CommitInfo, RunRequest, VmCommitRequest, VmInfo, VmState};
use crate::server::Daemon;
use crate::DaemonError;

/// Memory a VM may have (MiB): below it the kernel does not boot, above it is a typo.
const MEM_RANGE: std::ops::RangeInclusive<u64> = 64..=(1 << 20);

pub fn create(d: &Daemon, req: &RunRequest) -> Result<VmInfo, DaemonError> {
    let (image, boot) = prepare(d, req)?;
    d.vms.create(req, image, boot, &d.config.objects_socket())
}

/// Checks a request, resolves its image and builds (or finds) its boot artifact: kernel and
/// initramfs.
pub fn prepare(
    d: &Daemon,
    req: &RunRequest,
) -> Result<
    (
        crate::vms::Resolved,
        (std::path::PathBuf, std::path::PathBuf),
    ),
    DaemonError,
> {
    if !MEM_RANGE.contains(&req.mem_mib) {
        return Err(DaemonError::BadRequest(format!(
            "--mem {} MiB: give between {} MiB and {} GiB",
            req.mem_mib,
            MEM_RANGE.start(),
            MEM_RANGE.end() >> 10
        )));
    }
    check_request(req)?;
    let host_mib = host_memory_mib();
    if host_mib.is_some_and(|h| req.mem_mib > h) {
        return Err(DaemonError::BadRequest(format!(
            "--mem {} MiB is more than this host has ({} MiB)",
            req.mem_mib,
            host_mib.unwrap_or(0)
        )));
    }
    let image = crate::vms::resolve(&req.source, &d.objects)?;
    let kernel =
        crate::kernels::choose(&d.config.state, &req.store, req.kernel.as_deref(), &image)?;
    let artifact = starling_guest::run::artifact(&d.config.state.join("boot"), &kernel.dir)
        .map_err(|e| DaemonError::BadRequest(format!("kernel from {}: {e}", kernel.origin)))?;
    Ok((image, (artifact.kernel, artifact.initrd)))
}

/// What `--kernel-args` may add to the kernel's command line.
const MAX_KERNEL_ARGS: usize = 1024;

/// Scratch disks below this hold nothing useful; above, a typo.
const DISK_RANGE: std::ops::RangeInclusive<u64> = (64 << 20)..=(16 << 40);

/// What the guest's agent would refuse, refused here with the flag's name instead.
fn check_request(req: &RunRequest) -> Result<(), DaemonError> {
    use starling_guest::exec::{MAX_ARGC, MAX_ENVC, MAX_STRING, MAX_STRINGS_TOTAL};
    let bad = |m: String| Err(DaemonError::BadRequest(m));
    let max_vcpus = starling_vmm::config::MAX_VCPUS;
    if req.vcpus == 0 || req.vcpus > max_vcpus {
        return bad(format!("--vcpus {}: give 1 to {max_vcpus}", req.vcpus));
    }
    if req
        .kernel_args
        .as_ref()
        .is_some_and(|a| a.contains('\n') || a.len() > MAX_KERNEL_ARGS)
    {
        return bad(format!(
            "--kernel-args: one line of at most {MAX_KERNEL_ARGS} bytes"
        ));
    }
    if !DISK_RANGE.contains(&req.disk_bytes) {
        return bad(format!(
            "--disk-size {} bytes: give 64M to 16T",
            req.disk_bytes
        ));
    }
    if req.cmd.len() > MAX_ARGC || req.env.len() > MAX_ENVC {
        return bad(format!(
            "{} arguments and {} environment entries: at most {MAX_ARGC} and {MAX_ENVC}",
            req.cmd.len(),
            req.env.len()
        ));
    }
    let mut total = 0;
    for (what, list) in [("argument", &req.cmd), ("--env", &req.env)] {
        for s in list.iter() {
            total += s.len();
            if s.len() > MAX_STRING || s.contains('\0') {
                return bad(format!(
                    "{what} {:?}…: at most {MAX_STRING} bytes and no NUL byte",
                    s.chars().take(40).collect::<String>()
                ));
            }
        }
    }
    if total > MAX_STRINGS_TOTAL {
        return bad(format!(
            "the command and environment are {total} bytes (at most {MAX_STRINGS_TOTAL})"
        ));
    }
    if req.net == crate::api::RunNet::None && !req.publish.is_empty() {
        return bad(
            "-p publishes a port of a VM on Starling's network: not with --net none".into(),
        );
    }
    if let Err(e) = starling_net::publish::check_unique(&req.publish) {
        return bad(e.to_string());
    }
    if let Some(e) = req
        .env
        .iter()
        .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
    {
        return bad(format!("--env {e:?}: give KEY=VALUE"));
    }
    Ok(())
}

fn host_memory_mib() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = m
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Stores VM `name`'s writable layer as a new version of the image it runs: the guest's
/// writes are synced (through its agent) and the VM paused while its scratch disk is read,
/// then it goes on.
pub fn commit(d: &Daemon, name: &str, req: &VmCommitRequest) -> Result<CommitInfo, DaemonError> {
    let info = d.vms.get(name)?;
    let rec = d.vms.record(name)?;
    let (new_name, tag) = starling_image::reference::ImageRef::parse_tag(&req.image)
        .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
    let base: starling_store::ObjectId = rec
        .version
        .parse()
        .map_err(|_| DaemonError::Internal(format!("VM {name}: bad version in its record")))?;
    let running = matches!(info.state, VmState::Running | VmState::Starting);
    let api = starling_vmm::api::client::Client::new(&info.api_socket);
    if running {
        let synced = crate::agent::exec(&info.vsock_socket, &["sync"], Duration::from_secs(60));
        match synced {
            Ok(0) => {}
            Ok(s) => {
                return Err(DaemonError::Upstream(format!(
                    "VM {name}: sync in the guest ended with status {s}"
                )))
            }
            Err(e) => {
                return Err(DaemonError::Upstream(format!(
                    "VM {name}: its agent did not sync the guest's writes: {e}"
                )))
            }
        }
        api.pause()
            .map_err(|e| DaemonError::Upstream(format!("pausing VM {name}: {e}")))?;
    }
    let result = (|| {
        let source = d
            .objects
            .object_source(&rec.source)
            .map_err(DaemonError::BadRequest)?;
        let store = starling_store::Store::open_or_init(&req.store)
            .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
        let copied = crate::mounts::copy_image(source.as_ref(), &base, &store)?;
        let r = starling_image::scratch::commit(
            &store,
            &base,
            &d.vms.paths(name).scratch(),
            &new_name,
            &tag,
            &format!("commit of VM {name}"),
        )
        .map_err(|e| DaemonError::Internal(e.to_string()))?;
        Ok(CommitInfo {
            image: format!("{new_name}:{tag}"),
            version: r.version.to_hex(),
            parent: base.to_hex(),
            put: r.put,
            removed: r.removed,
            copied,
        })
    })();
    if running {
        let _ = api.resume();
    }
    result
}
