//! Where objects come from, behind one trait: the local store, a repository fetched over
//! HTTP (in `repo`), or the host cache in front of either (in [`crate::cache`]). Readers of
//! images (`image`'s browsing, the lazy file system in `fs`) take any source, so reading a
//! repository image without pulling it is the same code as reading a local one.

use crate::{envelope, Error, ObjectId, Result, Store};

/// Where a read was answered from, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The local store.
    Local,
    /// The host cache.
    Cache,
    /// Fetched from a remote (and verified).
    Remote,
}

/// Manifests (commits, trees) are never larger than this; chunks are bounded by their
/// recorded length.
pub const MAX_MANIFEST: u64 = 64 << 20;

pub trait ObjectSource: Send + Sync {
    /// The object's envelope as stored or sent, not yet verified: callers that keep it or
    /// decode it check it against `id`. `max_len` bounds the object's uncompressed size
    /// (its recorded length for chunks, [`MAX_MANIFEST`] for manifests), so a hostile
    /// remote cannot make a reader download or inflate more.
    fn envelope(&self, id: &ObjectId, max_len: u64) -> Result<(Vec<u8>, Origin)>;

    /// The object's bytes, verified against `id`.
    fn read(&self, id: &ObjectId, max_len: u64) -> Result<(Vec<u8>, Origin)> {
        let (env, origin) = self.envelope(id, max_len)?;
        Ok((opened(id, &env, max_len)?, origin))
    }

    /// Reads several objects, handing each to `each` (with its index in `wanted`) as it
    /// is ready, in order. A source with a round trip per request (the daemon's object
    /// socket) asks for them in one; others read them one by one.
    fn read_each(
        &self,
        wanted: &[(ObjectId, u64)],
        each: &mut dyn FnMut(usize, Result<(Vec<u8>, Origin)>),
    ) {
        for (i, (id, max_len)) in wanted.iter().enumerate() {
            each(i, self.read(id, *max_len));
        }
    }

    /// [`ObjectSource::read`] without the origin.
    fn get(&self, id: &ObjectId, max_len: u64) -> Result<Vec<u8>> {
        self.read(id, max_len).map(|(b, _)| b)
    }

    /// Marks objects an open file needs, so a size-limited cache keeps them. Sources without
    /// eviction ignore it.
    fn pin(&self, _ids: &[ObjectId]) {}
    fn unpin(&self, _ids: &[ObjectId]) {}

    /// Names the source in messages (a store path, a repository URL).
    fn describe(&self) -> String;
}

/// An envelope's content, verified against `id`, once its declared length is within
/// `max_len` (checked before anything is decompressed).
pub fn opened(id: &ObjectId, env: &[u8], max_len: u64) -> Result<Vec<u8>> {
    check_len(id, env, max_len)?;
    envelope::decode(id, env)
}

/// Refuses an envelope that declares more than the reader allowed.
pub fn check_len(id: &ObjectId, env: &[u8], max_len: u64) -> Result<()> {
    let (_, len) = envelope::parse_header(id, env)?;
    if len > max_len {
        return Err(Error::Corrupt {
            id: *id,
            reason: format!("declares {len} bytes, more than the {max_len} it may have"),
        });
    }
    Ok(())
}

impl ObjectSource for Store {
    fn envelope(&self, id: &ObjectId, _max_len: u64) -> Result<(Vec<u8>, Origin)> {
        Ok((self.get_envelope(id)?, Origin::Local))
    }

    fn read(&self, id: &ObjectId, _max_len: u64) -> Result<(Vec<u8>, Origin)> {
        Ok((self.get(id)?, Origin::Local))
    }

    fn describe(&self) -> String {
        format!("store {}", self.root().display())
    }
}

impl<S: ObjectSource + ?Sized> ObjectSource for std::sync::Arc<S> {
    fn envelope(&self, id: &ObjectId, max_len: u64) -> Result<(Vec<u8>, Origin)> {
        (**self).envelope(id, max_len)
    }
    fn read(&self, id: &ObjectId, max_len: u64) -> Result<(Vec<u8>, Origin)> {
        (**self).read(id, max_len)
    }
    fn read_each(
        &self,
        wanted: &[(ObjectId, u64)],
        each: &mut dyn FnMut(usize, Result<(Vec<u8>, Origin)>),
    ) {
        (**self).read_each(wanted, each)
    }
    fn pin(&self, ids: &[ObjectId]) {
        (**self).pin(ids)
    }
    fn unpin(&self, ids: &[ObjectId]) {
        (**self).unpin(ids)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}
