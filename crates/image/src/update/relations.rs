//! Package relations as dpkg writes them (`a (>= 1) | b, c:any`): parsed into alternatives,
//! and Depends/Pre-Depends checked against what is installed after the run (the image's
//! installed packages, then the packages being installed), Provides included.

use std::collections::BTreeMap;

use crate::pkg::control::Paragraph;
use crate::pkg::version;

use super::dpkg::installed;

/// One alternative: (name without architecture qualifier, operator, version).
pub(super) type Relation = (String, Option<String>, Option<String>);

/// A relation field as groups (all must hold) of alternatives (one must hold).
pub(super) fn parse(field: &str) -> Vec<Vec<Relation>> {
    field
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|group| {
            group
                .split('|')
                .map(|alt| {
                    let alt = alt.trim();
                    let (name, rest) = alt
                        .split_once('(')
                        .map_or((alt, ""), |(n, r)| (n.trim(), r));
                    let name = name.split_whitespace().next().unwrap_or("");
                    let name = name.split(':').next().unwrap_or(name).to_string();
                    let rest = rest.trim_end_matches(')').trim();
                    let op_len = rest
                        .find(|c: char| !"<>=".contains(c))
                        .unwrap_or(rest.len());
                    let (op, ver) = rest.split_at(op_len);
                    let ver = ver.trim();
                    if op.is_empty() || ver.is_empty() {
                        (name, None, None)
                    } else {
                        (name, Some(op.to_string()), Some(ver.to_string()))
                    }
                })
                .collect()
        })
        .collect()
}

/// Whether version `have` stands in relation `op` to `want`. `<` and `>` are dpkg's old
/// spellings of `<=` and `>=`.
pub(super) fn holds(have: &str, op: &str, want: &str) -> bool {
    use std::cmp::Ordering::*;
    let o = version::cmp_deb(have, want);
    match op {
        "<<" => o == Less,
        "<=" | "<" => o != Greater,
        "=" => o == Equal,
        ">=" | ">" => o != Less,
        ">>" => o == Greater,
        _ => false,
    }
}

/// What is installed after the run: every package and every name provided, with the
/// versions they come in (`None` for an unversioned Provides).
#[derive(Debug, Default)]
pub(super) struct Provided(BTreeMap<String, Vec<Option<String>>>);

impl Provided {
    /// The installed packages of a dpkg status file.
    pub fn from_status(status: &[Paragraph]) -> Provided {
        let mut p = Provided::default();
        for para in status.iter().filter(|p| installed(p)) {
            if let Some(n) = para.get("Package") {
                p.0.entry(n.into())
                    .or_default()
                    .push(para.get("Version").map(String::from));
            }
            p.add_provides(para.get("Provides").unwrap_or(""));
        }
        p
    }

    /// A package being installed: its version replaces whatever was installed.
    pub fn add_package(&mut self, name: &str, version: &str, provides: &str) {
        self.0.insert(name.into(), vec![Some(version.into())]);
        self.add_provides(provides);
    }

    fn add_provides(&mut self, field: &str) {
        for (name, _, version) in parse(field).into_iter().flatten() {
            self.0.entry(name).or_default().push(version);
        }
    }

    /// Whether one of the alternatives is installed in a version that satisfies it. A
    /// versioned relation needs a versioned package or Provides.
    pub fn satisfies(&self, alts: &[Relation]) -> bool {
        alts.iter().any(|(n, op, v)| {
            self.0.get(n).is_some_and(|vs| {
                vs.iter().any(|have| match (op, v, have) {
                    (None, _, _) => true,
                    (Some(op), Some(want), Some(have)) => holds(have, op, want),
                    _ => false,
                })
            })
        })
    }

    /// A warning for each Pre-Depends and Depends group of package `name` (control
    /// paragraph `control`) that nothing satisfies.
    pub fn unsatisfied(&self, name: &str, control: &Paragraph) -> Vec<String> {
        let mut warnings = Vec::new();
        for field in ["Pre-Depends", "Depends"] {
            for alts in parse(control.get(field).unwrap_or("")) {
                if self.satisfies(&alts) {
                    continue;
                }
                let text: Vec<String> = alts
                    .iter()
                    .map(|(n, op, v)| match (op, v) {
                        (Some(o), Some(v)) => format!("{n} ({o} {v})"),
                        _ => n.clone(),
                    })
                    .collect();
                warnings.push(format!(
                    "unsatisfied dependency of {name}: {field}: {}",
                    text.join(" | ")
                ));
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkg::control;

    fn rel(n: &str, op: Option<&str>, v: Option<&str>) -> Relation {
        (n.into(), op.map(String::from), v.map(String::from))
    }

    #[test]
    fn fields_parse_into_groups_of_alternatives() {
        let r = parse("libc6 (>= 2.36), debconf (>= 0.5) | debconf-2.0, perl:any,  , x (<<1.0-1)");
        assert_eq!(
            r,
            vec![
                vec![rel("libc6", Some(">="), Some("2.36"))],
                vec![
                    rel("debconf", Some(">="), Some("0.5")),
                    rel("debconf-2.0", None, None)
                ],
                vec![rel("perl", None, None)],
                vec![rel("x", Some("<<"), Some("1.0-1"))],
            ]
        );
        // An architecture qualifier is dropped, with or without a version.
        assert_eq!(
            parse("python3:any (>= 3.11~)"),
            vec![vec![rel("python3", Some(">="), Some("3.11~"))]]
        );
        assert!(parse("").is_empty());
    }

    #[test]
    fn every_operator_compares_as_dpkg_does() {
        // (have, op, want, holds)
        let cases = [
            ("1.0", "<<", "1.1", true),
            ("1.1", "<<", "1.1", false),
            ("1.1", "<=", "1.1", true),
            ("1.2", "<=", "1.1", false),
            ("1.2", "<", "1.1", false),
            ("1.1", "<", "1.1", true),
            ("1:0.9", "=", "1:0.9", true),
            ("1.0", "=", "1.0-1", false),
            ("1.1", ">=", "1.1", true),
            ("1.0", ">=", "1.1", false),
            ("1.1", ">", "1.1", true),
            ("1.0~rc1", ">", "1.0", false),
            ("1.0", ">>", "1.0~rc1", true),
            ("1.0", ">>", "1.0", false),
            // An epoch outranks any upstream version.
            ("1:0.1", ">>", "9.9", true),
            ("1.0", "!=", "2.0", false),
        ];
        for (have, op, want, expect) in cases {
            assert_eq!(holds(have, op, want), expect, "{have} {op} {want}");
        }
    }

    fn status(text: &str) -> Vec<Paragraph> {
        control::parse(text).unwrap()
    }

    #[test]
    fn provides_and_virtual_packages_satisfy_unversioned_relations() {
        let p = Provided::from_status(&status(
            "Package: mawk\nStatus: install ok installed\nVersion: 1.3.4\nProvides: awk\n\n\
             Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1\n\
             Provides: libssl (= 3.0.11)\n\n\
             Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n",
        ));
        assert!(p.satisfies(&[rel("awk", None, None)]));
        // A virtual name without a version cannot meet a versioned relation.
        assert!(!p.satisfies(&[rel("awk", Some(">="), Some("1"))]));
        // A versioned Provides can.
        assert!(p.satisfies(&[rel("libssl", Some(">="), Some("3.0"))]));
        assert!(!p.satisfies(&[rel("libssl", Some(">>"), Some("3.0.11"))]));
        // Only installed packages count.
        assert!(!p.satisfies(&[rel("gone", None, None)]));
        // One alternative is enough.
        assert!(p.satisfies(&[
            rel("gone", None, None),
            rel("mawk", Some("="), Some("1.3.4"))
        ]));
    }

    #[test]
    fn a_package_being_installed_replaces_the_installed_version() {
        let mut p = Provided::from_status(&status(
            "Package: openssl\nStatus: install ok installed\nVersion: 3.0.11-1\n",
        ));
        assert!(p.satisfies(&[rel("openssl", Some("<<"), Some("3.0.15"))]));
        p.add_package("openssl", "3.0.15-1", "openssl-provider");
        assert!(!p.satisfies(&[rel("openssl", Some("<<"), Some("3.0.15"))]));
        assert!(p.satisfies(&[rel("openssl", Some(">="), Some("3.0.15"))]));
        assert!(p.satisfies(&[rel("openssl-provider", None, None)]));
    }

    #[test]
    fn unsatisfied_groups_become_warnings_naming_the_field() {
        let p = Provided::from_status(&status(
            "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\n",
        ));
        let control = status(
            "Package: tool\nVersion: 1\nPre-Depends: libc6 (>= 2.38)\n\
             Depends: libc6 (>= 2.34), libfoo (>> 1) | libbar, zlib1g\n",
        )
        .remove(0);
        assert_eq!(
            p.unsatisfied("tool", &control),
            vec![
                "unsatisfied dependency of tool: Pre-Depends: libc6 (>= 2.38)",
                "unsatisfied dependency of tool: Depends: libfoo (>> 1) | libbar",
                "unsatisfied dependency of tool: Depends: zlib1g",
            ]
        );
        let none = status("Package: t\nVersion: 1\n").remove(0);
        assert!(p.unsatisfied("t", &none).is_empty());
    }
}
