//! New users in a derived image, as the image's own `adduser` would make them: the rules come
//! from its /etc/adduser.conf (Debian), else /etc/login.defs and /etc/default/useradd
//! (`useradd`), else their defaults. Each user gets passwd, group, shadow and gshadow lines
//! with a locked password, the next id free in both passwd and group within the configured
//! range, and a home directory of the configured mode holding a copy of the skeleton.

use std::collections::{BTreeMap, BTreeSet};

use crate::browse::Browser;
use crate::edit::Edit;
use crate::error::Result;
use crate::manifest::{Meta, Node};

/// How the image makes users.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Policy {
    pub first_id: u32,
    pub last_id: u32,
    pub home_root: String,
    pub shell: String,
    pub dir_mode: u32,
    pub skel: Option<String>,
    /// A group per user (of the same name and id); else every user's group is `users_gid`.
    pub user_groups: bool,
    pub users_gid: u32,
    /// Which file the rules came from, for the report.
    pub from: &'static str,
}

impl Default for Policy {
    /// adduser's built-in defaults (Debian 12).
    fn default() -> Self {
        Policy {
            first_id: 1000,
            last_id: 59999,
            home_root: "/home".into(),
            shell: "/bin/bash".into(),
            dir_mode: 0o700,
            skel: Some("/etc/skel".into()),
            user_groups: true,
            users_gid: 100,
            from: "defaults",
        }
    }
}

/// `KEY=VALUE` (adduser.conf, /etc/default/useradd) or `KEY VALUE` (login.defs) settings,
/// comments and quotes removed.
fn settings(text: &str, sep: char) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = if sep == '=' {
                l.split_once('=')?
            } else {
                l.split_once(char::is_whitespace)?
            };
            let v = v.trim().trim_matches('"').trim_matches('\'');
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

fn octal(v: &str) -> Option<u32> {
    u32::from_str_radix(v, 8).ok().filter(|m| *m <= 0o7777)
}

impl Policy {
    /// The rules of an image, from the text of its configuration files (`None` where absent).
    pub fn of(
        adduser_conf: Option<&str>,
        login_defs: Option<&str>,
        useradd_defaults: Option<&str>,
    ) -> Policy {
        let mut p = Policy::default();
        if let Some(text) = adduser_conf {
            let s = settings(text, '=');
            let num = |k: &str| s.get(k).and_then(|v| v.parse::<u32>().ok());
            p.from = "/etc/adduser.conf";
            p.first_id = num("FIRST_UID").unwrap_or(p.first_id);
            p.last_id = num("LAST_UID").unwrap_or(p.last_id);
            if let Some(v) = s.get("DHOME") {
                p.home_root = v.trim_end_matches('/').to_string();
            }
            if let Some(v) = s.get("DSHELL") {
                p.shell = v.clone();
            }
            if let Some(m) = s.get("DIR_MODE").and_then(|v| octal(v)) {
                p.dir_mode = m;
            }
            if let Some(v) = s.get("SKEL") {
                p.skel = (!v.is_empty()).then(|| v.clone());
            }
            if let Some(v) = s.get("USERGROUPS") {
                p.user_groups = v != "no";
            }
            p.users_gid = num("USERS_GID").unwrap_or(p.users_gid);
            return p;
        }
        if login_defs.is_none() && useradd_defaults.is_none() {
            return p;
        }
        // useradd's rules: /bin/sh, the home's mode from HOME_MODE or else the UMASK.
        p.from = "/etc/login.defs";
        p.shell = "/bin/sh".into();
        p.dir_mode = 0o755;
        if let Some(text) = login_defs {
            let s = settings(text, ' ');
            let num = |k: &str| s.get(k).and_then(|v| v.parse::<u32>().ok());
            p.first_id = num("UID_MIN").unwrap_or(p.first_id);
            p.last_id = num("UID_MAX").unwrap_or(60000);
            if let Some(m) = s.get("HOME_MODE").and_then(|v| octal(v)) {
                p.dir_mode = m;
            } else if let Some(u) = s.get("UMASK").and_then(|v| octal(v)) {
                p.dir_mode = 0o777 & !u;
            }
            if let Some(v) = s.get("USERGROUPS_ENAB") {
                p.user_groups = v != "no";
            }
        }
        if let Some(text) = useradd_defaults {
            let s = settings(text, '=');
            if let Some(v) = s.get("HOME") {
                p.home_root = v.trim_end_matches('/').to_string();
            }
            if let Some(v) = s.get("SHELL") {
                p.shell = v.clone();
            }
            if let Some(v) = s.get("SKEL") {
                p.skel = (!v.is_empty()).then(|| v.clone());
            }
            if let Some(g) = s.get("GROUP").and_then(|v| v.parse().ok()) {
                p.users_gid = g;
            }
        }
        p
    }
}

/// The account databases being edited.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Accounts {
    pub passwd: String,
    pub group: String,
    /// `None` when the image has no /etc/shadow (or /etc/gshadow).
    pub shadow: Option<String>,
    pub gshadow: Option<String>,
}

/// A user just added.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NewUser {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

fn names(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|l| l.split(':').next())
}

fn ids(text: &str) -> BTreeSet<u32> {
    text.lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect()
}

impl Accounts {
    /// Adds user `u` under `policy`, with a locked password changed `days` after the epoch.
    /// Refused (with why) when the name is taken as a user, or as a group that a user group
    /// would need, or when the range has no free id.
    pub fn add_user(&mut self, u: &str, days: i64, policy: &Policy) -> Result<NewUser, String> {
        if let Some(line) = self.passwd.lines().find(|l| l.split(':').next() == Some(u)) {
            let uid = line.split(':').nth(2).unwrap_or("?");
            return Err(format!("user {u} exists already (uid {uid})"));
        }
        if policy.user_groups && names(&self.group).any(|n| n == u) {
            return Err(format!(
                "group {u} exists already; a user group of that name cannot be made"
            ));
        }
        let used_uids = ids(&self.passwd);
        let used_gids = ids(&self.group);
        let free =
            |i: &u32| !used_uids.contains(i) && (!policy.user_groups || !used_gids.contains(i));
        let Some(uid) = (policy.first_id..=policy.last_id).find(free) else {
            return Err(format!(
                "no free id from {} to {} ({})",
                policy.first_id, policy.last_id, policy.from
            ));
        };
        let gid = if policy.user_groups {
            uid
        } else {
            policy.users_gid
        };
        let home = format!("{}/{u}", policy.home_root);
        append_line(
            &mut self.passwd,
            &format!("{u}:x:{uid}:{gid}::{home}:{}", policy.shell),
        );
        if let Some(sh) = self.shadow.as_mut() {
            append_line(sh, &format!("{u}:!:{days}:0:99999:7:::"));
        }
        if policy.user_groups {
            append_line(&mut self.group, &format!("{u}:x:{gid}:"));
            if let Some(gs) = self.gshadow.as_mut() {
                append_line(gs, &format!("{u}:!::"));
            }
        }
        Ok(NewUser { uid, gid, home })
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

/// The skeleton directory's entries as edits of a new home, owned by `uid:gid`, modes kept.
/// Hard links, devices, fifos and sockets are left out (and said, in `warnings`).
pub(super) fn skel_copy(
    b: &mut Browser<'_>,
    tree: &starling_store::ObjectId,
    uid: u32,
    gid: u32,
    at: &str,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<Vec<u8>, Edit>> {
    let own = |m: &Meta| Meta {
        uid,
        gid,
        ..m.clone()
    };
    let mut out = BTreeMap::new();
    let t = b.tree(tree)?;
    for e in &t.entries {
        let name = e.name.to_vec();
        let shown = format!("{at}/{}", String::from_utf8_lossy(&name));
        let edit = match &e.node {
            Node::File { meta, size, data } => Edit::Put(Node::File {
                meta: own(meta),
                size: *size,
                data: data.clone(),
            }),
            Node::Symlink { meta, target } => Edit::Put(Node::Symlink {
                meta: own(meta),
                target: target.clone(),
            }),
            Node::Dir { meta, tree } => Edit::Dir {
                meta: own(meta),
                set_meta: true,
                children: skel_copy(b, tree, uid, gid, &shown, warnings)?,
            },
            other => {
                warnings.push(format!(
                    "{shown}: a {} is not copied into home directories",
                    other.kind_name()
                ));
                continue;
            }
        };
        out.insert(name, edit);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian_accounts() -> Accounts {
        Accounts {
            passwd: "root:x:0:0:root:/root:/bin/bash\n\
                     nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                     first:x:1000:1000::/home/first:/bin/bash"
                .into(),
            group: "root:x:0:\nusers:x:100:\nstaff:x:1001:\n".into(),
            shadow: Some("root:*:19000:0:99999:7:::\n".into()),
            gshadow: Some("root:*::\nusers:*::\n".into()),
        }
    }

    #[test]
    fn a_new_user_gets_the_first_id_free_in_both_files() {
        let mut a = debian_accounts();
        let p = Policy::default();
        // 1000 is a user, 1001 a group: 1002 is the first free for both.
        let u = a.add_user("alice", 19_500, &p).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1002, 1002, "/home/alice"));
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
        assert_eq!(
            a.gshadow.as_deref().and_then(|s| s.lines().last()),
            Some("alice:!::")
        );
        assert_eq!(a.add_user("bob", 19_500, &p).unwrap().uid, 1003);
    }

    #[test]
    fn an_existing_user_or_group_is_refused_and_nothing_changes() {
        let mut a = debian_accounts();
        let before = a.clone();
        let p = Policy::default();
        let e = a.add_user("first", 1, &p).unwrap_err();
        assert_eq!(e, "user first exists already (uid 1000)");
        let e = a.add_user("staff", 1, &p).unwrap_err();
        assert!(e.starts_with("group staff exists already"), "{e}");
        assert_eq!(a, before);
    }

    #[test]
    fn a_full_range_is_refused() {
        let mut a = debian_accounts();
        let p = Policy {
            first_id: 1000,
            last_id: 1001,
            ..Policy::default()
        };
        let e = a.add_user("x", 1, &p).unwrap_err();
        assert_eq!(e, "no free id from 1000 to 1001 (defaults)");
    }

    #[test]
    fn without_shadow_only_passwd_and_group_change() {
        let mut a = Accounts {
            passwd: String::new(),
            group: String::new(),
            shadow: None,
            gshadow: None,
        };
        a.add_user("x", 1, &Policy::default()).unwrap();
        assert_eq!(a.passwd, "x:x:1000:1000::/home/x:/bin/bash\n");
        assert_eq!(a.group, "x:x:1000:\n");
        assert_eq!((a.shadow, a.gshadow), (None, None));
    }

    #[test]
    fn adduser_conf_sets_the_rules() {
        let conf = "# comment\nDSHELL=/bin/zsh\nDHOME=/srv/home/\nDIR_MODE=0750\n\
                    FIRST_UID=2000\nLAST_UID=2999\nUSERGROUPS=no\nUSERS_GID=100\nSKEL=\"\"\n";
        let p = Policy::of(Some(conf), Some("UID_MIN 5000\n"), None);
        assert_eq!(
            (
                p.shell.as_str(),
                p.home_root.as_str(),
                p.dir_mode,
                p.first_id,
                p.last_id,
                p.user_groups,
                p.skel.as_deref(),
            ),
            ("/bin/zsh", "/srv/home", 0o750, 2000, 2999, false, None)
        );
        // No user group: the user joins USERS_GID, group and gshadow stay as they were.
        let mut a = debian_accounts();
        let g = a.group.clone();
        let u = a.add_user("staff", 1, &p).unwrap();
        assert_eq!((u.uid, u.gid), (2000, 100));
        assert_eq!(a.group, g);
        assert_eq!(
            a.passwd.lines().last(),
            Some("staff:x:2000:100::/srv/home/staff:/bin/zsh")
        );
    }

    #[test]
    fn login_defs_rules_when_there_is_no_adduser_conf() {
        let defs = "UID_MIN\t\t 1500\nUID_MAX 1600\nUMASK 077\n";
        let p = Policy::of(None, Some(defs), Some("SHELL=/bin/ash\nSKEL=/etc/skel\n"));
        assert_eq!(
            (p.first_id, p.last_id, p.dir_mode, p.shell.as_str()),
            (1500, 1600, 0o700, "/bin/ash")
        );
        let p = Policy::of(None, Some("HOME_MODE 0750\nUMASK 022\n"), None);
        assert_eq!((p.dir_mode, p.shell.as_str()), (0o750, "/bin/sh"));
        // No configuration at all: adduser's defaults.
        assert_eq!(Policy::of(None, None, None), Policy::default());
    }
}
