//! Where the fleet commands read images from: the local store, or a repository read in place
//! (its TUF metadata verified, then only the objects a command needs fetched and checked
//! against their ids; nothing is pulled into the store).

use std::path::Path;

use anyhow::{Context, Result};
use starling_image::reference::ImageRef;
use starling_image::search::{add_version, VersionSet};
use starling_image::versions::{self, Resolved};
use starling_repo::fetch::RemoteSource;
use starling_repo::pull::{self, ClientOptions, Remote};
use starling_store::{ObjectId, ObjectSource, Store};

pub enum Images {
    Local(Store),
    Repo {
        url: String,
        repo: Box<tough::Repository>,
        source: RemoteSource,
        rt: tokio::runtime::Runtime,
    },
}

/// Whether a command's first argument names a repository rather than an image: a URL, or a
/// directory holding a repository (image names may contain `/`, so a path counts only when a
/// repository is there).
pub fn is_repository(arg: &str) -> bool {
    arg.contains("://") || Path::new(arg).join("starling-repo").is_file()
}

/// Splits an optional leading repository off a command's arguments.
pub fn split_repository(mut args: Vec<String>) -> (Option<String>, Vec<String>) {
    if args.first().is_some_and(|a| is_repository(a)) {
        let url = args.remove(0);
        (Some(url), args)
    } else {
        (None, args)
    }
}

impl Images {
    /// The local store, or the repository at `url` (first contact needs `root`, the
    /// repository's trusted root metadata; its trust state is kept in the store).
    pub fn open(store_dir: &Path, url: Option<&str>, root: Option<&Path>) -> Result<Images> {
        let Some(url) = url else {
            return Ok(Images::Local(Store::open(store_dir)?));
        };
        let remote = Remote::parse(url)?;
        let store = crate::repo_cmd::trust_store(store_dir, url, root)?;
        let rt = starling_repo::runtime()?;
        let opts = ClientOptions::default();
        let repo = rt
            .block_on(pull::open(&store, &remote, root, &opts))
            .with_context(|| format!("opening repository {url}"))?;
        let source = RemoteSource::new(remote, &opts, rt.handle().clone())?;
        Ok(Images::Repo {
            url: url.to_string(),
            repo: Box::new(repo),
            source,
            rt,
        })
    }

    pub fn source(&self) -> &dyn ObjectSource {
        match self {
            Images::Local(s) => s,
            Images::Repo { source, .. } => source,
        }
    }

    pub fn resolve(&self, r: &ImageRef) -> Result<Resolved> {
        match self {
            Images::Local(s) => Ok(versions::resolve(s, r)?),
            Images::Repo {
                url,
                repo,
                source,
                rt,
            } => {
                let (rec, id) = rt
                    .block_on(pull::resolve(repo, r))
                    .with_context(|| format!("{r} in {url}"))?;
                let commit = versions::load_commit(source, &id)?;
                let display = match r {
                    ImageRef::Tag { name, tag } => format!("{name}:{tag}@{}", id.short(12)),
                    ImageRef::Name { .. } => format!("{}:{}@{}", rec.name, rec.tag, id.short(12)),
                    ImageRef::Version { .. } => format!("{}@{}", rec.name, id.short(12)),
                };
                Ok(Resolved {
                    id,
                    commit,
                    display,
                })
            }
        }
    }

    pub fn resolve_many(&self, refs: &[ImageRef]) -> Result<Vec<Resolved>> {
        match self {
            Images::Local(s) => Ok(versions::resolve_many(s, refs)?),
            Images::Repo { .. } => refs.iter().map(|r| self.resolve(r)).collect(),
        }
    }

    /// Every version any tag has held, with the tags that held it.
    pub fn versions(&self) -> Result<VersionSet> {
        match self {
            Images::Local(s) => Ok(starling_image::search::store_versions(s)?),
            Images::Repo { repo, rt, url, .. } => {
                let recs = rt
                    .block_on(pull::records(repo))
                    .with_context(|| format!("records of {url}"))?;
                let mut set = VersionSet::new();
                for rec in recs {
                    for h in &rec.history {
                        let id: ObjectId = h
                            .version
                            .parse()
                            .with_context(|| format!("record {}:{} in {url}", rec.name, rec.tag))?;
                        add_version(&mut set, id, &rec.name, &rec.tag, h.version == rec.target);
                    }
                }
                Ok(set)
            }
        }
    }
}
