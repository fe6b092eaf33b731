//! A jailed monitor's share of the host: a cgroup v2 of its own under
//! `/sys/fs/cgroup/starling/`, with `memory.max` and `pids.max` when the operator sets them.
//! Its clones are processes it starts, so they are born in the same cgroup: a VM's whole
//! family of clones, of every generation, lives within one limit.
//!
//! A monitor cannot remove its cgroup once jailed; each jailed start removes the empty ones
//! monitors that have ended left behind (a cgroup with a process in it cannot be removed).

use std::path::{Path, PathBuf};

use super::Error;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// What the cgroup limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max`, bytes.
    pub memory_max: Option<u64>,
    /// `pids.max`: processes and threads.
    pub pids_max: Option<u64>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.memory_max.is_some() || self.pids_max.is_some()
    }
}

/// Whether `root` is a cgroup v2 hierarchy.
fn is_cgroup2(root: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: c is a valid C string and st is written by the call before it is read.
    if unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs returned 0, so it filled st.
    #[allow(clippy::unnecessary_cast)]
    let magic = unsafe { st.assume_init() }.f_type as i64;
    magic == CGROUP2_SUPER_MAGIC
}

/// Moves this process into `starling/vm-PID` with `limits`, and returns that cgroup's path.
pub fn join(limits: Limits) -> Result<PathBuf, Error> {
    join_under(Path::new(CGROUP_ROOT), limits)
}

fn join_under(root: &Path, limits: Limits) -> Result<PathBuf, Error> {
    if !is_cgroup2(root) {
        return Err(Error::Refused {
            reason: format!(
                "memory and process limits need cgroup v2 mounted at {} (this host has not: \
                 boot with systemd.unified_cgroup_hierarchy=1, or leave the limits unset)",
                root.display()
            ),
        });
    }
    let parent = root.join("starling");
    match std::fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::setup(format!("making {}", parent.display()), e)),
    }
    let mut wanted = Vec::new();
    if limits.memory_max.is_some() {
        wanted.push("+memory");
    }
    if limits.pids_max.is_some() {
        wanted.push("+pids");
    }
    for dir in [root, parent.as_path()] {
        write(&dir.join("cgroup.subtree_control"), &wanted.join(" "))?;
    }
    remove_ended(&parent);
    let me = parent.join(format!("vm-{}", std::process::id()));
    std::fs::create_dir(&me).map_err(|e| Error::setup(format!("making {}", me.display()), e))?;
    if let Some(m) = limits.memory_max {
        write(&me.join("memory.max"), &m.to_string())?;
        // Guest memory the limit pushes out must not go to swap instead.
        let _ = write(&me.join("memory.swap.max"), "0");
    }
    if let Some(p) = limits.pids_max {
        write(&me.join("pids.max"), &p.to_string())?;
    }
    write(&me.join("cgroup.procs"), "0")?;
    Ok(me)
}

/// Removes the cgroups of monitors that have ended (empty ones: the kernel refuses the rest).
fn remove_ended(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Only those whose monitor is gone: one starting now has made its cgroup but not
        // yet joined it.
        let gone = name
            .strip_prefix("vm-")
            .is_some_and(|pid| !Path::new("/proc").join(pid).exists());
        if gone {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value)
        .map_err(|e| Error::setup(format!("writing {value:?} to {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_without_cgroup_v2_are_refused_with_the_way_out() {
        let t = tempfile::tempdir().unwrap();
        let e = join_under(
            t.path(),
            Limits {
                memory_max: Some(1 << 30),
                pids_max: None,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("need cgroup v2 mounted at"), "{e}");
        assert!(e.contains("leave the limits unset"), "{e}");
        assert!(!t.path().join("starling").exists());
    }
}
