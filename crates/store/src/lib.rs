//! Starling's content-addressed object store.
//!
//! An object is an immutable byte string named by the BLAKE3-256 hash of its uncompressed bytes.
//! Objects live loose under `objects/ab/cdef…`, each in a small versioned envelope
//! ([`envelope`]) that records its codec and length. Writes go to a temp file and are renamed
//! into place, so a reader never sees half an object; [`Store::sync`] makes a batch durable
//! before a ref that names it is written. Refs ([`refs`]) are small files replaced atomically:
//! a version becomes visible only when its ref is. Locks ([`lock`]) keep `gc` from deleting
//! what a concurrent writer is about to reference.
//!
//! The store knows nothing of trees or images: the `image` crate gives objects meaning and
//! tells the store what to keep.

mod envelope;
mod error;
mod id;
pub mod lock;
pub mod refs;
mod store;
mod txn;

pub use envelope::{
    decode as decode_envelope, encode as encode_envelope, unwrap as unwrap_envelope, Codec,
    ENVELOPE_VERSION, HEADER_LEN,
};
pub use error::{Error, Result};
pub use id::ObjectId;
pub use store::{ObjectInfo, PutOutcome, Store, StoreCounters, STORE_FORMAT_VERSION};
pub use txn::Txn;
