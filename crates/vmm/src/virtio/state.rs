//! A virtio device's place in the snapshot: its transport's registers and queues, and its own
//! state as one variant of [`DeviceState`]. The list below is the only place that names every
//! device type: adding a device is a module with its `Persist` impl and one line here.

use serde::{Deserialize, Serialize};

use super::mmio::TransportState;
use super::{blk, fs, net, rng, vsock, DeviceEnv, VirtioDevice};
use crate::persist::{Persist, SaveContext};
use crate::Error;

/// One virtio device in a snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct VirtioState {
    pub transport: TransportState,
    pub device: DeviceState,
}

/// Declares [`DeviceState`] (one variant per device type, holding that type's
/// `Persist::State`) and the dispatch from and to the devices behind their trait objects.
macro_rules! virtio_devices {
    ($($(#[$doc:meta])* $variant:ident($device:ty),)+) => {
        /// A virtio device's own state, by device type.
        #[derive(Debug, Serialize, Deserialize)]
        pub enum DeviceState {
            $($(#[$doc])* $variant(<$device as Persist<'static>>::State),)+
        }

        impl DeviceState {
            /// Saves `device`, whichever of ours it is.
            pub fn save(device: &mut dyn VirtioDevice, ctx: &SaveContext) -> Result<Self, Error> {
                $(if let Some(d) = device.as_any().downcast_mut::<$device>() {
                    return Ok(DeviceState::$variant(d.save(ctx)?));
                })+
                Err(Error::Invalid(format!(
                    "virtio device type {} cannot be saved",
                    device.device_type()
                )))
            }

            /// The device this state was saved from, continuing in the VM `env` describes.
            pub fn restore(&self, env: &DeviceEnv) -> Result<Box<dyn VirtioDevice>, Error> {
                match self {
                    $(DeviceState::$variant(s) => Ok(Box::new(<$device>::restore(env, s)?)),)+
                }
            }
        }
    };
}

virtio_devices! {
    /// virtio-blk: the disk's layers.
    Block(blk::Block),
    /// virtio-rng: nothing beyond its transport.
    Rng(rng::Rng),
    /// virtio-vsock: the guest CID and the connections.
    Vsock(vsock::Vsock),
    /// virtio-fs: the image it serves, the file system's numbering and handles.
    Fs(fs::Fs),
    /// virtio-net: its MAC, TAP name and rate limits.
    Net(net::Net),
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::spec::RestoreSpec;
    use crate::virtio::{IrqLine, MmioTransport, ServiceHandler};

    #[test]
    fn a_device_and_its_transport_survive_encoding() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = || IrqLine::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut t = MmioTransport::new(Box::new(rng::Rng), mem.clone(), irq());
        // The driver's first steps: status ACKNOWLEDGE | DRIVER, queue 0 selected and sized.
        use crate::bus::BusDevice;
        t.write(0x070, &3u32.to_le_bytes());
        t.write(0x038, &16u32.to_le_bytes());
        let ctx = SaveContext::default();
        let saved = VirtioState {
            transport: t.save(&ctx).unwrap(),
            device: DeviceState::save(t.device_mut(), &ctx).unwrap(),
        };
        let bytes = postcard::to_allocvec(&saved).unwrap();
        let back: VirtioState = postcard::from_bytes(&bytes).unwrap();
        assert!(matches!(back.device, DeviceState::Rng(_)));
        assert_eq!(back.transport, saved.transport);
        assert_eq!(back.transport.status, 3);
        assert_eq!(back.transport.queues[0].size, 16);

        let dir = std::env::temp_dir();
        let service: ServiceHandler = Arc::new(|_, _, _| {});
        let env = DeviceEnv {
            id: "rng",
            snapshot_dir: &dir,
            run_dir: &dir,
            spec: &RestoreSpec::default(),
            service: &service,
        };
        let device = back.device.restore(&env).unwrap();
        let mut again =
            MmioTransport::restore((device, mem.clone(), irq()), &back.transport).unwrap();
        assert_eq!(again.save(&ctx).unwrap(), saved.transport);
        // A state of another device type is refused, by type.
        let device = back.device.restore(&env).unwrap();
        let mut wrong = back.transport.clone();
        wrong.device_type = crate::virtio::TYPE_BLOCK;
        let e = MmioTransport::restore((device, mem, irq()), &wrong)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("device type 2 in the snapshot, 4 here"), "{e}");
    }
}
