//! Kernel modules of a distribution kernel: found under `lib/modules/RELEASE`, named as the
//! kernel names them ('-' and '_' alike), with their dependencies read from each module's own
//! `.modinfo` section (`depends=`), so no modules.dep (which Debian does not ship) is needed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::Error;

/// The modules of one kernel release.
pub struct ModuleTree {
    /// Canonical name (underscores) → file.
    files: BTreeMap<String, PathBuf>,
}

pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleTree {
    /// Indexes every `.ko` under `root` (a `lib/modules/RELEASE` directory).
    pub fn scan(root: &Path) -> Result<Self, Error> {
        let mut files = BTreeMap::new();
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
            for e in entries.flatten() {
                let p = e.path();
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(p);
                } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                    if let Some(stem) = name.strip_suffix(".ko") {
                        files.insert(canonical(stem), p.clone());
                    } else if name.contains(".ko.") {
                        let stem = name.split(".ko.").next().unwrap_or(name);
                        files.entry(canonical(stem)).or_insert(p.clone());
                    }
                }
            }
        }
        if files.is_empty() {
            return Err(Error::Invalid(format!(
                "no kernel modules under {}",
                root.display()
            )));
        }
        Ok(ModuleTree { files })
    }

    pub fn path(&self, name: &str) -> Option<&Path> {
        self.files.get(&canonical(name)).map(PathBuf::as_path)
    }

    /// The modules named and everything they depend on, each after its dependencies.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>, Error> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for w in wanted {
            self.visit(&canonical(w), &mut done, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut HashSet<String>,
        path: &mut Vec<String>,
        order: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), Error> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(Error::Module {
                name: name.into(),
                reason: format!("circular dependency: {} -> {name}", path.join(" -> ")),
            });
        }
        let file = self.files.get(name).ok_or_else(|| Error::Module {
            name: name.into(),
            reason: match path.last() {
                Some(by) => format!("needed by {by} but not in this kernel's modules"),
                None => "not in this kernel's modules (built in, or misspelt?)".into(),
            },
        })?;
        path.push(name.into());
        for dep in depends(file)? {
            self.visit(&canonical(&dep), done, path, order)?;
        }
        path.pop();
        done.insert(name.into());
        order.push((name.into(), file.clone()));
        Ok(())
    }
}

/// The `depends=` list of a module's `.modinfo` section.
pub fn depends(file: &Path) -> Result<Vec<String>, Error> {
    let bad = |reason: &str| Error::Module {
        name: file.display().to_string(),
        reason: reason.into(),
    };
    if file.extension().is_some_and(|e| e != "ko") {
        return Err(bad(
            "compressed modules are not supported; unpack them first",
        ));
    }
    let data = std::fs::read(file).map_err(|source| Error::Io {
        path: file.to_owned(),
        source,
    })?;
    let info = modinfo(&data).ok_or_else(|| bad("not an ELF64 module with a .modinfo section"))?;
    Ok(info
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| v.split(|&b| b == b','))
        .filter(|d| !d.is_empty())
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect())
}

/// The bytes of the `.modinfo` section of an ELF64 little-endian object.
fn modinfo(data: &[u8]) -> Option<&[u8]> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    if data.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(h)?,
            usize::try_from(u64_at(h + 0x18)?).ok()?,
            usize::try_from(u64_at(h + 0x20)?).ok()?,
        ))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let strtab = data.get(stroff..stroff.checked_add(strsize)?)?;
    (0..shnum).find_map(|i| {
        let (name, off, size) = section(i)?;
        let rest = strtab.get(name as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        (&rest[..end] == b".modinfo").then(|| data.get(off..off.checked_add(size)?))?
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a relocatable ELF object with a .modinfo section using the system assembler;
    /// None when there is no assembler (an assembler that rejects the source fails the test).
    pub(crate) fn module(dir: &Path, name: &str, deps: &str) -> Option<PathBuf> {
        let src = dir.join(format!("{name}.s"));
        std::fs::write(
            &src,
            format!(
                ".section .modinfo,\"a\"\n.asciz \"license=GPL\"\n.asciz \"depends={deps}\"\n.asciz \"name={name}\"\n"
            ),
        )
        .unwrap();
        let out = dir.join(format!("{name}.ko"));
        let status = std::process::Command::new("as")
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .ok()?;
        assert!(status.success(), "as {}: {status}", src.display());
        Some(out)
    }

    #[test]
    fn dependencies_come_first_and_problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kernel/drivers");
        std::fs::create_dir_all(&root).unwrap();
        let Some(_) = module(&root, "virtio_blk", "virtio,virtio_ring") else {
            starling_testkit::skip("no assembler (as, Debian package binutils)");
            return;
        };
        module(&root, "virtio", "virtio_ring").unwrap();
        module(&root, "virtio_ring", "").unwrap();
        module(
            &root,
            "vmw_vsock_virtio_transport",
            "vmw_vsock_virtio_transport_common,vsock,virtio,virtio_ring",
        )
        .unwrap();
        module(&root, "vmw_vsock_virtio_transport_common", "vsock").unwrap();
        module(&root, "vsock", "").unwrap();
        module(&root, "loop_a", "loop_b").unwrap();
        module(&root, "loop_b", "loop_a").unwrap();
        module(&root, "needs_ghost", "ghost").unwrap();
        let tree = ModuleTree::scan(dir.path()).unwrap();
        let order: Vec<String> = tree
            .load_order(&["virtio-blk", "vmw_vsock_virtio_transport"])
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "virtio_blk",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
        let e = tree.load_order(&["loop_a"]).unwrap_err().to_string();
        assert!(e.contains("circular"), "{e}");
        let e = tree.load_order(&["needs_ghost"]).unwrap_err().to_string();
        assert!(
            e.contains("ghost") && e.contains("needed by needs_ghost"),
            "{e}"
        );
        let e = tree.load_order(&["ext4"]).unwrap_err().to_string();
        assert!(e.contains("built in"), "{e}");
    }
}
