//! The lease file: which VM (monitor pid) has which address, TAP and published ports, kept
//! under an exclusive lock (`flock`) for the time of a change. A lease whose monitor is gone
//! is reaped by the next change.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Publish, MAX_VMS, SUBNET};

const FILE: &str = "leases.json";
const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub index: u32,
    pub pid: u32,
    /// The monitor's start time (clock ticks since boot, /proc/PID/stat field 22), so that a
    /// reused pid is not taken for the VM.
    pub started: u64,
    pub tap: String,
    pub address: Ipv4Addr,
    pub published: Vec<Publish>,
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    format: u32,
    leases: Vec<Lease>,
}

pub struct Leases {
    path: PathBuf,
    _lock: File,
    stored: Stored,
}

/// The bridge's address: SUBNET + 1.
pub fn gateway() -> Ipv4Addr {
    Ipv4Addr::from(u32::from(SUBNET) + 1)
}

fn address(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(SUBNET) + 1 + index)
}

/// A process's start time, or None if it is gone.
pub fn started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Leases {
    /// Opens (creating) the state directory and lease file, locked until dropped.
    pub fn lock(dir: &Path) -> Result<Leases, Error> {
        let bad = |path: &Path, e: std::io::Error| Error::State {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| bad(dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| bad(&lock_path, e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| bad(&lock_path, e.into()))?;
        let path = dir.join(FILE);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => {
                let s: Stored = serde_json::from_slice(&bytes).map_err(|e| Error::State {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                if s.format != FORMAT {
                    return Err(Error::State {
                        path,
                        reason: format!("format {} (this Starling knows {FORMAT})", s.format),
                    });
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored {
                format: FORMAT,
                leases: Vec::new(),
            },
            Err(e) => return Err(bad(&path, e)),
        };
        Ok(Leases {
            path,
            _lock: lock,
            stored,
        })
    }

    pub fn all(&self) -> Vec<Lease> {
        self.stored.leases.clone()
    }

    /// Removes and returns the leases whose monitor has ended.
    pub fn reap(&mut self) -> Vec<Lease> {
        let (alive, gone) = std::mem::take(&mut self.stored.leases)
            .into_iter()
            .partition(|l| started(l.pid) == Some(l.started));
        self.stored.leases = alive;
        gone
    }

    /// A new lease for monitor `pid`: the lowest free address, its ports checked against
    /// every other VM's.
    pub fn take(&mut self, pid: u32, publish: &[Publish]) -> Result<Lease, Error> {
        for p in publish {
            if let Some(l) = self.stored.leases.iter().find(|l| {
                l.published
                    .iter()
                    .any(|q| q.host == p.host && q.proto == p.proto)
            }) {
                return Err(Error::PortTaken(*p, l.address, l.pid));
            }
        }
        let mut used: Vec<u32> = self.stored.leases.iter().map(|l| l.index).collect();
        used.sort_unstable();
        let mut index = 1;
        for u in used {
            if u == index {
                index += 1;
            } else if u > index {
                break;
            }
        }
        if index > MAX_VMS {
            return Err(Error::Exhausted);
        }
        let lease = Lease {
            index,
            pid,
            started: started(pid).unwrap_or(0),
            tap: format!("stap{index}"),
            address: address(index),
            published: publish.to_vec(),
        };
        self.stored.leases.push(lease.clone());
        Ok(lease)
    }

    pub fn adopt(&mut self, index: u32, pid: u32) -> Result<(), Error> {
        let lease = self
            .stored
            .leases
            .iter_mut()
            .find(|l| l.index == index)
            .ok_or_else(|| Error::Invalid(format!("no lease {index} to hand over")))?;
        lease.pid = pid;
        lease.started = started(pid).unwrap_or(0);
        Ok(())
    }

    pub fn release(&mut self, index: u32) -> Result<(), Error> {
        self.stored.leases.retain(|l| l.index != index);
        Ok(())
    }

    /// Writes the file (a new file renamed over the old: a crash leaves one or the other).
    pub fn save(&self) -> Result<(), Error> {
        let bad = |e: std::io::Error| Error::State {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.stored).map_err(|e| bad(e.into()))?;
        let mut f = File::create(&tmp).map_err(bad)?;
        f.write_all(&bytes).map_err(bad)?;
        f.sync_all().map_err(bad)?;
        std::fs::rename(&tmp, &self.path).map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_ports_and_reaping() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let mut l = Leases::lock(dir.path()).unwrap();
        let web: Publish = "8080:80".parse().unwrap();
        let a = l.take(me, &[web]).unwrap();
        assert_eq!(
            (a.index, a.address, a.tap.as_str()),
            (1, Ipv4Addr::new(10, 213, 0, 2), "stap1")
        );
        let e = l.take(me, &[web]).unwrap_err().to_string();
        assert!(
            e.contains("port 8080:80/tcp is already published by VM 10.213.0.2"),
            "{e}"
        );
        // A lease of a process that is gone is reaped, and its address used again.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let b = l.take(pid, &[]).unwrap();
        assert_eq!(b.index, 2);
        l.save().unwrap();
        drop(l);
        let mut l = Leases::lock(dir.path()).unwrap();
        let gone = l.reap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].index, 2);
        assert_eq!(l.take(me, &[]).unwrap().index, 2);
        l.release(1).unwrap();
        assert_eq!(l.take(me, &[]).unwrap().index, 1);
        // Every address taken: the next VM is refused, naming the network.
        let full: Vec<Lease> = (1..=MAX_VMS)
            .map(|index| Lease {
                index,
                pid: me,
                started: started(me).unwrap_or(0),
                tap: format!("stap{index}"),
                address: address(index),
                published: Vec::new(),
            })
            .collect();
        l.stored.leases = full;
        let e = l.take(me, &[]).unwrap_err().to_string();
        assert!(
            e.contains("all 65533 addresses of 10.213.0.0/16 are in use"),
            "{e}"
        );
        l.stored.leases.clear();
        std::fs::write(dir.path().join(FILE), b"{\"format\": 9, \"leases\": []}").unwrap();
        drop(l);
        let e = Leases::lock(dir.path()).err().unwrap().to_string();
        assert!(e.contains("format 9"), "{e}");
    }
}
