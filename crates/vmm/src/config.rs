//! What a VM is made of, as given on the command line or in a JSON config file, and the checks
//! that run before anything is created.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Where the serial console goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Console {
    Stdio,
    File(PathBuf),
    Off,
    /// Output appended to `log` (kept to its last few MiB) and sent to whoever is attached
    /// to `socket`, whose input goes to the guest; one attached client at a time (a new one
    /// takes over), as `docker attach` does.
    Socket {
        socket: PathBuf,
        log: PathBuf,
    },
}

pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off";
pub const MIN_MEM_MIB: u64 = 16;
pub const MAX_VCPUS: u8 = 32;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub cid: u64,
    /// Host side: connections to this socket reach the guest; the guest's connections to host
    /// port P go to `PATH_P`.
    pub path: PathBuf,
}

/// An image version as a guest file system (virtio-fs, read-only), mounted in the guest by
/// its tag (`mount -t virtiofs TAG /mnt`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    pub tag: String,
    /// Where its objects are: `repo:URL` or `store:PATH` (as the daemon's object socket
    /// names sources).
    pub source: String,
    /// The image version (commit id, 64 hex digits).
    pub version: String,
    /// The daemon's object socket; without one, a `store:PATH` source is read directly.
    #[serde(default)]
    pub objects_socket: Option<PathBuf>,
}

impl FsConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| {
            Err(Error::Invalid(format!(
                "virtio-fs {:?}: {reason}",
                self.tag
            )))
        };
        if self.tag.is_empty()
            || self.tag.len() > crate::virtio::fs::TAG_LEN
            || !self.tag.bytes().all(|b| b.is_ascii_graphic())
        {
            return bad(format!(
                "a tag is 1 to {} printable ASCII characters",
                crate::virtio::fs::TAG_LEN
            ));
        }
        if self.source.is_empty() || self.source.len() > starling_store::wire::MAX_SOURCE {
            return bad("the source is empty or too long".into());
        }
        if self.version.len() != 64 || !self.version.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("version {:?} is not 64 hex digits", self.version));
        }
        Ok(())
    }
}

/// A bucket of `size` tokens refilled over `refill_ms` (so `size` per `refill_ms` on average,
/// with bursts up to `size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub size: u64,
    pub refill_ms: u64,
}

/// One direction's limits: bytes, frames, or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    #[serde(default)]
    pub bandwidth: Option<Bucket>,
    #[serde(default)]
    pub ops: Option<Bucket>,
}

impl Limit {
    /// A limit of `bytes_per_sec` bytes a second, with bursts of a second's worth.
    pub fn bytes_per_sec(bytes_per_sec: u64) -> Limit {
        Limit {
            bandwidth: Some(Bucket {
                size: bytes_per_sec,
                refill_ms: 1000,
            }),
            ops: None,
        }
    }

    pub fn validate(&self, what: &str) -> Result<(), String> {
        for (name, b) in [("bandwidth", self.bandwidth), ("ops", self.ops)] {
            if let Some(b) = b {
                if b.size == 0 || b.refill_ms == 0 || b.refill_ms > 3_600_000 {
                    return Err(format!(
                        "{what} {name} limit: size must be above 0 and refill_ms between 1 \
                         and 3600000 (got {} per {} ms)",
                        b.size, b.refill_ms
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A network device (virtio-net) over a TAP on the host.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The TAP interface (opened, or created if this process may and it does not exist).
    pub tap: String,
    /// The guest's MAC address [default: a random locally administered one].
    #[serde(default)]
    pub mac: Option<Mac>,
    /// Limits on what the guest receives.
    #[serde(default)]
    pub rx: Option<Limit>,
    /// Limits on what the guest sends.
    #[serde(default)]
    pub tx: Option<Limit>,
    /// The TAP was made for this VM (`--net nat`): the monitor makes it non-persistent once
    /// it holds it, so that it goes away with the monitor.
    #[serde(default)]
    pub owned: bool,
    /// The guest's address on this device, as the kernel's `ip=` value
    /// (`ADDR::GW:MASK:HOST:DEV:off:DNS`): given on the command line by whoever made the
    /// network, and told to the guest's agent by `whoami` (a clone or a restore learns its new
    /// one there).
    #[serde(default)]
    pub ip: Option<String>,
}

impl NetConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| Err(Error::Invalid(format!("network device: {reason}")));
        if let Err(e) = crate::virtio::net::tap::check_name(&self.tap) {
            return bad(e);
        }
        if let Some(m) = &self.mac {
            if m.0[0] & 1 != 0 {
                return bad(format!("MAC {m} is a multicast address"));
            }
        }
        for (what, l) in [("rx", &self.rx), ("tx", &self.tx)] {
            if let Some(l) = l {
                if let Err(e) = l.validate(what) {
                    return bad(e);
                }
            }
        }
        if let Some(ip) = &self.ip {
            if let Err(e) = check_ip_param(ip) {
                return bad(e);
            }
        }
        Ok(())
    }
}

/// Longest `ip=` value taken (the kernel's own limit on its command line is 2048 bytes).
const MAX_IP_PARAM: usize = 256;

/// The address in an `ip=` value (`ADDR::GW:MASK:…`).
pub fn ip_param_address(ip: &str) -> &str {
    ip.split(':').next().unwrap_or(ip)
}

/// An address handed to the guest must be one word the agent can split out of `whoami`.
pub fn check_ip_param(ip: &str) -> Result<(), String> {
    if ip.is_empty() || ip.len() > MAX_IP_PARAM || !ip.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "address {ip:?}: one word of at most {MAX_IP_PARAM} printable characters (the kernel's ip= form)"
        ));
    }
    Ok(())
}

/// An Ethernet address, written `02:00:00:00:00:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random locally administered unicast address.
    pub fn random() -> Mac {
        let mut b = [0u8; 6];
        crate::service::getrandom(&mut b);
        b[0] = (b[0] & 0xfe) | 0x02;
        Mac(b)
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let mut b = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut b {
            let p = parts.next().unwrap_or("");
            if p.len() != 2 {
                return Err(format!(
                    "MAC {s:?}: expected six hex bytes like 02:00:00:00:00:01"
                ));
            }
            *byte = u8::from_str_radix(p, 16)
                .map_err(|_| format!("MAC {s:?}: expected six hex bytes like 02:00:00:00:00:01"))?;
        }
        if parts.next().is_some() {
            return Err(format!(
                "MAC {s:?}: expected six hex bytes like 02:00:00:00:00:01"
            ));
        }
        Ok(Mac(b))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_mem")]
    pub mem_mib: u64,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Image versions served as file systems (the first one is usually the root).
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// Network devices, in order (eth0, eth1, … in the guest).
    #[serde(default)]
    pub net: Vec<NetConfig>,
    #[serde(default = "default_true")]
    pub rng: bool,
    #[serde(default = "default_console")]
    pub console: Console,
    /// The VMM API socket.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// Back guest memory with transparent huge pages where the host allows (madvise): a memfd
    /// where the host gives memfds huge pages, else aligned anonymous memory (whose first fork
    /// copies its data). `false` keeps a memfd of 4 KiB pages on such hosts.
    #[serde(default = "default_true")]
    pub hugepages: bool,
    /// The guest's hostname as the monitor's service tells it (clones get `NAME-K`).
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// How many clones the guest and every generation of its clones may fork in all
    /// (`fork N` on the vsock service; `budget.rs`).
    #[serde(default = "default_fork_budget")]
    pub fork_budget: u32,
    /// Where the VM keeps disk overlays and its clones' directories (default: a directory
    /// per monitor process, private, in the user's runtime directory: see
    /// `builder::default_run_dir_of`).
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
}

fn default_fork_budget() -> u32 {
    crate::budget::DEFAULT
}

fn default_hostname() -> String {
    "starling".into()
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.into()
}
fn default_mem() -> u64 {
    256
}
fn default_vcpus() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
fn default_console() -> Console {
    Console::Stdio
}

impl VmConfig {
    pub fn new(kernel: PathBuf) -> Self {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: default_cmdline(),
            mem_mib: default_mem(),
            vcpus: 1,
            disks: Vec::new(),
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
            rng: true,
            console: Console::Stdio,
            api_socket: None,
            hugepages: true,
            hostname: default_hostname(),
            fork_budget: default_fork_budget(),
            run_dir: None,
        }
    }

    /// Reads a JSON config file; relative paths in it are taken from the file's directory.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let bad = |reason: String| Error::Config {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut c: VmConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut c.kernel);
        if let Some(i) = c.initrd.as_mut() {
            fix(i);
        }
        for d in &mut c.disks {
            fix(&mut d.path);
        }
        Ok(c)
    }

    /// Checks what can be checked without building the VM.
    pub fn validate(&self) -> Result<(), Error> {
        if self.mem_mib < MIN_MEM_MIB {
            return Err(Error::Invalid(format!(
                "memory {} MiB is too little: at least {MIN_MEM_MIB} MiB",
                self.mem_mib
            )));
        }
        if self.mem_mib > 1 << 20 {
            return Err(Error::Invalid(format!(
                "memory {} MiB is more than 1 TiB",
                self.mem_mib
            )));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(Error::Invalid(format!(
                "{} vCPUs: between 1 and {MAX_VCPUS}",
                self.vcpus
            )));
        }
        for d in &self.disks {
            if !d.path.is_file() {
                return Err(Error::Disk {
                    path: d.path.clone(),
                    reason: if d.path.exists() {
                        "not a regular file".into()
                    } else {
                        "no such file".into()
                    },
                });
            }
        }
        check_hostname(&self.hostname)?;
        for n in &self.net {
            n.validate()?;
        }
        let devices = self.disks.len() + self.net.len() + self.fs.len() + 2;
        if devices > crate::layout::VIRTIO_IRQS.len() {
            return Err(Error::Invalid(format!(
                "{} disks, {} network devices and {} file systems are too many devices \
                 (at most {} in all)",
                self.disks.len(),
                self.net.len(),
                self.fs.len(),
                crate::layout::VIRTIO_IRQS.len() - 2
            )));
        }
        Ok(())
    }
}

/// A hostname the service may hand out: 1 to 63 letters, digits and hyphens.
pub fn check_hostname(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::Invalid(format!(
            "hostname {name:?}: 1 to 63 letters, digits and hyphens"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vm.json");
        std::fs::write(
            &f,
            r#"{"kernel": "k", "disks": [{"path": "d.img", "read_only": true}]}"#,
        )
        .unwrap();
        let c = VmConfig::from_file(&f).unwrap();
        assert_eq!(c.kernel, dir.path().join("k"));
        assert_eq!(c.disks[0].path, dir.path().join("d.img"));
        assert_eq!((c.mem_mib, c.vcpus, c.rng), (256, 1, true));
        std::fs::write(&f, r#"{"kernel": "k", "memory": 5}"#).unwrap();
        let e = VmConfig::from_file(&f).unwrap_err().to_string();
        assert!(e.contains("unknown field `memory`"), "{e}");
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = VmConfig::new("k".into());
        c.mem_mib = 8;
        assert!(c.validate().unwrap_err().to_string().contains("too little"));
        c.mem_mib = 64;
        c.vcpus = 0;
        assert!(c.validate().unwrap_err().to_string().contains("vCPUs"));
        c.vcpus = 2;
        c.disks.push(DiskConfig {
            path: "/nonexistent/disk".into(),
            read_only: false,
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/disk") && e.contains("no such file"),
            "{e}"
        );
    }
}
