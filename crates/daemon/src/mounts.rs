//! The daemon's mounts: creating one (resolve the image, open its source, mount it lazily),
//! listing, unmounting, and cleaning up after a daemon that died.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use starling_fs::record::Recorder;
use starling_fs::{Counters, ImageFs, Mounted, Objects};
use starling_image::reference::ImageRef;
use starling_image::walk::Walker;
use starling_store::{ObjectId, ObjectSource, Store, MAX_MANIFEST};

use crate::api::{CommitInfo, CommitRequest, MountInfo, MountRequest, Source};
use crate::sources::HostObjects;
use crate::DaemonError;

/// FUSE serving threads per mount: reads wait on disk or network, so more than cores.
const FS_THREADS: usize = 8;

pub struct MountEntry {
    pub info: MountInfo,
    pub mounted: Mounted,
    pub counters: Arc<Counters>,
    pub recorder: Option<Arc<Recorder>>,
    pub objects: Arc<dyn ObjectSource>,
    pub version: ObjectId,
    /// For a writable mount: the layer directory (`lower/` the lazy image, `upper/`, `work/`).
    pub layer: Option<PathBuf>,
}

impl MountEntry {
    pub fn info(&self) -> MountInfo {
        let mut i = self.info.clone();
        i.counters = self.counters.values();
        i.live = self.mounted.is_live();
        i
    }
}

/// `mounts.json`: what a restarted daemon detaches, in order.
#[derive(serde::Serialize, serde::Deserialize)]
struct MountList {
    format: u32,
    detach: Vec<PathBuf>,
}

const MOUNT_LIST_FORMAT: u32 = 1;

pub struct Mounts {
    pub table: Mutex<BTreeMap<PathBuf, MountEntry>>,
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
            state_file: state.join("mounts.json"),
            layers: state.join("layers"),
            next_layer: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, MountEntry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, table: &BTreeMap<PathBuf, MountEntry>) {
        // In detach order: a writable mount's overlay before its lazy lower layer.
        let mut list: Vec<PathBuf> = Vec::new();
        for (mp, e) in table {
            list.push(mp.clone());
            if e.layer.is_some() {
                list.push(e.mounted.mountpoint.clone());
            }
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
        let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut cleaned = Vec::new();
        for mp in list {
            let needle = format!(" {} ", mp.display());
            let is_ours = mounted.lines().any(|l| {
                l.contains(&needle) && (l.contains("fuse.starling") || l.contains(" overlay "))
            });
            if is_ours && rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH).is_ok() {
                cleaned.push(mp);
            }
        }
        let _ = std::fs::remove_file(&self.state_file);
        // Upper layers of writable mounts are discarded with their mounts.
        let _ = std::fs::remove_dir_all(&self.layers);
        cleaned
    }

    pub fn list(&self) -> Vec<MountInfo> {
        let mut t = self.lock();
        // Mounts unmounted from outside are dropped from the table.
        let dead: Vec<PathBuf> = t
            .iter()
            .filter(|(_, e)| !e.mounted.is_live())
            .map(|(k, _)| k.clone())
            .collect();
        for d in &dead {
            if let Some(e) = t.remove(d) {
                save_record(&e);
            }
        }
        if !dead.is_empty() {
            self.persist(&t);
        }
        t.values().map(MountEntry::info).collect()
    }

    pub fn mount(&self, req: MountRequest, host: &HostObjects) -> Result<MountInfo, DaemonError> {
        let canon = std::fs::canonicalize(&req.mountpoint).unwrap_or(req.mountpoint.clone());
        if self.lock().contains_key(&canon) {
            return Err(DaemonError::Conflict(format!(
                "{} is already a Starling mount",
                canon.display()
            )));
        }
        let mp = starling_fs::session::check_mountpoint(&req.mountpoint)
            .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
        let counters = Arc::new(Counters::default());
        let mut offline = None;
        let (objects, version, source, image): (Arc<dyn ObjectSource>, _, _, _) = match &req.source
        {
            Source::Store { store, image } => {
                let st = Store::open(store).map_err(|e| DaemonError::BadRequest(e.to_string()))?;
                let r =
                    ImageRef::parse(image).map_err(|e| DaemonError::BadRequest(e.to_string()))?;
                let resolved = starling_image::versions::resolve(&st, &r)
                    .map_err(|e| DaemonError::NotFound(e.to_string()))?;
                (
                    Arc::new(st),
                    resolved.id,
                    format!("store:{}", store.display()),
                    image.clone(),
                )
            }
            Source::Repo { url, image, root } => {
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
            Some(p) => Some(starling_fs::record::load(p).map_err(DaemonError::BadRequest)?),
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
        let (mounted, layer) = if req.writable {
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
            let mut mounted = starling_fs::mount(fs, &lower, FS_THREADS)
                .map_err(|e| DaemonError::Internal(e.to_string()))?;
            // overlayfs shows the upper root's own attributes: make them the image root's.
            if let Err(e) = copy_dir_meta(&lower, &upper) {
                let _ = mounted.unmount();
                let _ = std::fs::remove_dir_all(&layer);
                return Err(DaemonError::Internal(format!(
                    "preparing the upper layer: {e}"
                )));
            }
            let opts = std::ffi::CString::new(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            ))
            .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
            if let Err(e) = rustix::mount::mount(
                "overlay",
                &mp,
                "overlay",
                // As the lazy mount under it (fuse-backend-rs mounts nosuid,nodev): an image
                // grants no privileges and opens no devices on the host.
                rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
                Some(opts.as_c_str()),
            ) {
                let _ = mounted.unmount();
                let _ = std::fs::remove_dir_all(&layer);
                return Err(DaemonError::Internal(format!(
                    "overlay mount at {}: {e}",
                    mp.display()
                )));
            }
            (mounted, Some(layer))
        } else {
            let mounted = starling_fs::mount(fs, &mp, FS_THREADS)
                .map_err(|e| DaemonError::Internal(e.to_string()))?;
            (mounted, None)
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
        };
        tracing::info!(
            mountpoint = %mp.display(),
            image = %info.image,
            version = %info.version,
            source = %info.source,
            writable = info.writable,
            "mounted"
        );
        let mut t = self.lock();
        t.insert(
            mp,
            MountEntry {
                info: info.clone(),
                mounted,
                counters,
                recorder,
                objects,
                version,
                layer,
            },
        );
        self.persist(&t);
        Ok(info)
    }

    pub fn unmount(&self, mountpoint: &Path) -> Result<MountInfo, DaemonError> {
        let mp = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
        let mut t = self.lock();
        let mut e = t.remove(&mp).ok_or_else(|| {
            DaemonError::NotFound(format!("{} is not a Starling mount", mp.display()))
        })?;
        let info = e.info();
        if let Err(err) = unmount_entry(&mp, &mut e) {
            // Busy (a process has it open or as its cwd): it stays mounted.
            t.insert(mp, e);
            return Err(DaemonError::Conflict(format!(
                "{err} (is a process still using it?)"
            )));
        }
        save_record(&e);
        self.persist(&t);
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
        let mut t = self.lock();
        for (mp, mut e) in std::mem::take(&mut *t) {
            save_record(&e);
            if unmount_entry(&mp, &mut e).is_err() {
                let _ = rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH);
                let lower = e.mounted.mountpoint.clone();
                let _ = rustix::mount::unmount(&lower, rustix::mount::UnmountFlags::DETACH);
            }
        }
        self.persist(&t);
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

/// Unmounts a mount (a writable one: its overlay, then the lazy lower layer, then the
/// discarded upper layer's files).
fn unmount_entry(mp: &Path, e: &mut MountEntry) -> Result<(), String> {
    if let Some(layer) = &e.layer {
        rustix::mount::unmount(mp, rustix::mount::UnmountFlags::empty())
            .map_err(|err| format!("unmounting {}: {err}", mp.display()))?;
        e.mounted.unmount().map_err(|err| err.to_string())?;
        let _ = std::fs::remove_dir_all(layer);
        Ok(())
    } else {
        e.mounted.unmount().map_err(|err| err.to_string())
    }
}

fn save_record(e: &MountEntry) {
    if let (Some(r), Some(path)) = (&e.recorder, &e.info.record) {
        if let Err(err) = r.save(path) {
            tracing::error!(file = %path.display(), error = %err, "could not write the access record");
        }
    }
}

impl Mounts {
    /// Stores the changes of a writable mount as a new version in `req.store` (copying the
    /// mounted image's objects there first if it lacks them).
    pub fn commit(&self, req: CommitRequest) -> Result<CommitInfo, DaemonError> {
        let mp = std::fs::canonicalize(&req.mountpoint).unwrap_or(req.mountpoint.clone());
        let (objects, base, upper) = {
            let t = self.lock();
            let e = t.get(&mp).ok_or_else(|| {
                DaemonError::NotFound(format!("{} is not a Starling mount", mp.display()))
            })?;
            let upper = e.layer.as_ref().map(|l| l.join("upper")).ok_or_else(|| {
                DaemonError::BadRequest(format!(
                    "{} is read-only (mount it with --writable to commit changes)",
                    mp.display()
                ))
            })?;
            (e.objects.clone(), e.version, upper)
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
