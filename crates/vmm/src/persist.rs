//! The persist layer's contract: a component that can be saved into a state of its own type
//! and built again from that state (Firecracker's `Persist`). Each device keeps its state type
//! and its impl beside its code; `snapshot/` puts the pieces together into one state file.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// Saving and restoring one component.
pub trait Persist<'a>: Sized {
    /// What is saved: plain data, encoded into the state file.
    type State: Serialize + DeserializeOwned;
    /// What restoring needs besides the state (the new VM's resources: paths, interrupts).
    type Args;

    /// The component's state now. The VM is paused and the component held still; a device
    /// may freeze files it writes onto new ones (`ctx.freeze_dir`).
    fn save(&mut self, ctx: &SaveContext) -> Result<Self::State, Error>;

    /// A component that continues from `state`.
    fn restore(args: Self::Args, state: &Self::State) -> Result<Self, Error>;
}

/// Where a save may put what it needs beside the state.
#[derive(Clone, Copy, Debug, Default)]
pub struct SaveContext<'a> {
    /// The component's name in the VM (`disk0`, `vsock`, …): names its files.
    pub id: &'a str,
    /// The VM goes on after this save (a fork, or a snapshot that does not stop it): files
    /// the component writes are frozen as they are and it continues on new ones here.
    pub freeze_dir: Option<&'a Path>,
    /// The snapshot directory, when the state goes into one: files the state needs are
    /// linked there and named relative to it, so the directory is whole on its own.
    pub snapshot_dir: Option<&'a Path>,
}
