//! Package inventories read from an image's package database, without booting or exporting:
//! dpkg (`/var/lib/dpkg/status`), apk (`/lib/apk/db/installed`) and rpm
//! (`/var/lib/rpm/rpmdb.sqlite`, or `/usr/lib/sysimage/rpm/rpmdb.sqlite`). Also the OS release.

pub mod control;
pub mod rpm;
pub mod version;

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Serialize;
use starling_store::ObjectId;

use crate::browse::Browser;
use crate::error::{Error, Result};
use crate::manifest::Node;

pub const DPKG_STATUS: &str = "/var/lib/dpkg/status";
pub const APK_INSTALLED: &str = "/lib/apk/db/installed";
pub const RPM_SQLITE: &str = "/var/lib/rpm/rpmdb.sqlite";
/// Where Fedora ≥ 36 and openSUSE keep it (/var/lib/rpm is then a symlink to it).
pub const RPM_SQLITE_SYSIMAGE: &str = "/usr/lib/sysimage/rpm/rpmdb.sqlite";
/// Package databases above this size are refused rather than read.
const MAX_DB: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PkgDb {
    Dpkg,
    Apk,
    Rpm,
}

impl PkgDb {
    pub fn cmp_versions(self, a: &str, b: &str) -> Ordering {
        match self {
            PkgDb::Dpkg => version::cmp_deb(a, b),
            PkgDb::Rpm => version::cmp_rpm(a, b),
            PkgDb::Apk => version::cmp_apk(a, b),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PkgDb::Dpkg => "dpkg",
            PkgDb::Apk => "apk",
            PkgDb::Rpm => "rpm",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Source package name (dpkg's `${source:Package}`, apk's origin, rpm's source rpm).
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub db: PkgDb,
    /// /etc/os-release (or /usr/lib/os-release) fields.
    pub os_release: BTreeMap<String, String>,
    pub packages: Vec<Package>,
}

/// Reads inventories, caching parsed databases by content so versions that share their
/// package database (most of a fleet) parse it once.
pub struct Inventories<'s> {
    pub browser: Browser<'s>,
    parsed: BTreeMap<ObjectId, (PkgDb, std::rc::Rc<Vec<Package>>)>,
}

impl<'s> Inventories<'s> {
    pub fn new(source: &'s dyn starling_store::ObjectSource) -> Self {
        Inventories {
            browser: Browser::new(source),
            parsed: BTreeMap::new(),
        }
    }

    /// The inventory of the version whose root tree is `root`; `image` names it in errors.
    pub fn of(&mut self, root: &ObjectId, image: &str) -> Result<Inventory> {
        let os_release = self.os_release(root)?;
        for (db, path) in [
            (PkgDb::Dpkg, DPKG_STATUS),
            (PkgDb::Apk, APK_INSTALLED),
            (PkgDb::Rpm, RPM_SQLITE),
        ] {
            let Some(Node::File { size, data, .. }) =
                self.browser.lookup(root, path.as_bytes(), true)?
            else {
                continue;
            };
            let key = data.content_id();
            let packages = match self.parsed.get(&key) {
                Some((_, p)) => p.clone(),
                None => {
                    let bytes = self.browser.read(&data, size, MAX_DB, path)?;
                    let text = String::from_utf8_lossy(&bytes);
                    let parsed = match db {
                        PkgDb::Dpkg => parse_dpkg_status(&text),
                        PkgDb::Apk => parse_apk_installed(&text),
                        PkgDb::Rpm => rpm::parse_rpmdb_sqlite(&bytes),
                    }
                    .map_err(|reason| Error::PackageDb {
                        image: image.into(),
                        reason: format!("{path}: {reason}"),
                    })?;
                    let rc = std::rc::Rc::new(parsed);
                    self.parsed.insert(key, (db, rc.clone()));
                    rc
                }
            };
            return Ok(Inventory {
                db,
                os_release,
                packages: (*packages).clone(),
            });
        }
        Err(Error::PackageDb {
            image: image.into(),
            reason: format!("no package database ({DPKG_STATUS}, {APK_INSTALLED} or {RPM_SQLITE})"),
        })
    }

    pub fn os_release(&mut self, root: &ObjectId) -> Result<BTreeMap<String, String>> {
        for p in ["/etc/os-release", "/usr/lib/os-release"] {
            if let Some(b) = self.browser.read_path(root, p, 1 << 20)? {
                return Ok(parse_os_release(&String::from_utf8_lossy(&b)));
            }
        }
        Ok(BTreeMap::new())
    }
}

pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.trim().is_empty() && !k.starts_with('#'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// Installed packages from dpkg's status file, as `dpkg-query -W` lists them: every package
/// whose state is not `not-installed`.
pub fn parse_dpkg_status(text: &str) -> Result<Vec<Package>, String> {
    let mut out = Vec::new();
    for p in control::parse(text)? {
        let Some(name) = p.get("Package") else {
            continue;
        };
        let state = p
            .get("Status")
            .and_then(|s| s.split_whitespace().nth(2))
            .unwrap_or("");
        if state == "not-installed" || state.is_empty() {
            continue;
        }
        let version = p.get("Version").unwrap_or("").to_string();
        let source = p
            .get("Source")
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or(name)
            .to_string();
        out.push(Package {
            name: name.to_string(),
            version,
            architecture: p.get("Architecture").unwrap_or("").to_string(),
            source,
        });
    }
    out.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then(a.architecture.cmp(&b.architecture))
    });
    Ok(out)
}

/// apk's installed database: paragraphs of `X:value` lines (P name, V version, A arch,
/// o origin).
pub fn parse_apk_installed(text: &str) -> Result<Vec<Package>, String> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut pkg = Package {
            name: String::new(),
            version: String::new(),
            architecture: String::new(),
            source: String::new(),
        };
        for line in block.lines() {
            let Some((k, v)) = line.split_once(':') else {
                if line.trim().is_empty() {
                    continue;
                }
                return Err(format!("line {line:?} is not `X:value`"));
            };
            match k {
                "P" => pkg.name = v.to_string(),
                "V" => pkg.version = v.to_string(),
                "A" => pkg.architecture = v.to_string(),
                "o" => pkg.source = v.to_string(),
                _ => {}
            }
        }
        if !pkg.name.is_empty() {
            if pkg.source.is_empty() {
                pkg.source = pkg.name.clone();
            }
            out.push(pkg);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lists_installed_packages() {
        let t = "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\nArchitecture: amd64\nSource: glibc\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\nArchitecture: all\n\nPackage: never\nStatus: purge ok not-installed\nArchitecture: all\n\nPackage: bash\nStatus: install ok installed\nVersion: 5.2-2\nArchitecture: amd64\nSource: bash (5.2-2)\n";
        let p = parse_dpkg_status(t).unwrap();
        let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bash", "gone", "libc6"]);
        assert_eq!(p[2].source, "glibc");
        assert_eq!(p[0].source, "bash");
    }

    #[test]
    fn apk_installed() {
        let t =
            "C:Q1abc\nP:musl\nV:1.2.4-r2\nA:x86_64\no:musl\n\nP:busybox\nV:1.36.1-r5\nA:x86_64\n";
        let p = parse_apk_installed(t).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "busybox");
        assert_eq!(p[0].source, "busybox");
        assert_eq!(p[1].version, "1.2.4-r2");
    }

    #[test]
    fn os_release() {
        let r =
            parse_os_release("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n# c\n");
        assert_eq!(r["ID"], "debian");
        assert_eq!(r["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
    }
}
