//! The daemon's mounts: creating one (resolve the image, open its source, mount it lazily),
//! listing, unmounting, and cleaning up after a daemon that died.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use starling_fs::record::Recorder;
use starling_fs::{Counters, ImageFs, LocalObjects, Mounted, Objects, RemoteObjects};
use starling_image::reference::ImageRef;
use starling_repo::cache::HostCache;
use starling_repo::pull::{self, ClientOptions, Remote};
use starling_store::Store;

use crate::api::{MountInfo, MountRequest, Source};
use crate::DaemonError;

const FS_THREADS: usize = 4;

pub struct MountEntry {
    pub info: MountInfo,
    pub mounted: Mounted,
    pub counters: Arc<Counters>,
    pub recorder: Option<Arc<Recorder>>,
}

impl MountEntry {
    pub fn info(&self) -> MountInfo {
        let mut i = self.info.clone();
        i.counters = self.counters.values();
        i.live = self.mounted.is_live();
        i
    }
}

pub struct Mounts {
    pub table: Mutex<BTreeMap<PathBuf, MountEntry>>,
    /// Mountpoints the daemon holds, persisted so a restart can clean up after a crash.
    state_file: PathBuf,
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
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, MountEntry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, table: &BTreeMap<PathBuf, MountEntry>) {
        let list: Vec<&PathBuf> = table.keys().collect();
        let tmp = self.state_file.with_extension("tmp");
        let ok = serde_json::to_vec(&list)
            .ok()
            .and_then(|b| std::fs::write(&tmp, b).ok())
            .and_then(|_| std::fs::rename(&tmp, &self.state_file).ok());
        if ok.is_none() {
            eprintln!("starlingd: could not write {}", self.state_file.display());
        }
    }

    /// Detaches mounts a previous daemon left behind (it died without unmounting: their
    /// file systems answer nothing). Returns the mountpoints cleaned.
    pub fn clean_stale(&self) -> Vec<PathBuf> {
        let Ok(b) = std::fs::read(&self.state_file) else {
            return Vec::new();
        };
        let list: Vec<PathBuf> = serde_json::from_slice(&b).unwrap_or_default();
        let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut cleaned = Vec::new();
        for mp in list {
            let needle = format!(" {} ", mp.display());
            let is_ours = mounted
                .lines()
                .any(|l| l.contains(&needle) && l.contains("fuse.starling"));
            if is_ours && rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH).is_ok() {
                cleaned.push(mp);
            }
        }
        let _ = std::fs::remove_file(&self.state_file);
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

    pub fn mount(
        &self,
        req: MountRequest,
        cache: &Arc<HostCache>,
        opts: &ClientOptions,
    ) -> Result<MountInfo, DaemonError> {
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
        let (objects, version, source, image): (Arc<dyn Objects>, _, _, _) = match &req.source {
            Source::Store { store, image } => {
                let st = Store::open(store).map_err(|e| DaemonError::BadRequest(e.to_string()))?;
                let r =
                    ImageRef::parse(image).map_err(|e| DaemonError::BadRequest(e.to_string()))?;
                let resolved = starling_image::versions::resolve(&st, &r)
                    .map_err(|e| DaemonError::NotFound(e.to_string()))?;
                (
                    Arc::new(LocalObjects::new(st, counters.clone())),
                    resolved.id,
                    format!("store:{}", store.display()),
                    image.clone(),
                )
            }
            Source::Repo { url, image, root } => {
                let remote =
                    Remote::parse(url).map_err(|e| DaemonError::BadRequest(e.to_string()))?;
                let r =
                    ImageRef::parse(image).map_err(|e| DaemonError::BadRequest(e.to_string()))?;
                let id = cache
                    .runtime()
                    .block_on(async {
                        let repo =
                            pull::open(cache.store(), &remote, root.as_deref(), opts).await?;
                        pull::resolve(&repo, &r).await
                    })
                    .map_err(|e| match e {
                        starling_repo::Error::UnknownImage(_) => {
                            DaemonError::NotFound(e.to_string())
                        }
                        _ => DaemonError::Upstream(e.to_string()),
                    })?
                    .1;
                (
                    Arc::new(RemoteObjects::new(cache.clone(), remote, counters.clone())),
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
        let fs = ImageFs::new(
            objects.clone(),
            &version,
            counters.clone(),
            recorder.clone(),
            label,
        )
        .map_err(DaemonError::Upstream)?;
        if let Some(list) = prefetch {
            objects.prefetch(&list);
        }
        let mounted = starling_fs::mount(fs, &mp, FS_THREADS)
            .map_err(|e| DaemonError::Internal(e.to_string()))?;
        let info = MountInfo {
            mountpoint: mp.clone(),
            source,
            image,
            version: version.to_hex(),
            started_unix: now_unix(),
            live: true,
            counters: counters.values(),
            record: req.record.clone(),
        };
        let mut t = self.lock();
        t.insert(
            mp,
            MountEntry {
                info: info.clone(),
                mounted,
                counters,
                recorder,
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
        if let Err(err) = e.mounted.unmount() {
            // Busy (a process has it open or as its cwd): it stays mounted.
            t.insert(mp, e);
            return Err(DaemonError::Conflict(format!(
                "{err} (is a process still using it?)"
            )));
        }
        save_record(&e);
        self.persist(&t);
        Ok(info)
    }

    /// Unmounts everything (daemon shutdown); busy mounts are detached lazily.
    pub fn unmount_all(&self) {
        let mut t = self.lock();
        for (mp, mut e) in std::mem::take(&mut *t) {
            save_record(&e);
            if e.mounted.unmount().is_err() {
                let _ = rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH);
            }
        }
        self.persist(&t);
    }
}

fn save_record(e: &MountEntry) {
    if let (Some(r), Some(path)) = (&e.recorder, &e.info.record) {
        if let Err(err) = r.save(path) {
            eprintln!("starlingd: writing {}: {err}", path.display());
        }
    }
}
