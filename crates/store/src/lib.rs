//! Starling's content-addressed object store.
//!
//! An object is an immutable byte string named by the BLAKE3-256 hash of its uncompressed
//! bytes, kept in a small versioned envelope ([`envelope`]) that records its codec and
//! length. Objects live in pack segments ([`pack`], [`packset`]): a transaction ([`Txn`])
//! appends its new objects to segments in a private directory and publishes them whole
//! (fsynced, indexed, renamed into place), so a reader never sees half a transaction.
//! Refs ([`refs`]) are small files replaced atomically: a version becomes visible only when
//! its ref is. Locks ([`lock`]) keep collection from removing what a concurrent writer is
//! about to reference.
//!
//! Reading is behind one trait, [`ObjectSource`], implemented by the store, by a remote
//! repository (in `repo`) and by the host cache ([`cache`]), a decorator over any source on
//! the same pack engine. The store knows nothing of trees or images: the `image` crate gives
//! objects meaning and tells the store what to keep.
#![forbid(unsafe_code)]

pub mod cache;
mod collect;
mod envelope;
mod error;
mod id;
pub mod lock;
mod loose;
pub mod pack;
pub mod packset;
pub mod refs;
mod source;
mod store;
mod txn;
pub mod wire;

pub use collect::Collected;
pub use envelope::{
    decode as decode_envelope, encode as encode_envelope, parse_header as parse_envelope_header,
    unwrap as unwrap_envelope, Codec, ENVELOPE_VERSION, HEADER_LEN,
};
pub use error::{innermost, Error, Result};
pub use id::ObjectId;
pub use source::{check_len, ObjectSource, Origin, MAX_MANIFEST};
pub use store::{
    ObjectInfo, ObjectLocation, PutOutcome, Store, StoreCounters, LEGACY_FORMAT_VERSION,
    STORE_FORMAT_VERSION,
};
pub use txn::Txn;
