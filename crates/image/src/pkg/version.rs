//! Version ordering as each package manager defines it: dpkg's (epoch, upstream, revision with
//! `~` sorting before everything), rpm's `rpmvercmp`, and apk's. Search uses the ordering of
//! the database a package came from.

use std::cmp::Ordering;

/// dpkg's `verrevcmp` character order: digits are handled apart, `~` sorts before the end of
/// the string, letters before other characters.
fn dpkg_order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(b'~') => -1,
        Some(c) => c as i32 + 256,
    }
}

fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    let at = |s: &[u8], k: usize| s.get(k).copied();
    let digit = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_digit());
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(at(a, i))) || (j < b.len() && !digit(at(b, j))) {
            let (ac, bc) = (dpkg_order(at(a, i)), dpkg_order(at(b, j)));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while at(a, i) == Some(b'0') {
            i += 1;
        }
        while at(b, j) == Some(b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(at(a, i)) && digit(at(b, j)) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(at(a, i)) {
            return Ordering::Greater;
        }
        if digit(at(b, j)) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// A parsed dpkg version: `[epoch:]upstream[-revision]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebVersion<'a> {
    pub epoch: u64,
    pub upstream: &'a str,
    pub revision: &'a str,
}

pub fn parse_deb(v: &str) -> Result<DebVersion<'_>, String> {
    let v = v.trim();
    if v.is_empty() {
        return Err("empty version".into());
    }
    if v.chars().any(char::is_whitespace) {
        return Err(format!("version {v:?} contains spaces"));
    }
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) => (
            e.parse::<u64>()
                .map_err(|_| format!("version {v:?}: epoch {e:?} is not a number"))?,
            rest,
        ),
        None => (0, v),
    };
    let (upstream, revision) = match rest.rsplit_once('-') {
        Some((u, r)) => (u, r),
        None => (rest, ""),
    };
    if upstream.is_empty() || !upstream.as_bytes()[0].is_ascii_digit() {
        return Err(format!(
            "version {v:?}: upstream version must start with a digit"
        ));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || ".+~-:".contains(c);
    if !upstream.chars().all(ok) || !revision.chars().all(|c| ok(c) && c != ':' && c != '-') {
        return Err(format!("version {v:?} has characters dpkg does not allow"));
    }
    Ok(DebVersion {
        epoch,
        upstream,
        revision,
    })
}

/// dpkg's ordering (`dpkg --compare-versions`). Unparseable versions compare as strings.
pub fn cmp_deb(a: &str, b: &str) -> Ordering {
    match (parse_deb(a), parse_deb(b)) {
        (Ok(x), Ok(y)) => x
            .epoch
            .cmp(&y.epoch)
            .then_with(|| verrevcmp(x.upstream.as_bytes(), y.upstream.as_bytes()))
            .then_with(|| verrevcmp(x.revision.as_bytes(), y.revision.as_bytes())),
        _ => a.cmp(b),
    }
}

/// rpm's `rpmvercmp` on one version or release string.
fn rpmvercmp(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let sep = |c: u8| !c.is_ascii_alphanumeric() && c != b'~' && c != b'^';
    loop {
        while i < a.len() && sep(a[i]) {
            i += 1;
        }
        while j < b.len() && sep(b[j]) {
            j += 1;
        }
        // Tilde sorts before everything, even the end.
        let (ta, tb) = (a.get(i) == Some(&b'~'), b.get(j) == Some(&b'~'));
        if ta || tb {
            if !tb {
                return Ordering::Less;
            }
            if !ta {
                return Ordering::Greater;
            }
            i += 1;
            j += 1;
            continue;
        }
        // Caret sorts after the end but before anything else.
        let (ca, cb) = (a.get(i) == Some(&b'^'), b.get(j) == Some(&b'^'));
        if ca || cb {
            if i >= a.len() {
                return Ordering::Less;
            }
            if j >= b.len() {
                return Ordering::Greater;
            }
            if !cb {
                return Ordering::Less;
            }
            if !ca {
                return Ordering::Greater;
            }
            i += 1;
            j += 1;
            continue;
        }
        if i >= a.len() || j >= b.len() {
            break;
        }
        let numeric = a[i].is_ascii_digit();
        let take = |s: &[u8], k: &mut usize| {
            let start = *k;
            while *k < s.len()
                && (if numeric {
                    s[*k].is_ascii_digit()
                } else {
                    s[*k].is_ascii_alphabetic()
                })
            {
                *k += 1;
            }
            start
        };
        let (sa, sb) = (take(a, &mut i), take(b, &mut j));
        let (pa, pb) = (&a[sa..i], &b[sb..j]);
        if pb.is_empty() {
            // Segments of different kinds: numbers are newer than letters.
            return if numeric {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let ord = if numeric {
            let strip = |p: &[u8]| {
                let k = p.iter().take_while(|&&c| c == b'0').count();
                p[k..].to_vec()
            };
            let (x, y) = (strip(pa), strip(pb));
            x.len().cmp(&y.len()).then_with(|| x.cmp(&y))
        } else {
            pa.cmp(pb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    match (i >= a.len(), j >= b.len()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        _ => Ordering::Greater,
    }
}

/// rpm's EVR ordering for `[epoch:]version[-release]`.
pub fn cmp_rpm(a: &str, b: &str) -> Ordering {
    let split = |v: &str| -> (u64, String, String) {
        let (e, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((ver, rel)) => (e, ver.to_string(), rel.to_string()),
            None => (e, rest.to_string(), String::new()),
        }
    };
    let (ea, va, ra) = split(a);
    let (eb, vb, rb) = split(b);
    ea.cmp(&eb).then_with(|| rpmvercmp(&va, &vb)).then_with(|| {
        if ra.is_empty() || rb.is_empty() {
            Ordering::Equal
        } else {
            rpmvercmp(&ra, &rb)
        }
    })
}

/// apk versions are close enough to rpm's segment rules for ordering (digits, letters,
/// `_rc`-style suffixes, `-rN` revisions) to use them.
pub fn cmp_apk(a: &str, b: &str) -> Ordering {
    cmp_rpm(&a.replacen("-r", "-", 1), &b.replacen("-r", "-", 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn dpkg_order_matches_dpkg() {
        // Pairs checked against `dpkg --compare-versions`.
        for (a, b, o) in [
            ("1.0", "1.0", Equal),
            ("1.0-1", "1.0-2", Less),
            ("1:1.0", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0+b1", Less),
            ("2.36.1-8+deb11u1", "2.36.1-8", Greater),
            ("1.2.3", "1.2.10", Less),
            ("1.0a", "1.0", Greater),
            ("1.0~", "1.0~~", Greater),
            ("0:1.0", "1.0", Equal),
            ("1.0-0", "1.0", Equal),
            ("3.0.11-1~deb12u2", "3.0.11-1", Less),
            ("10", "9", Greater),
            ("1.001", "1.1", Equal),
        ] {
            assert_eq!(cmp_deb(a, b), o, "{a} vs {b}");
            assert_eq!(cmp_deb(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn dpkg_versions_are_checked() {
        assert!(parse_deb("x1.0").is_err());
        assert!(parse_deb("a:1").is_err());
        assert!(parse_deb("1 0").is_err());
        assert!(parse_deb("").is_err());
        assert_eq!(parse_deb("2:1.0-3").unwrap().epoch, 2);
    }

    #[test]
    fn rpm_order_matches_rpmvercmp() {
        for (a, b, o) in [
            ("1.0", "1.0", Equal),
            ("1.0", "2.0", Less),
            ("2.0.1", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0^git1", "1.0", Greater),
            ("1.0a", "1.0", Greater),
            ("1.010", "1.9", Greater),
            ("1.05", "1.5", Equal),
            ("5.5p1", "5.5p10", Less),
            ("1:1.0-1", "2.0-1", Greater),
            ("1.0-1.el9", "1.0-2.el9", Less),
            ("a", "1", Less),
        ] {
            assert_eq!(cmp_rpm(a, b), o, "{a} vs {b}");
            assert_eq!(cmp_rpm(b, a), o.reverse(), "{b} vs {a}");
        }
    }
}
