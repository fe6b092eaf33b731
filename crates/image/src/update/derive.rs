//! Customizing a derived image in its own configuration files: the hostname (/etc/hostname
//! and the 127.0.1.1 line of /etc/hosts) and new users (/etc/passwd, /etc/group, /etc/shadow
//! with a locked password, and a home directory they own).

use std::collections::{BTreeMap, BTreeSet};

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

/// The account databases being edited.
#[derive(Debug, Clone, PartialEq)]
struct Accounts {
    passwd: String,
    group: String,
    /// `None` when the image has no /etc/shadow.
    shadow: Option<String>,
}

impl Accounts {
    /// Adds user `u` with a group of the same name and id (the first id from 1000 that
    /// neither a user nor a group has) and a locked password changed `days` after the epoch.
    /// `None` if the user exists already.
    fn add_user(&mut self, u: &str, days: i64) -> Option<u32> {
        if self.passwd.lines().any(|l| l.split(':').next() == Some(u)) {
            return None;
        }
        let ids = |text: &str| -> BTreeSet<u32> {
            text.lines()
                .filter_map(|l| l.split(':').nth(2)?.parse().ok())
                .collect()
        };
        let used: BTreeSet<u32> = ids(&self.passwd)
            .union(&ids(&self.group))
            .copied()
            .collect();
        let id = (1000..60000).find(|i| !used.contains(i)).unwrap_or(60000);
        append_line(
            &mut self.passwd,
            &format!("{u}:x:{id}:{id}::/home/{u}:/bin/bash"),
        );
        append_line(&mut self.group, &format!("{u}:x:{id}:"));
        if let Some(sh) = self.shadow.as_mut() {
            append_line(sh, &format!("{u}:!:{days}:0:99999:7:::"));
        }
        Some(id)
    }
}

/// Appends `line` and a newline, after ending a last line that has none.
fn append_line(text: &mut String, line: &str) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
}

/// Hostname and users, written into the image's own configuration files.
pub(super) fn customize(
    b: &mut Browser<'_>,
    maker: &Maker<'_, '_>,
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
    let plain = |mode| Meta {
        mode,
        ..Meta::default()
    };
    if let Some(h) = &opts.hostname {
        let meta = existing(b, "/etc/hostname")?.map_or(plain(0o644), |e| e.0);
        let node = maker.file(b, format!("{h}\n").into_bytes(), stamp(meta))?;
        edits.set(b"/etc/hostname", Edit::Put(node), &default_dir())?;
        if let Some((meta, hosts)) = existing(b, "/etc/hosts")? {
            let text = hosts_with_hostname(&String::from_utf8_lossy(&hosts), h);
            let node = maker.file(b, text.into_bytes(), stamp(meta))?;
            edits.set(b"/etc/hosts", Edit::Put(node), &default_dir())?;
        }
    }
    if opts.add_users.is_empty() {
        return Ok(());
    }
    let Some((pmeta, passwd)) = existing(b, "/etc/passwd")? else {
        warnings.push("no /etc/passwd: users not added".into());
        return Ok(());
    };
    let (gmeta, group) = existing(b, "/etc/group")?.unwrap_or((plain(0o644), Vec::new()));
    let shadow = existing(b, "/etc/shadow")?;
    let mut accounts = Accounts {
        passwd: String::from_utf8_lossy(&passwd).into_owned(),
        group: String::from_utf8_lossy(&group).into_owned(),
        shadow: shadow
            .as_ref()
            .map(|s| String::from_utf8_lossy(&s.1).into_owned()),
    };
    for u in &opts.add_users {
        let Some(id) = accounts.add_user(u, now / 86_400_000_000_000) else {
            warnings.push(format!("user {u} exists already"));
            continue;
        };
        let home = Meta {
            mode: 0o755,
            uid: id,
            gid: id,
            ..stamp(Meta::default())
        };
        edits.set(
            format!("/home/{u}").as_bytes(),
            Edit::Dir {
                meta: home,
                set_meta: true,
                children: BTreeMap::new(),
            },
            &default_dir(),
        )?;
    }
    let node = maker.file(b, accounts.passwd.into_bytes(), stamp(pmeta))?;
    edits.set(b"/etc/passwd", Edit::Put(node), &default_dir())?;
    let node = maker.file(b, accounts.group.into_bytes(), stamp(gmeta))?;
    edits.set(b"/etc/group", Edit::Put(node), &default_dir())?;
    if let (Some((smeta, _)), Some(text)) = (shadow, accounts.shadow) {
        let node = maker.file(b, text.into_bytes(), stamp(smeta))?;
        edits.set(b"/etc/shadow", Edit::Put(node), &default_dir())?;
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

    fn debian_accounts() -> Accounts {
        Accounts {
            passwd: "root:x:0:0:root:/root:/bin/bash\n\
                     nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                     first:x:1000:1000::/home/first:/bin/bash"
                .into(),
            group: "root:x:0:\nusers:x:100:\nstaff:x:1001:\n".into(),
            shadow: Some("root:*:19000:0:99999:7:::\n".into()),
        }
    }

    #[test]
    fn a_new_user_gets_the_first_id_free_in_both_files() {
        let mut a = debian_accounts();
        // 1000 is a user, 1001 a group: 1002 is the first free for both.
        assert_eq!(a.add_user("alice", 19_500), Some(1002));
        assert_eq!(
            a.passwd.lines().last(),
            Some("alice:x:1002:1002::/home/alice:/bin/bash")
        );
        // The passwd file lacked a final newline; its last line is kept whole.
        assert!(a
            .passwd
            .contains("first:x:1000:1000::/home/first:/bin/bash\nalice:"));
        assert!(a.passwd.ends_with('\n'));
        assert_eq!(a.group.lines().last(), Some("alice:x:1002:"));
        assert_eq!(
            a.shadow.as_deref().and_then(|s| s.lines().last()),
            Some("alice:!:19500:0:99999:7:::")
        );
        assert_eq!(a.add_user("bob", 19_500), Some(1003));
    }

    #[test]
    fn an_existing_user_is_refused_and_nothing_changes() {
        let mut a = debian_accounts();
        let before = a.clone();
        assert_eq!(a.add_user("first", 1), None);
        assert_eq!(a, before);
    }

    #[test]
    fn without_shadow_only_passwd_and_group_change() {
        let mut a = Accounts {
            passwd: String::new(),
            group: String::new(),
            shadow: None,
        };
        assert_eq!(a.add_user("x", 1), Some(1000));
        assert_eq!(a.passwd, "x:x:1000:1000::/home/x:/bin/bash\n");
        assert_eq!(a.group, "x:x:1000:\n");
        assert_eq!(a.shadow, None);
    }
}
