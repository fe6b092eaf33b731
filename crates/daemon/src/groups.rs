//! Following groups (Stork's group management): for each `[[group]]` of the configuration,
//! a thread polls the group's repository through TUF with the pinned root (the timestamp,
//! then snapshot and targets, whose versioned names HTTP caches keep), and converges this
//! host when a newer generation selects its labels: every image the state names is fetched
//! whole into the host cache and pinned there (eviction never takes it, even past the
//! cache's quota: size the cache for what the groups hold), so mounts and VMs of it start
//! without waiting on the network. The previous generation's objects are released once the
//! next one is held. What was converged is kept in `STATE/groups/NAME.json`, so a host that
//! was off converges to the newest state when it comes back (and re-pins what it held),
//! and never goes back to an older generation. `GET /v1/groups` reports each group's state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use starling_image::walk::Walker;
use starling_repo::group::GroupState;
use starling_store::{ObjectId, ObjectSource, MAX_MANIFEST};

use crate::api::{GroupImageStatus, GroupStatus};
use crate::config::GroupFollow;
use crate::sources::HostObjects;

/// Objects fetched at once while converging.
const PARALLEL: usize = 16;

/// The format of `STATE/groups/NAME.json`.
const CONVERGED_FORMAT: u32 = 1;

/// What this host converged to, kept across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Converged {
    /// [`CONVERGED_FORMAT`]; a file of another format is not read (the group converges anew).
    #[serde(default)]
    format: u32,
    generation: u64,
    images: Vec<GroupImageStatus>,
    at: String,
}

/// Every followed group's state on this host.
#[derive(Default)]
pub struct Groups {
    table: Mutex<BTreeMap<String, GroupStatus>>,
}

/// The objects a group's converged generation holds pinned in the host cache (eviction
/// never takes them, however full the cache), released when the next generation is held.
#[derive(Default)]
struct Held {
    generation: u64,
    ids: Vec<ObjectId>,
}

impl Groups {
    pub fn list(&self) -> Vec<GroupStatus> {
        let g = self.table.lock().unwrap_or_else(|p| p.into_inner());
        g.values().cloned().collect()
    }

    fn set(&self, s: GroupStatus) {
        let mut g = self.table.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(s.name.clone(), s);
    }

    /// Starts a follower thread per group.
    pub fn follow(
        self: &Arc<Self>,
        host: Arc<HostObjects>,
        state: &Path,
        labels: BTreeMap<String, String>,
        groups: Vec<GroupFollow>,
    ) {
        let dir = state.join("groups");
        let _ = std::fs::create_dir_all(&dir);
        for f in groups {
            let me = self.clone();
            let host = host.clone();
            let labels = labels.clone();
            let file = dir.join(format!("{}.json", f.name));
            let mut status = GroupStatus {
                name: f.name.clone(),
                repository: f.repository.clone(),
                ..GroupStatus::default()
            };
            if let Some(c) = load(&file) {
                status.generation = Some(c.generation);
                status.images = c.images;
            }
            me.set(status.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("group-{}", f.name))
                .spawn(move || {
                    let mut held = Held::default();
                    loop {
                        let checked = check(&host, &f, &labels, &file, &mut status, &mut held);
                        status.checked = Some(jiff::Timestamp::now().to_string());
                        match checked {
                            Ok(()) => status.error = None,
                            Err(e) => {
                                if status.error.as_deref() != Some(e.as_str()) {
                                    tracing::warn!(group = %f.name, "{e}");
                                }
                                status.error = Some(e);
                            }
                        }
                        me.set(status.clone());
                        std::thread::sleep(f.poll);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("no follower thread for a group: {e}");
            }
        }
    }
}

fn load(file: &Path) -> Option<Converged> {
    let c: Converged = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    (c.format == CONVERGED_FORMAT).then_some(c)
}

/// One poll: the verified state, and converging to it when it is new and selects this host.
fn check(
    host: &HostObjects,
    f: &GroupFollow,
    labels: &BTreeMap<String, String>,
    file: &Path,
    status: &mut GroupStatus,
    held: &mut Held,
) -> Result<(), String> {
    let access = host.repository(&f.repository, None)?;
    let rt = host.runtime();
    let desired = rt
        .block_on(async {
            let repo = starling_repo::pull::open_at(
                host.dir(),
                &access.remote,
                access.root.as_deref(),
                &access.opts,
            )
            .await?;
            starling_repo::group::read(&repo, &f.name).await
        })
        .map_err(|e| format!("group {}: {e}", f.name))?;
    let Some(desired) = desired else {
        return Err(format!(
            "group {} is not published in {} (starling group apply)",
            f.name, f.repository
        ));
    };
    status.latest = Some(desired.generation);
    status.selected = Some(desired.hosts.selects(labels));
    let source = host.remote(&access).map_err(|e| e.to_string())?;
    if status.selected == Some(false) {
        // No longer selected: what the group held may go.
        source.unpin(&std::mem::take(&mut held.ids));
        held.generation = 0;
        status.converged = true;
        return Ok(());
    }
    let have = load(file).map_or(0, |c| c.generation);
    if desired.generation < have {
        return Err(format!(
            "group {}: the repository's generation {} is older than the {have} this host \
             converged to; staying",
            f.name, desired.generation
        ));
    }
    if desired.generation == have && held.generation == have {
        status.converged = true;
        return Ok(());
    }
    // A new generation, or the one converged to before this daemon started: (re)fetch what
    // the cache lacks and hold it all.
    status.converged = false;
    tracing::info!(group = %f.name, generation = desired.generation, images = desired.images.len(), "converging");
    let (images, ids) = converge(source.as_ref(), &desired)?;
    source.unpin(&std::mem::replace(&mut held.ids, ids));
    held.generation = desired.generation;
    let c = Converged {
        format: CONVERGED_FORMAT,
        generation: desired.generation,
        images: images.clone(),
        at: jiff::Timestamp::now().to_string(),
    };
    write_atomically(file, &serde_json::to_vec_pretty(&c).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", file.display()))?;
    status.generation = Some(desired.generation);
    status.images = images;
    status.converged = true;
    tracing::info!(group = %f.name, generation = desired.generation, "converged");
    Ok(())
}

/// Every image of the state fetched whole into the host cache and pinned there; returns the
/// images and every object pinned (released again if any image fails).
fn converge(
    source: &dyn ObjectSource,
    desired: &GroupState,
) -> Result<(Vec<GroupImageStatus>, Vec<ObjectId>), String> {
    let mut out = Vec::new();
    let mut ids = Vec::new();
    for i in &desired.images {
        let got = i
            .version
            .parse::<ObjectId>()
            .map_err(|_| format!("bad version {:?}", i.version))
            .and_then(|version| {
                prefetch(source, version, &mut ids)
                    .map_err(|e| format!("prefetching {} ({}): {e}", i.reference, &i.version[..12]))
            });
        let (objects, bytes) = match got {
            Ok(v) => v,
            Err(e) => {
                source.unpin(&ids);
                return Err(e);
            }
        };
        out.push(GroupImageStatus {
            reference: i.reference.clone(),
            name: i.name.clone(),
            version: i.version.clone(),
            objects,
            bytes,
        });
    }
    Ok((out, ids))
}

/// Reads every object of `version` through `source` (the host cache keeps them), pinning
/// each before it is read (a cache smaller than the image must not evict its first part
/// while it fetches the rest): manifests a level at a time, then the chunks, `PARALLEL` at
/// once. Returns objects and bytes; adds what it pinned to `pinned`.
fn prefetch(
    source: &dyn ObjectSource,
    version: ObjectId,
    pinned: &mut Vec<ObjectId>,
) -> Result<(u64, u64), String> {
    let bytes = AtomicU64::new(0);
    let walked = Walker::new([version]).run(|level| {
        source.pin(level);
        pinned.extend_from_slice(level);
        let want: Vec<(ObjectId, u64)> = level.iter().map(|id| (*id, MAX_MANIFEST)).collect();
        get_all(source, &want, &bytes, true)
    });
    if let Some((id, why)) = walked.bad.iter().next() {
        return Err(format!("object {}: {why}", id.short(12)));
    }
    let chunks: Vec<ObjectId> = walked.chunks.iter().map(|(id, _)| *id).collect();
    source.pin(&chunks);
    pinned.extend(chunks);
    let failed = get_all(source, &walked.chunks, &bytes, false);
    if let Some((id, Err(e))) = failed.into_iter().find(|(_, r)| r.is_err()) {
        return Err(format!("object {}: {e}", id.short(12)));
    }
    Ok((
        (walked.manifests.len() + walked.chunks.len()) as u64,
        bytes.load(Ordering::Relaxed),
    ))
}

/// Gets `want` in parallel; keeps the bytes only when `keep` (manifests, to walk them).
fn get_all(
    source: &dyn ObjectSource,
    want: &[(ObjectId, u64)],
    total: &AtomicU64,
    keep: bool,
) -> Vec<(ObjectId, starling_image::error::Result<Vec<u8>>)> {
    let next = AtomicU64::new(0);
    let out = Mutex::new(Vec::with_capacity(want.len()));
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(want.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((id, len)) = want.get(i) else { break };
                let r = source.get(id, *len).map_err(Into::into);
                if let Ok(b) = &r {
                    total.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                let r = if keep { r } else { r.map(|_| Vec::new()) };
                out.lock().unwrap_or_else(|p| p.into_inner()).push((*id, r));
            });
        }
    });
    out.into_inner().unwrap_or_else(|p| p.into_inner())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}
