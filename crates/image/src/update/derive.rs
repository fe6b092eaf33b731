//! Customizing a derived image in its own configuration files: the hostname (/etc/hostname
//! and the 127.0.1.1 line of /etc/hosts) and new users (see `accounts`). A setting the image
//! has already changes nothing.

use super::accounts::{self, Accounts};
use super::{default_dir, Maker, UpdateOptions};
use crate::browse::Browser;
use crate::edit::{Edit, Edits};
use crate::error::{Error, Result};
use crate::manifest::{Commit, Meta, Node};

/// Refuses a hostname that is not one DNS label of letters, digits and inner hyphens.
pub(super) fn check_hostname(h: &str) -> Result<()> {
    if h.is_empty()
        || h.len() > 63
        || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        || h.starts_with('-')
    {
        return Err(Error::BadQuery {
            what: "hostname",
            input: h.to_string(),
            reason: "use 1 to 63 letters, digits and inner hyphens".into(),
        });
    }
    Ok(())
}

/// Refuses a user name `useradd` would refuse by default.
pub(super) fn check_user_name(u: &str) -> Result<()> {
    let ok = !u.is_empty()
        && u.len() <= 32
        && u.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && u.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(Error::BadQuery {
            what: "user name",
            input: u.to_string(),
            reason: "use lower-case letters, digits, '_' and '-', starting with a letter or '_'"
                .into(),
        });
    }
    Ok(())
}

/// /etc/hosts with `127.0.1.1 <h>` in place of any 127.0.1.1 line, after the 127.0.0.1 line
/// (or first), as Debian's installer writes it.
fn hosts_with_hostname(hosts: &str, h: &str) -> String {
    let mut lines: Vec<String> = hosts
        .lines()
        .filter(|l| !l.starts_with("127.0.1.1"))
        .map(String::from)
        .collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("127.0.0.1"))
        .map_or(0, |i| i + 1);
    lines.insert(at, format!("127.0.1.1\t{h}"));
    lines.join("\n") + "\n"
}

/// Hostname and users, written into the image's own configuration files. A user that
/// exists already is refused (`image` names the image in the error).
#[allow(clippy::too_many_arguments)]
pub(super) fn customize(
    b: &mut Browser<'_>,
    maker: &Maker<'_, '_>,
    image: &str,
    old: &Commit,
    opts: &UpdateOptions<'_>,
    edits: &mut Edits,
    warnings: &mut Vec<String>,
    now: i64,
) -> Result<()> {
    let stamp = |mut m: Meta| {
        m.mtime_sec = now / 1_000_000_000;
        m.mtime_nsec = (now % 1_000_000_000) as u32;
        m
    };
    let existing = |b: &mut Browser<'_>, p: &str| -> Result<Option<(Meta, Vec<u8>)>> {
        match b.lookup(&old.root, p.as_bytes(), false)? {
            Some(Node::File { meta, size, data }) => {
                Ok(Some((meta, b.read(&data, size, 16 << 20, p)?)))
            }
            _ => Ok(None),
        }
    };
    let text = |b: &mut Browser<'_>, p: &str| -> Result<Option<String>> {
        Ok(existing(b, p)?.map(|(_, t)| String::from_utf8_lossy(&t).into_owned()))
    };
    let plain = |mode| Meta {
        mode,
        ..Meta::default()
    };
    if let Some(h) = &opts.hostname {
        let now_file = existing(b, "/etc/hostname")?;
        let wanted = format!("{h}\n").into_bytes();
        if now_file.as_ref().map(|f| &f.1) != Some(&wanted) {
            let meta = now_file.map_or(plain(0o644), |e| e.0);
            let node = maker.file(b, wanted, stamp(meta))?;
            edits.set(b"/etc/hostname", Edit::Put(node), &default_dir())?;
        }
        if let Some((meta, hosts)) = existing(b, "/etc/hosts")? {
            let text = hosts_with_hostname(&String::from_utf8_lossy(&hosts), h);
            if text.as_bytes() != hosts.as_slice() {
                let node = maker.file(b, text.into_bytes(), stamp(meta))?;
                edits.set(b"/etc/hosts", Edit::Put(node), &default_dir())?;
            }
        }
    }
    if opts.add_users.is_empty() {
        return Ok(());
    }
    let Some((pmeta, passwd)) = existing(b, "/etc/passwd")? else {
        return Err(Error::Accounts {
            image: image.to_string(),
            reason: "has no /etc/passwd to add users to".into(),
        });
    };
    let policy = accounts::Policy::of(
        text(b, "/etc/adduser.conf")?.as_deref(),
        text(b, "/etc/login.defs")?.as_deref(),
        text(b, "/etc/default/useradd")?.as_deref(),
    );
    let (gmeta, group) = existing(b, "/etc/group")?.unwrap_or((plain(0o644), Vec::new()));
    let shadow = existing(b, "/etc/shadow")?;
    let gshadow = existing(b, "/etc/gshadow")?;
    let lossy = |f: &Option<(Meta, Vec<u8>)>| {
        f.as_ref()
            .map(|f| String::from_utf8_lossy(&f.1).into_owned())
    };
    let mut accounts = Accounts {
        passwd: String::from_utf8_lossy(&passwd).into_owned(),
        group: String::from_utf8_lossy(&group).into_owned(),
        shadow: lossy(&shadow),
        gshadow: lossy(&gshadow),
    };
    let skel = match &policy.skel {
        Some(p) => match b.lookup(&old.root, p.as_bytes(), true)? {
            Some(Node::Dir { tree, .. }) => Some((p.clone(), tree)),
            _ => None,
        },
        None => None,
    };
    for u in &opts.add_users {
        let nu = accounts
            .add_user(u, now / 86_400_000_000_000, &policy)
            .map_err(|reason| Error::Accounts {
                image: image.to_string(),
                reason,
            })?;
        if b.lookup(&old.root, nu.home.as_bytes(), false)?.is_some() {
            // As adduser: an existing home is the user's, left as it is.
            warnings.push(format!(
                "{}: exists already; left as it is, the skeleton not copied",
                nu.home
            ));
            continue;
        }
        let children = match &skel {
            Some((at, tree)) => accounts::skel_copy(b, tree, nu.uid, nu.gid, at, warnings)?,
            None => Default::default(),
        };
        let home = Meta {
            mode: policy.dir_mode,
            uid: nu.uid,
            gid: nu.gid,
            ..stamp(Meta::default())
        };
        edits.set(
            nu.home.as_bytes(),
            Edit::Dir {
                meta: home,
                set_meta: true,
                children,
            },
            &default_dir(),
        )?;
    }
    let node = maker.file(b, accounts.passwd.into_bytes(), stamp(pmeta))?;
    edits.set(b"/etc/passwd", Edit::Put(node), &default_dir())?;
    let node = maker.file(b, accounts.group.into_bytes(), stamp(gmeta))?;
    edits.set(b"/etc/group", Edit::Put(node), &default_dir())?;
    for (path, file, text) in [
        ("/etc/shadow", shadow, accounts.shadow),
        ("/etc/gshadow", gshadow, accounts.gshadow),
    ] {
        if let (Some((meta, old_text)), Some(text)) = (file, text) {
            if text.as_bytes() != old_text.as_slice() {
                let node = maker.file(b, text.into_bytes(), stamp(meta))?;
                edits.set(path.as_bytes(), Edit::Put(node), &default_dir())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_must_be_one_dns_label() {
        for ok in ["web-1", "a", "WEB", &"x".repeat(63)] {
            assert!(check_hostname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-web", "web_1", "web.example", "wéb", &"x".repeat(64)] {
            let e = check_hostname(bad).unwrap_err().to_string();
            assert!(e.contains("hostname"), "{bad}: {e}");
        }
    }

    #[test]
    fn user_names_follow_useradd() {
        for ok in ["alice", "_svc", "a-1_b", &"u".repeat(32)] {
            assert!(check_user_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "-x", "Alice", "a b", "a:b", &"u".repeat(33)] {
            let e = check_user_name(bad).unwrap_err().to_string();
            assert!(e.contains("user name"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_hostname_line_follows_localhost_and_replaces_an_old_one() {
        let hosts = "127.0.0.1\tlocalhost\n127.0.1.1\told\n::1\tlocalhost ip6-localhost\n";
        assert_eq!(
            hosts_with_hostname(hosts, "web"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tweb\n::1\tlocalhost ip6-localhost\n"
        );
        // No localhost line: the new line goes first.
        assert_eq!(
            hosts_with_hostname("::1\tlocalhost", "web"),
            "127.0.1.1\tweb\n::1\tlocalhost\n"
        );
    }
}
