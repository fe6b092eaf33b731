//! Debian binary packages (.deb): an `ar` archive of `debian-binary` (format 2.0), a control
//! tarball (the control file, conffiles, md5sums, maintainer scripts) and a data tarball,
//! each tarball plain, gzip, xz or zstd compressed.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::import::{decompress, Compression};
use crate::pkg::control::{self, Paragraph};

/// Members larger than this are refused (the data member is streamed, not held).
const MAX_CONTROL: u64 = 64 << 20;

/// What the control member may inflate to, tar headers included (its files are held in
/// memory; dpkg's own are a few KiB).
const MAX_CONTROL_TAR: u64 = 16 << 20;

pub const SCRIPTS: [&str; 5] = ["preinst", "postinst", "prerm", "postrm", "config"];

pub struct Deb {
    pub path: PathBuf,
    pub control: Paragraph,
    /// Files of the control tarball other than `control`, by name (conffiles, md5sums,
    /// scripts, triggers, shlibs, …).
    pub control_files: Vec<(String, Vec<u8>, u32)>,
    /// Where the data member's bytes are in the .deb, and how they are compressed.
    data_offset: u64,
    data_len: u64,
    data_compression: Compression,
}

impl Deb {
    pub fn name(&self) -> &str {
        self.control.get("Package").unwrap_or("")
    }
    pub fn version(&self) -> &str {
        self.control.get("Version").unwrap_or("")
    }
    pub fn architecture(&self) -> &str {
        self.control.get("Architecture").unwrap_or("")
    }
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.control_files
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, b, _)| b.as_slice())
    }
    pub fn conffiles(&self) -> Vec<String> {
        self.file("conffiles")
            .map(|b| {
                String::from_utf8_lossy(b)
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with('/'))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn scripts(&self) -> Vec<&'static str> {
        SCRIPTS
            .iter()
            .copied()
            .filter(|s| self.file(s).is_some())
            .collect()
    }

    /// A reader of the uncompressed data tarball.
    pub fn data(&self) -> Result<Box<dyn Read>> {
        let f = std::fs::File::open(&self.path).map_err(|e| self.bad(e.to_string()))?;
        let mut f = std::io::BufReader::with_capacity(1 << 20, f);
        std::io::copy(&mut (&mut f).take(self.data_offset), &mut std::io::sink())
            .map_err(|e| self.bad(e.to_string()))?;
        decompress(Box::new(f.take(self.data_len)), self.data_compression)
            .map_err(|e| self.bad(e.to_string()))
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadDeb {
            path: self.path.clone(),
            reason,
        }
    }

    pub fn open(path: &Path) -> Result<Deb> {
        let bad = |reason: String| Error::BadDeb {
            path: path.to_path_buf(),
            reason,
        };
        let bytes_head = {
            let mut f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
            let mut h = [0u8; 8];
            f.read_exact(&mut h)
                .map_err(|_| bad("not a .deb (too short for an ar archive)".into()))?;
            h
        };
        if &bytes_head != b"!<arch>\n" {
            return Err(bad("not a .deb (no ar archive signature)".into()));
        }
        let file_len = std::fs::metadata(path)
            .map_err(|e| bad(e.to_string()))?
            .len();
        let mut f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let mut pos = 8u64;
        let mut members = Vec::new();
        while pos + 60 <= file_len && members.len() < 16 {
            let mut h = [0u8; 60];
            read_at(&mut f, &mut h, pos).map_err(|e| bad(e.to_string()))?;
            if &h[58..60] != b"`\n" {
                return Err(bad(format!("ar member header at byte {pos} is corrupt")));
            }
            let name = String::from_utf8_lossy(&h[..16])
                .trim_end()
                .trim_end_matches('/')
                .to_string();
            let size: u64 = String::from_utf8_lossy(&h[48..58])
                .trim()
                .parse()
                .map_err(|_| bad(format!("ar member {name:?} has a bad size")))?;
            let start = pos + 60;
            if start + size > file_len {
                return Err(bad(format!(
                    "ar member {name:?} runs past the end (truncated?)"
                )));
            }
            members.push((name, start, size));
            pos = start + size + (size & 1);
        }
        let member = |prefix: &str| {
            members
                .iter()
                .find(|(n, _, _)| n.starts_with(prefix))
                .cloned()
        };
        let (_, bs, bl) =
            member("debian-binary").ok_or_else(|| bad("no debian-binary member".into()))?;
        let mut ver = vec![0u8; bl.min(16) as usize];
        read_at(&mut f, &mut ver, bs).map_err(|e| bad(e.to_string()))?;
        if !String::from_utf8_lossy(&ver).starts_with("2.") {
            return Err(bad(format!(
                "package format {:?} (2.x expected)",
                String::from_utf8_lossy(&ver).trim()
            )));
        }
        let (cname, cs, cl) =
            member("control.tar").ok_or_else(|| bad("no control.tar member".into()))?;
        if cl > MAX_CONTROL {
            return Err(bad("control member is too large".into()));
        }
        let mut cbytes = vec![0u8; cl as usize];
        read_at(&mut f, &mut cbytes, cs).map_err(|e| bad(e.to_string()))?;
        let mut control = None;
        let mut control_files = Vec::new();
        let reader = decompress(
            Box::new(std::io::Cursor::new(cbytes)),
            compression_of(&cname).map_err(&bad)?,
        )
        .map_err(|e| bad(e.to_string()))?;
        let mut ar = crate::tar_bound::archive(Capped {
            inner: reader,
            left: MAX_CONTROL_TAR,
            over: false,
        });
        for e in ar
            .entries()
            .map_err(|e| bad(format!("control member: {e}")))?
        {
            let mut e = e.map_err(|e| bad(format!("control member: {e}")))?;
            if e.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = String::from_utf8_lossy(&e.path_bytes())
                .trim_start_matches("./")
                .to_string();
            let mode = e.header().mode().unwrap_or(0o644);
            let mut b = Vec::new();
            e.read_to_end(&mut b)
                .map_err(|e| bad(format!("control member: {e}")))?;
            if name == "control" {
                let text =
                    String::from_utf8(b).map_err(|_| bad("control file is not UTF-8".into()))?;
                let mut ps =
                    control::parse(&text).map_err(|e| bad(format!("control file: {e}")))?;
                if ps.len() != 1 {
                    return Err(bad(format!("control file has {} paragraphs", ps.len())));
                }
                control = ps.pop();
            } else {
                control_files.push((name, b, mode));
            }
        }
        let control = control.ok_or_else(|| bad("control member has no control file".into()))?;
        for field in ["Package", "Version", "Architecture"] {
            if control.get(field).is_none_or(str::is_empty) {
                return Err(bad(format!("control file has no {field}")));
            }
        }
        crate::pkg::version::parse_deb(control.get("Version").unwrap_or("")).map_err(bad)?;
        let (dname, ds, dl) = member("data.tar").ok_or_else(|| bad("no data.tar member".into()))?;
        Ok(Deb {
            path: path.to_path_buf(),
            control,
            control_files,
            data_offset: ds,
            data_len: dl,
            data_compression: compression_of(&dname).map_err(bad)?,
        })
    }
}

/// A reader of at most `left` more bytes, failing (not ending) past them, and after.
struct Capped<R> {
    inner: R,
    left: u64,
    over: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.over {
            // One byte more than is left tells a stream ending at the cap from a longer one.
            let max = usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX);
            let max = buf.len().min(max);
            let n = self.inner.read(&mut buf[..max])?;
            if n as u64 <= self.left {
                self.left -= n as u64;
                return Ok(n);
            }
            self.over = true;
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the control tarball inflates to more than {MAX_CONTROL_TAR} bytes"),
        ))
    }
}

fn read_at(f: &mut std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(buf, at)
}

fn compression_of(member: &str) -> Result<Compression, String> {
    Ok(
        match member.rsplit_once(".tar").map(|(_, ext)| ext).unwrap_or("") {
            "" => Compression::None,
            ".gz" => Compression::Gzip,
            ".xz" => Compression::Xz,
            ".zst" => Compression::Zstd,
            other => {
                return Err(format!(
                    "member {member:?}: compression {other:?} is not supported"
                ))
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A gzip-compressed tarball of `files` (name, content).
    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(enc);
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    /// A .deb (an `ar` archive) of `members`, written in `dir`.
    fn deb(dir: &Path, members: &[(&str, &[u8])]) -> PathBuf {
        let mut out = b"!<arch>\n".to_vec();
        for (name, data) in members {
            writeln!(
                out,
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`",
                name,
                0,
                0,
                0,
                "100644",
                data.len()
            )
            .unwrap();
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        let path = dir.join("p.deb");
        std::fs::write(&path, out).unwrap();
        path
    }

    const CONTROL: &[u8] = b"Package: p\nVersion: 1.0-1\nArchitecture: amd64\n";

    #[test]
    fn a_small_deb_opens() {
        let dir = tempfile::tempdir().unwrap();
        let control = tar_gz(&[("./control", CONTROL), ("./postinst", b"#!/bin/sh\n")]);
        let data = tar_gz(&[("./usr/share/p/x", b"x")]);
        let path = deb(
            dir.path(),
            &[
                ("debian-binary", b"2.0\n"),
                ("control.tar.gz", &control),
                ("data.tar.gz", &data),
            ],
        );
        let d = Deb::open(&path).unwrap();
        assert_eq!(
            (d.name(), d.version(), d.architecture()),
            ("p", "1.0-1", "amd64")
        );
        assert_eq!(d.scripts(), ["postinst"]);
    }

    #[test]
    fn a_control_member_inflating_past_its_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![0u8; MAX_CONTROL_TAR as usize + 1];
        let control = tar_gz(&[("./control", CONTROL), ("./md5sums", &big)]);
        assert!((control.len() as u64) < MAX_CONTROL);
        let data = tar_gz(&[("./x", b"x")]);
        let path = deb(
            dir.path(),
            &[
                ("debian-binary", b"2.0\n"),
                ("control.tar.gz", &control),
                ("data.tar.gz", &data),
            ],
        );
        let err = Deb::open(&path).err().unwrap();
        assert!(matches!(err, Error::BadDeb { .. }), "{err}");
        assert!(
            err.to_string().ends_with(
                "p.deb: not a usable .deb: control member: \
                 the control tarball inflates to more than 16777216 bytes"
            ),
            "{err}"
        );
    }
}
