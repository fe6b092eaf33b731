//! TAP devices: opened by name with the virtio-net header in front of each frame
//! (IFF_VNET_HDR), so that checksum and segmentation offloads pass between the guest and the
//! host kernel untouched; `set_offload` tells the TAP which ones the guest's driver takes.

use std::fs::{File, OpenOptions};
use std::io::{Error, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)` and friends from linux/if_tun.h.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// A Linux interface name: 1 to 15 bytes, no '/', no whitespace, not "." or "..".
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || !b.is_ascii_graphic())
    {
        return Err(format!(
            "TAP name {name:?}: an interface name is 1 to {} printable characters without '/', ':' or spaces",
            libc::IFNAMSIZ - 1
        ));
    }
    Ok(())
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (or, with CAP_NET_ADMIN and no such interface, creates) TAP `name` for frames with
/// a 12-byte virtio-net header, non-blocking. The error says what to do about it.
pub fn open(name: &str) -> Result<File, String> {
    check_name(name)?;
    if let Some(f) = crate::jail::handed::take(&format!("tap:{name}")) {
        return Ok(f);
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => "no /dev/net/tun on this host (load the tun module)".into(),
            ErrorKind::PermissionDenied => {
                "/dev/net/tun: permission denied (run as root or with CAP_NET_ADMIN)".into()
            }
            _ => format!("/dev/net/tun: {e}"),
        })?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and writes back the name into) an ifreq, which `req` is laid
    // out as and outlives the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if r < 0 {
        let e = Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) => format!("TAP {name} is in use by another process"),
            Some(libc::EPERM) => format!(
                "TAP {name}: permission denied (create it for this user first: \
                 ip tuntap add {name} mode tap user $USER, or run with CAP_NET_ADMIN)"
            ),
            Some(libc::EINVAL) => {
                format!("{name} is not a TAP device (a TUN, or another kind of interface)")
            }
            _ => format!("TAP {name}: {e}"),
        });
    }
    let size: libc::c_int = super::HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which is valid for the call.
    if unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            TUNSETVNETHDRSZ,
            &size as *const libc::c_int,
        )
    } < 0
    {
        return Err(format!(
            "TAP {name}: setting the virtio-net header size: {}",
            Error::last_os_error()
        ));
    }
    set_offload(&file, 0).map_err(|e| format!("TAP {name}: {e}"))?;
    Ok(file)
}

/// Makes TAP `name` (for a VM to open later), persistent until [`set_persist`] says
/// otherwise; a TAP that exists already is refused ("exists": it belongs to someone else).
pub fn create_persistent(name: &str) -> Result<(), String> {
    check_name(name)?;
    if std::path::Path::new("/sys/class/net").join(name).exists() {
        return Err(format!("interface {name} exists already"));
    }
    let file = open(name)?;
    set_persist(&file, true).map_err(|e| format!("TAP {name}: making it persistent: {e}"))
}

/// Whether the TAP outlives the last descriptor open on it. A monitor that takes over a TAP
/// made for its VM turns this off, so that the TAP goes when the monitor does, however it
/// ends.
pub fn set_persist(file: &File, on: bool) -> std::io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value; no memory is passed.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(on)) } < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// Which offloads the TAP may hand frames over with (TUN_F_* bits): those the guest's driver
/// accepted. Frames for a guest without them arrive checksummed and segmented.
pub fn set_offload(file: &File, flags: u32) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags)) } < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_the_kernel_sees_them() {
        for bad in ["", "a/b", "has space", "sixteen-bytes-xx", "..", "a:b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("tap0").is_ok());
        assert!(check_name("fifteen-bytes-x").is_ok());
        let e = open("x/y").unwrap_err();
        assert!(e.contains("\"x/y\""), "{e}");
    }
}
