//! The daemon's mounts: creating one (resolve the image, open its source, mount it lazily),
//! listing, unmounting, and cleaning up after a daemon that died.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use starling_fs::mountpoint::{self, HeldMount, Pinned, FUSE_TYPE, OVERLAY_TYPE};
use starling_fs::record::Recorder;
use starling_fs::{Counters, ImageFs, Mounted, Objects, Owner};
use starling_image::reference::ImageRef;
use starling_image::walk::Walker;
use starling_store::{ObjectId, ObjectSource, Store, MAX_MANIFEST};

use crate::api::{CommitInfo, CommitRequest, MountInfo, MountRequest, Source};
use crate::caller::{as_user, Caller};
use crate::sources::HostObjects;
use crate::DaemonError;

/// FUSE serving threads per mount: reads wait on disk or network, so more than cores.
const FS_THREADS: usize = 8;

/// The most mounts one user other than the daemon's and root may hold (each costs the
/// daemon its serving threads).
pub const USER_MOUNTS: usize = 32;

/// The most requests one such user may have under way at once (each holds a daemon thread
/// for as long as what they name takes to answer).
pub const USER_REQUESTS: usize = 4;

/// A place taken by [`Mounts::admit`], given back on drop.
pub struct Admitted<'a> {
    mounts: &'a Mounts,
    uid: Option<u32>,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(uid) = self.uid {
            let mut f = self
                .mounts
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = f.get_mut(&uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    f.remove(&uid);
                }
            }
        }
    }
}

pub struct MountEntry {
    pub info: MountInfo,
    pub mounted: Mounted,
    pub counters: Arc<Counters>,
    pub recorder: Option<Arc<Recorder>>,
    pub objects: Arc<dyn ObjectSource>,
    pub version: ObjectId,
    /// For a writable mount: the layer directory (`lower/` the lazy image, `upper/`, `work/`).
    pub layer: Option<PathBuf>,
    /// A writable mount's overlay, held (the lazy image is `mounted`, below it).
    pub overlay: Option<HeldMount>,
    /// Who made it: what they named was opened with their rights, and only they (and
    /// administrators) may unmount it.
    pub owner: Caller,
}

impl MountEntry {
    pub fn info(&self) -> MountInfo {
        let mut i = self.info.clone();
        i.counters = self.counters.values();
        i.live = self.mounted.is_live();
        i
    }

    /// The id of the mount a program sees at the mountpoint.
    fn top_id(&self) -> u64 {
        self.overlay
            .as_ref()
            .map_or(self.mounted.mount_id, |o| o.id)
    }
}

/// `mounts.json`: what a restarted daemon detaches, in order.
#[derive(serde::Serialize, serde::Deserialize)]
struct MountList {
    format: u32,
    detach: Vec<Recorded>,
}

/// A mount as recorded: detached after a crash only if the kernel still shows this id at
/// this path with this type (a path alone could by then lead to someone else's mount).
#[derive(serde::Serialize, serde::Deserialize)]
struct Recorded {
    path: PathBuf,
    id: u64,
    kind: String,
}

const MOUNT_LIST_FORMAT: u32 = 2;

pub struct Mounts {
    /// Keyed by the id of the mount programs see (two mounts made at one path, its parent
    /// renamed in between, are two entries).
    pub table: Mutex<BTreeMap<u64, MountEntry>>,
    /// Requests under way per user other than the administrators.
    inflight: Mutex<std::collections::HashMap<u32, usize>>,
    /// Mountpoints the daemon holds, persisted so a restart can clean up after a crash.
    state_file: PathBuf,
    layers: PathBuf,
    next_layer: std::sync::atomic::AtomicU64,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Mounts {
    pub fn new(state: &Path) -> Mounts {
        Mounts {
            table: Mutex::new(BTreeMap::new()),
            inflight: Mutex::new(std::collections::HashMap::new()),
            state_file: state.join("mounts.json"),
            layers: state.join("layers"),
            next_layer: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, MountEntry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, table: &BTreeMap<u64, MountEntry>) {
        // In detach order: a writable mount's overlay before its lazy lower layer.
        let mut list: Vec<Recorded> = Vec::new();
        for e in table.values() {
            if let Some(o) = &e.overlay {
                list.push(Recorded {
                    path: e.info.mountpoint.clone(),
                    id: o.id,
                    kind: OVERLAY_TYPE.into(),
                });
            }
            list.push(Recorded {
                path: e.mounted.mountpoint.clone(),
                id: e.mounted.mount_id,
                kind: FUSE_TYPE.into(),
            });
        }
        let tmp = self.state_file.with_extension("tmp");
        let ok = serde_json::to_vec(&MountList {
            format: MOUNT_LIST_FORMAT,
            detach: list,
        })
        .ok()
        .and_then(|b| std::fs::write(&tmp, b).ok())
        .and_then(|_| std::fs::rename(&tmp, &self.state_file).ok());
        if ok.is_none() {
            tracing::error!(file = %self.state_file.display(), "could not write the mount list");
        }
    }

    /// Detaches mounts a previous daemon left behind (it died without unmounting: their
    /// file systems answer nothing). Returns the mountpoints cleaned.
    pub fn clean_stale(&self) -> Vec<PathBuf> {
        let Ok(b) = std::fs::read(&self.state_file) else {
            return Vec::new();
        };
        let list = match serde_json::from_slice::<MountList>(&b) {
            Ok(l) if l.format == MOUNT_LIST_FORMAT => l.detach,
            _ => {
                tracing::warn!(
                    file = %self.state_file.display(),
                    "not a mount list of format {MOUNT_LIST_FORMAT}; mounts a previous daemon \
                     left are not cleaned"
                );
                return Vec::new();
            }
        };
        let mut cleaned = Vec::new();
        for r in list {
            if mountpoint::detach_left(r.id, &r.path, &r.kind).is_ok_and(|d| d) {
                cleaned.push(r.path);
            }
        }
        let _ = std::fs::remove_file(&self.state_file);
        // Upper layers of writable mounts are discarded with their mounts.
        let _ = std::fs::remove_dir_all(&self.layers);
        cleaned
    }

    /// The mounts `caller` may see: all of them for an administrator (and other hosts),
    /// their own for another user.
    pub fn list_for(&self, caller: Option<&Caller>) -> Vec<MountInfo> {
        self.reap();
        let mine = |e: &&MountEntry| match caller {
            Some(c @ Caller::User { .. }) => e.owner.uid() == c.uid(),
            _ => true,
        };
        self.lock()
            .values()
            .filter(mine)
            .map(MountEntry::info)
            .collect()
    }

    pub fn list(&self) -> Vec<MountInfo> {
        self.list_for(None)
    }

    /// Drops the mounts unmounted from outside from the table, writing their access records
    /// once the table is free again (a record is written with its owner's rights, which may
    /// take as long as their file system does).
    fn reap(&self) {
        let dead: Vec<MountEntry> = {
            let mut t = self.lock();
            let ids: Vec<u64> = t
                .iter()
                .filter(|(_, e)| !e.mounted.is_live())
                .map(|(k, _)| *k)
                .collect();
            let dead: Vec<MountEntry> = ids.iter().filter_map(|k| t.remove(k)).collect();
            if !dead.is_empty() {
                self.persist(&t);
            }
            dead
        };
        for e in &dead {
            save_record(e);
        }
    }

    /// Takes one of at most [`USER_REQUESTS`] places for a request of `caller`'s (another
    /// user's requests wait on what they name, which they control); administrators always get
    /// one.
    pub fn admit(&self, caller: &Caller) -> Result<Admitted<'_>, DaemonError> {
        let Caller::User { uid, .. } = *caller else {
            return Ok(Admitted {
                mounts: self,
                uid: None,
            });
        };
        let mut f = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(uid).or_insert(0);
        if *n >= USER_REQUESTS {
            return Err(DaemonError::Forbidden(format!(
                "user {uid} has {n} requests under way, the most one user may; wait for them"
            )));
        }
        *n += 1;
        Ok(Admitted {
            mounts: self,
            uid: Some(uid),
        })
    }

    /// Mounts what `req` names for `caller`. An administrator's request is done with the
    /// daemon's rights. Another user's: read-only, onto an empty directory they own on an
    /// ordinary file system, from a store they can read (opened and read with their rights)
    /// or a repository the configuration pins, at most [`USER_MOUNTS`] of them.
    pub fn mount(
        &self,
        req: MountRequest,
        host: &HostObjects,
        caller: &Caller,
    ) -> Result<MountInfo, DaemonError> {
        let forbidden = |why: String| DaemonError::Forbidden(why);
        let acting = |e: std::io::Error| DaemonError::Internal(e.to_string());
        if let Caller::User { uid, .. } = *caller {
            if req.writable {
                return Err(forbidden(format!(
                    "user {uid}: writable mounts are for starlingd's own user and root; mount \
                     read-only (without --writable)"
                )));
            }
            self.check_user_mounts(&self.lock(), uid)?;
        }
        // The mountpoint, pinned once with the caller's rights: everything after works on
        // that directory, whatever its name leads to by then.
        let at = as_user(caller, || Pinned::open(&req.mountpoint))
            .map_err(acting)?
            .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
        if let Caller::User { uid, .. } = *caller {
            if at.uid != uid {
                return Err(forbidden(format!(
                    "mountpoint {}: the directory is user {}'s, not user {uid}'s: mount onto a \
                     directory of your own",
                    at.shown.display(),
                    at.uid
                )));
            }
            at.check_user_mountable()
                .map_err(|e| forbidden(e.to_string()))?;
        }
        let (under, is_root) = at
            .mount_id()
            .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
        if is_root && self.lock().values().any(|e| e.top_id() == under) {
            return Err(DaemonError::Conflict(format!(
                "{} is already a Starling mount",
                at.shown.display()
            )));
        }
        as_user(caller, || at.check_empty())
            .map_err(acting)?
            .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
        let mp = at.shown.clone();
        let counters = Arc::new(Counters::default());
        let mut offline = None;
        let (objects, version, source, image): (Arc<dyn ObjectSource>, _, _, _) = match &req.source
        {
            Source::Store { store, image } => {
                let opened = as_user(caller, || {
                    let st =
                        Store::open(store).map_err(|e| DaemonError::BadRequest(e.to_string()))?;
                    let r = ImageRef::parse(image)
                        .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
                    let resolved = starling_image::versions::resolve(&st, &r)
                        .map_err(|e| DaemonError::NotFound(e.to_string()))?;
                    Ok::<_, DaemonError>((st, resolved.id))
                })
                .map_err(acting)?;
                let (st, id) = opened.map_err(|e| match (caller, e) {
                    (Caller::User { uid, .. }, DaemonError::BadRequest(why)) => forbidden(format!(
                        "user {uid} cannot mount from store {}: {why}",
                        store.display()
                    )),
                    (_, e) => e,
                })?;
                let objects: Arc<dyn ObjectSource> = match caller {
                    Caller::Admin { .. } => Arc::new(st),
                    Caller::User { .. } => Arc::new(UserStore {
                        store: st,
                        caller: *caller,
                    }),
                };
                (
                    objects,
                    id,
                    format!("store:{}", store.display()),
                    image.clone(),
                )
            }
            Source::Repo { url, image, root } => {
                if let Caller::User { uid, .. } = *caller {
                    if !host.is_pinned(url) {
                        let file = host.config_file().map_or_else(
                            || crate::config::DEFAULT_CONFIG.to_string(),
                            |f| f.display().to_string(),
                        );
                        return Err(forbidden(format!(
                            "user {uid}: repository {url} is not one this host pins: users mount \
                             from the repositories {file} lists with their root ([[repository]])"
                        )));
                    }
                    if root.is_some() {
                        return Err(forbidden(format!(
                            "user {uid}: this host pins the root of {url}; leave --root out"
                        )));
                    }
                }
                let access = host
                    .repository(url, root.as_deref())
                    .map_err(DaemonError::BadRequest)?;
                let r =
                    ImageRef::parse(image).map_err(|e| DaemonError::BadRequest(e.to_string()))?;
                let res = crate::vms::resolve_repo(host, &access, &r)?;
                offline = res.offline;
                let id = res.version;
                (
                    host.remote(&access)
                        .map_err(|e| DaemonError::BadRequest(e.to_string()))?,
                    id,
                    url.clone(),
                    image.clone(),
                )
            }
        };
        let prefetch = match &req.prefetch {
            Some(p) => Some(
                as_user(caller, || starling_fs::record::load(p))
                    .map_err(acting)?
                    .map_err(DaemonError::BadRequest)?,
            ),
            None => None,
        };
        let recorder = req.record.as_ref().map(|_| Arc::new(Recorder::default()));
        let label = format!("{} ({image})", mp.display());
        let mount_objects = Arc::new(Objects::new(objects.clone(), counters.clone()));
        let fs = ImageFs::new(
            mount_objects.clone(),
            &version,
            counters.clone(),
            recorder.clone(),
            label,
        )
        .map_err(|e| DaemonError::Upstream(e.to_string()))?;
        if let Some(list) = prefetch {
            mount_objects.prefetch(&list);
        }
        let owner = match *caller {
            Caller::Admin { .. } => Owner {
                uid: 0,
                gid: 0,
                allow_other: true,
            },
            Caller::User { uid, gid } => Owner {
                uid,
                gid,
                allow_other: mountpoint::users_may_allow_other(),
            },
        };
        let (mounted, layer, overlay) = if req.writable {
            let n = self
                .next_layer
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let layer = self.layers.join(format!("{}-{n}", std::process::id()));
            let (lower, upper, work) =
                (layer.join("lower"), layer.join("upper"), layer.join("work"));
            for d in [&lower, &upper, &work] {
                std::fs::create_dir_all(d)
                    .map_err(|e| DaemonError::Internal(format!("{}: {e}", d.display())))?;
            }
            let mut mounted = Pinned::open(&lower)
                .and_then(|l| starling_fs::mount(fs, &l, owner, FS_THREADS))
                .map_err(|e| DaemonError::Internal(e.to_string()))?;
            // overlayfs shows the upper root's own attributes: make them the image root's.
            let over = copy_dir_meta(&lower, &upper)
                .map_err(|e| format!("preparing the upper layer: {e}"))
                .and_then(|()| {
                    mountpoint::mount_overlay(&at, &lower, &upper, &work).map_err(|e| e.to_string())
                });
            match over {
                Ok(m) => (mounted, Some(layer), Some(m)),
                Err(e) => {
                    let _ = mounted.unmount();
                    let _ = std::fs::remove_dir_all(&layer);
                    return Err(DaemonError::Internal(e));
                }
            }
        } else {
            let mounted = starling_fs::mount(fs, &at, owner, FS_THREADS)
                .map_err(|e| DaemonError::Internal(e.to_string()))?;
            (mounted, None, None)
        };
        let info = MountInfo {
            mountpoint: mp.clone(),
            source,
            image,
            version: version.to_hex(),
            started_unix: now_unix(),
            live: true,
            counters: counters.values(),
            record: req.record.clone(),
            writable: req.writable,
            upper: layer.as_ref().map(|l| l.join("upper")),
            note: offline,
            owner: caller.uid(),
        };
        tracing::info!(
            mountpoint = %mp.display(),
            image = %info.image,
            version = %info.version,
            source = %info.source,
            writable = info.writable,
            owner = info.owner,
            "mounted"
        );
        let mut t = self.lock();
        if let Caller::User { uid, .. } = *caller {
            // Counted again where the entry goes in: requests made side by side each saw room.
            if let Err(e) = self.check_user_mounts(&t, uid) {
                drop(t);
                let mut mounted = mounted;
                let _ = mounted.unmount();
                return Err(e);
            }
        }
        let entry = MountEntry {
            info: info.clone(),
            mounted,
            counters,
            recorder,
            objects,
            version,
            layer,
            overlay,
            owner: *caller,
        };
        t.insert(entry.top_id(), entry);
        self.persist(&t);
        Ok(info)
    }

    /// Refuses another mount to user `uid` once they hold [`USER_MOUNTS`].
    fn check_user_mounts(
        &self,
        t: &BTreeMap<u64, MountEntry>,
        uid: u32,
    ) -> Result<(), DaemonError> {
        let held = t.values().filter(|e| e.owner.uid() == uid).count();
        if held >= USER_MOUNTS {
            return Err(DaemonError::Forbidden(format!(
                "user {uid} holds {held} mounts, the most one user may; unmount one first"
            )));
        }
        Ok(())
    }

    /// The id of the mount a program sees at `path`, resolved with `caller`'s rights before
    /// the table is locked (a path through a file system of theirs may take its time).
    fn resolve(path: &Path, caller: &Caller) -> Result<u64, DaemonError> {
        let not_ours =
            || DaemonError::NotFound(format!("{} is not a Starling mount", path.display()));
        let (id, root) = as_user(caller, || mountpoint::mount_at(path))
            .map_err(|e| DaemonError::Internal(e.to_string()))?
            .map_err(|e| DaemonError::NotFound(format!("{}: {e}", path.display())))?;
        if root {
            Ok(id)
        } else {
            Err(not_ours())
        }
    }

    /// The entry of mount `id` (at `path`), refused if it is not `caller`'s to change.
    fn entry_of<'t>(
        t: &'t BTreeMap<u64, MountEntry>,
        id: u64,
        path: &Path,
        caller: &Caller,
    ) -> Result<&'t MountEntry, DaemonError> {
        let e = t.get(&id).filter(|e| e.mounted.is_live()).ok_or_else(|| {
            DaemonError::NotFound(format!("{} is not a Starling mount", path.display()))
        })?;
        if let Caller::User { uid, .. } = *caller {
            if e.owner.uid() != uid {
                return Err(DaemonError::Forbidden(format!(
                    "{} is user {}'s mount, not user {uid}'s",
                    path.display(),
                    e.owner.uid()
                )));
            }
        }
        Ok(e)
    }

    pub fn unmount(&self, mountpoint: &Path, caller: &Caller) -> Result<MountInfo, DaemonError> {
        let id = Self::resolve(mountpoint, caller)?;
        let mut e = {
            let mut t = self.lock();
            Self::entry_of(&t, id, mountpoint, caller)?;
            let Some(e) = t.remove(&id) else {
                return Err(DaemonError::NotFound(format!(
                    "{} is not a Starling mount",
                    mountpoint.display()
                )));
            };
            e
        };
        let info = e.info();
        if let Err(err) = unmount_entry(&mut e) {
            // Busy (a process has it open or as its cwd): it stays mounted.
            self.lock().insert(id, e);
            return Err(DaemonError::Conflict(format!(
                "{err} (is a process still using it?)"
            )));
        }
        self.persist(&self.lock());
        save_record(&e);
        let mp = &info.mountpoint;

        let c = e.counters.values();
        tracing::info!(
            mountpoint = %mp.display(),
            image = %info.image,
            served = c.served,
            fetched = c.fetched,
            errors = c.errors,
            "unmounted"
        );
        Ok(info)
    }

    /// Unmounts everything (daemon shutdown); busy mounts are detached lazily.
    pub fn unmount_all(&self) {
        let all = std::mem::take(&mut *self.lock());
        self.persist(&self.lock());
        for (_, mut e) in all {
            if unmount_entry(&mut e).is_err() {
                if let Some(o) = e.overlay.take() {
                    let _ = o.detach();
                }
                let _ = e.mounted.unmount();
            }
            save_record(&e);
        }
    }
}

/// Gives directory `to` the mode, owner, times and xattrs of directory `from`.
fn copy_dir_meta(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{self as rfs, AtFlags, Timestamps, CWD};
    let st = rfs::stat(from)?;
    rfs::chown(
        to,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )?;
    rfs::chmod(to, rfs::Mode::from_raw_mode(st.st_mode & 0o7777))?;
    let mut names = vec![0u8; 64 << 10];
    // An image without extended attributes says so once (ENOSYS, which the kernel turns
    // into EOPNOTSUPP for every later call): nothing to copy.
    let n = match rfs::listxattr(from, &mut names) {
        Err(rustix::io::Errno::OPNOTSUPP) => 0,
        r => r?,
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
        let mut value = vec![0u8; 64 << 10];
        let len = rfs::getxattr(from, name.as_c_str(), &mut value)?;
        rfs::setxattr(to, name.as_c_str(), &value[..len], rfs::XattrFlags::empty())?;
    }
    let t = |s: i64, ns: u64| rfs::Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    rfs::utimensat(
        CWD,
        to,
        &Timestamps {
            last_access: t(st.st_atime, st.st_atime_nsec as u64),
            last_modification: t(st.st_mtime, st.st_mtime_nsec as u64),
        },
        AtFlags::empty(),
    )?;
    Ok(())
}

/// Unmounts a mount (a writable one: its overlay, unless in use, then the lazy lower layer,
/// then the discarded upper layer's files).
fn unmount_entry(e: &mut MountEntry) -> Result<(), String> {
    if let Some(o) = e.overlay.take() {
        // Not lazily: the upper layer goes with it, which a program still in it would lose.
        if let Err((held, err)) = o.unmount() {
            e.overlay = held;
            return Err(format!("unmounting {}: {err}", e.info.mountpoint.display()));
        }
        e.mounted.unmount().map_err(|err| err.to_string())?;
        if let Some(layer) = &e.layer {
            let _ = std::fs::remove_dir_all(layer);
        }
        Ok(())
    } else {
        e.mounted.unmount().map_err(|err| err.to_string())
    }
}

/// Writes the access record the mount was asked for, with its owner's rights.
fn save_record(e: &MountEntry) {
    if let (Some(r), Some(path)) = (&e.recorder, &e.info.record) {
        let saved = as_user(&e.owner, || r.save(path).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(err) = saved {
            tracing::error!(file = %path.display(), error = %err, "could not write the access record");
        }
    }
}

impl Mounts {
    /// Stores the changes of a writable mount as a new version in `req.store` (copying the
    /// mounted image's objects there first if it lacks them).
    pub fn commit(&self, req: CommitRequest, caller: &Caller) -> Result<CommitInfo, DaemonError> {
        let id = Self::resolve(&req.mountpoint, caller)?;
        let (objects, base, upper, mp) = {
            let t = self.lock();
            let e = Self::entry_of(&t, id, &req.mountpoint, caller)?;
            let mp = e.info.mountpoint.clone();
            let upper = e.layer.as_ref().map(|l| l.join("upper")).ok_or_else(|| {
                DaemonError::BadRequest(format!(
                    "{} is read-only (mount it with --writable to commit changes)",
                    mp.display()
                ))
            })?;
            (e.objects.clone(), e.version, upper, mp)
        };
        let (name, tag) =
            ImageRef::parse_tag(&req.image).map_err(|e| DaemonError::BadRequest(e.to_string()))?;
        let store =
            Store::open_or_init(&req.store).map_err(|e| DaemonError::BadRequest(e.to_string()))?;
        let copied = copy_image(objects.as_ref(), &base, &store)?;
        // Writes through the overlay are in the page cache of the upper file system, which
        // the commit reads directly: nothing to flush.
        let r = starling_image::overlay::commit_upper(
            &store,
            &base,
            &upper,
            &name,
            &tag,
            &format!("commit of writable mount {}", mp.display()),
        )
        .map_err(|e| DaemonError::Internal(e.to_string()))?;
        Ok(CommitInfo {
            image: format!("{name}:{tag}"),
            version: r.version.to_hex(),
            parent: base.to_hex(),
            put: r.put,
            removed: r.removed,
            copied,
        })
    }
}

/// Copies every object of version `id` that `store` lacks from `objects` (verified on the
/// way in), in one transaction. Returns how many were copied.
pub(crate) fn copy_image(
    objects: &dyn ObjectSource,
    id: &ObjectId,
    store: &Store,
) -> Result<usize, DaemonError> {
    let up = |e: starling_store::Error| DaemonError::Upstream(e.to_string());
    let io = |e: starling_store::Error| DaemonError::Internal(e.to_string());
    let txn = store.begin().map_err(io)?;
    let copy = |id: &ObjectId, len: u64| -> Result<(), DaemonError> {
        if !txn.contains(id) {
            let (env, _) = objects.envelope(id, len).map_err(up)?;
            starling_store::check_len(id, &env, len).map_err(up)?;
            txn.put_envelope(id, &env).map_err(up)?;
        }
        Ok(())
    };
    let mut walk = Walker::new([*id]);
    while let Some(level) = walk.next_level() {
        for t in &level {
            copy(t, MAX_MANIFEST)?;
            let bytes = txn.get(t).map_err(io)?;
            walk.feed(t, &bytes)
                .map_err(|e| DaemonError::Upstream(e.to_string()))?;
        }
    }
    for (c, len) in walk.finish().chunks {
        copy(&c, len)?;
    }
    let copied = txn.staged();
    txn.commit().map_err(io)?;
    Ok(copied)
}

/// A store a user mounts: every read is made with their rights, so the daemon serves them
/// only what they could read themselves (a pack file they may not read fails as it would for
/// them, whatever the store's directory lets them name).
struct UserStore {
    store: Store,
    caller: Caller,
}

impl ObjectSource for UserStore {
    fn envelope(
        &self,
        id: &ObjectId,
        max_len: u64,
    ) -> starling_store::Result<(Vec<u8>, starling_store::Origin)> {
        as_user(&self.caller, || self.store.envelope(id, max_len)).map_err(|e| {
            starling_store::Error::Io {
                path: self.store.root().to_path_buf(),
                source: e,
            }
        })?
    }

    fn describe(&self) -> String {
        format!("{} (as user {})", self.store.describe(), self.caller.uid())
    }
}
