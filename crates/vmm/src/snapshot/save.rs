//! Saving a running VM: its state captured with the vCPUs parked and the devices held still,
//! then written as a snapshot directory, or frozen for a fork's clones.

use std::path::{Path, PathBuf};

use super::{kvm, write_state, VmInfo, VmState, MEMORY_FILE, MEMORY_MAP_FILE, STATE_FILE};
use crate::bus::lock;
use crate::machine::Machine;
use crate::memory::GuestRam;
use crate::persist::{Persist, SaveContext};
use crate::virtio::state::{DeviceState, VirtioState};
use crate::Error;

/// What making a snapshot's or a fork's directory is called in an error; in a jail, where
/// the jail lets the monitor write.
fn creating(dir: &Path) -> String {
    if crate::jail::jailed() {
        format!(
            "creating {} (a jailed monitor writes only in its run directory and the \
             directories STARLING_JAIL_SHOW names)",
            dir.display()
        )
    } else {
        format!("creating {}", dir.display())
    }
}

fn io_at(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Captures everything but RAM. The vCPUs must be parked; every virtio transport is held
/// (its lock taken) from the devices' save until `with_ram` returns, so that no device
/// thread writes guest memory in between and RAM and device state agree. Devices freeze
/// their files into `freeze_dir` when given (the VM goes on) and link what the state needs
/// into `snapshot_dir` when given.
pub fn capture<T>(
    m: &mut Machine,
    info: &VmInfo,
    clone_id: u32,
    freeze_dir: Option<&Path>,
    snapshot_dir: Option<&Path>,
    with_ram: impl FnOnce(&mut GuestRam) -> Result<T, Error>,
) -> Result<(VmState, T), Error> {
    let slots = &m.devices.virtio;
    let mut held: Vec<_> = slots.iter().map(|s| lock(&s.transport)).collect();
    let mut devices = Vec::new();
    for (slot, t) in slots.iter().zip(held.iter_mut()) {
        let ctx = SaveContext {
            id: &slot.id,
            freeze_dir,
            snapshot_dir,
        };
        devices.push(VirtioState {
            transport: t.save(&ctx)?,
            device: DeviceState::save(t.device_mut(), &ctx)?,
        });
    }
    let serial = match &m.devices.serial {
        Some(s) => lock(s).save(&SaveContext::default())?,
        None => return Err(Error::Invalid("the VM has no serial port".into())),
    };
    let mut vcpus = Vec::new();
    let mut msr_list = None;
    for fd in &m.vcpus {
        let fd = lock(fd);
        if msr_list.is_none() {
            msr_list = Some(kvm::msr_indices(&m.kvm, &fd)?);
        }
        vcpus.push(kvm::capture_vcpu(&fd, msr_list.as_deref().unwrap_or(&[]))?);
    }
    let kvm_state = kvm::capture_vm(&m.vm)?;
    let out = with_ram(&mut m.ram)?;
    drop(held);
    Ok((
        VmState {
            info: info.clone(),
            clone_id,
            memory_map: None,
            vcpus,
            kvm: kvm_state,
            serial,
            devices,
        },
        out,
    ))
}

/// What a snapshot wrote.
pub struct Written {
    pub memory_bytes: u64,
    pub state_bytes: u64,
}

/// Writes a snapshot into `dir` (which must not exist or be empty): `memory`, `memory.map`,
/// the disk layers, and `state` last (a directory with a state file is a whole snapshot).
/// Unless the VM stops after it, writable disks continue on new overlays in `freeze_dir`.
/// Nothing half-written stays behind on failure.
pub fn snapshot(
    m: &mut Machine,
    info: &VmInfo,
    clone_id: u32,
    dir: &Path,
    freeze_dir: Option<&Path>,
) -> Result<Written, Error> {
    if non_empty(dir) {
        return Err(Error::Snapshot {
            path: dir.to_owned(),
            reason: "the directory is not empty (a snapshot is never written over)".into(),
        });
    }
    crate::private::create_dir_all(dir).map_err(io_at(creating(dir)))?;
    let r = write(m, info, clone_id, dir, freeze_dir);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    r
}

fn write(
    m: &mut Machine,
    info: &VmInfo,
    clone_id: u32,
    dir: &Path,
    freeze_dir: Option<&Path>,
) -> Result<Written, Error> {
    let mem_path = dir.join(MEMORY_FILE);
    let (mut state, (memory_bytes, map)) =
        capture(m, info, clone_id, freeze_dir, Some(dir), |ram| {
            ram.write_to(&mem_path)
                .map_err(io_at(format!("writing {}", mem_path.display())))
        })?;
    let map_path = dir.join(MEMORY_MAP_FILE);
    {
        use std::io::Write;
        let mut f = crate::private::create_file(&map_path)
            .map_err(io_at(format!("writing {}", map_path.display())))?;
        f.write_all(&map)
            .and_then(|()| f.sync_all())
            .map_err(io_at(format!("writing {}", map_path.display())))?;
    }
    state.memory_map = Some(*blake3::hash(&map).as_bytes());
    let state_path = dir.join(STATE_FILE);
    write_state(&state_path, &state)?;
    let state_bytes = std::fs::metadata(&state_path).map_or(0, |m| m.len());
    Ok(Written {
        memory_bytes,
        state_bytes,
    })
}

/// Freezes RAM and disks (disks continuing on new overlays in `freeze_dir`) and writes the
/// state for a fork's clones into `dir` (which must not exist or be empty); returns the
/// frozen memory the clones map.
pub fn freeze_for_fork(
    m: &mut Machine,
    info: &VmInfo,
    clone_id: u32,
    dir: &Path,
    freeze_dir: &Path,
) -> Result<std::fs::File, Error> {
    if non_empty(dir) {
        return Err(Error::Invalid(format!(
            "fork directory {} is not empty (clones never share one)",
            dir.display()
        )));
    }
    crate::private::create_dir_all(dir).map_err(io_at(creating(dir)))?;
    let (state, memfd) = capture(m, info, clone_id, Some(freeze_dir), None, |ram| {
        ram.freeze().map_err(io_at("freezing guest memory".into()))
    })?;
    write_state(&dir.join(STATE_FILE), &state)?;
    Ok(memfd)
}

/// A directory that exists and holds something: never written into by a snapshot or a fork.
fn non_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Where a fork's or a running snapshot's disks continue: the `n`-th such directory of the VM
/// (so that removing a fork's directory never takes a layer from under the parent).
pub fn overlays_dir(run_dir: &Path, kind: &str, n: u32) -> PathBuf {
    run_dir.join(format!("{kind}-{n}"))
}
