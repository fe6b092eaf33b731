//! Who a jailed monitor runs as: a user of its own, with no capabilities left to regain.
//!
//! Root starting a monitor gives it a user id nobody else has (`FIRST_UID` + its process id,
//! unique among live processes), so two VMs cannot signal, trace or read each other, as
//! Firecracker's jailer is run with a uid per microVM; an operator may name one instead.

use super::Error;

/// The first of the user ids given to jailed monitors: far above any account or container
/// range in common use (those end below 2^31).
pub const FIRST_UID: u32 = 0x8000_0000;

/// The user id a monitor with process id `pid` is given when none is named.
pub fn default_uid(pid: u32) -> u32 {
    FIRST_UID + pid
}

/// Gives up root for good: every capability out of the bounding, ambient, inheritable,
/// permitted and effective sets, no supplementary groups, `uid`/`gid` as real, effective and
/// saved ids, and `no_new_privs`. Checked afterwards from `/proc/self/status`.
pub fn drop_to(uid: u32, gid: u32) -> Result<(), Error> {
    let last = last_cap();
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments; only this process's bounding set changes.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(Error::setup(format!("dropping capability {cap}"), e));
            }
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    // glibc applies each of these to every thread of the process.
    // SAFETY: a null list of length 0 is valid.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(Error::setup(
            "dropping supplementary groups",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(Error::setup(
            format!("becoming group {gid}"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: integer arguments only. Without PR_SET_KEEPCAPS, leaving uid 0 clears the
    // permitted and effective capability sets.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(Error::setup(
            format!("becoming user {uid}"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::setup(
            "setting no_new_privs",
            std::io::Error::last_os_error(),
        ));
    }
    // Leaving root made the process non-dumpable, which gives its /proc files to root: the
    // monitor reads its own /proc/self/pagemap (a fork copies only the pages present). It is
    // made dumpable again (only its own user, the VM's alone, may look, and the filter allows
    // no ptrace) but writes no core file, which would hold guest memory.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: no_core is a valid rlimit that outlives the call.
    let limited = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } == 0;
    // SAFETY: prctl with integer arguments.
    if !limited || unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) } != 0 {
        return Err(Error::setup(
            "making the process readable to itself",
            std::io::Error::last_os_error(),
        ));
    }
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::setup("reading /proc/self/status", e))?;
    let left = capabilities_left(&status);
    if !left.is_empty() {
        return Err(Error::Refused {
            reason: format!("capabilities remain after the privilege drop: {left}"),
        });
    }
    Ok(())
}

/// The highest capability number this kernel knows.
fn last_cap() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// The capability sets in a `/proc/PID/status` that are not empty, as `CapEff=…` pairs.
pub fn capabilities_left(status: &str) -> String {
    status
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim();
            (k.starts_with("Cap") && u64::from_str_radix(v, 16).is_ok_and(|n| n != 0))
                .then(|| format!("{k}={v}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets_left_are_named() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
                      CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
        assert_eq!(capabilities_left(status), "CapBnd=000001ffffffffff");
        assert_eq!(capabilities_left("CapEff:\t0000000000000000\n"), "");
        assert_eq!(default_uid(42), 0x8000_002a);
    }
}
