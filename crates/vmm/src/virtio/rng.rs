//! virtio-rng (entropy source): fills each device-writable buffer from the host's getrandom.

use serde::{Deserialize, Serialize};

use super::{write_to_chain, DeviceEnv, QueueBroken, Queues, VirtioDevice, TYPE_RNG};
use crate::persist::{Persist, SaveContext};
use crate::Error;

const QUEUE_SIZE: u16 = 64;
/// Bytes served per request at most; drivers ask for 64 at a time.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng;

impl VirtioDevice for Rng {
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn notify(&mut self, index: usize, q: &mut Queues) -> Result<bool, QueueBroken> {
        if index != 0 {
            return Ok(false);
        }
        let chains = q.pop_all(0)?;
        for chain in &chains {
            let want: usize = chain
                .descs
                .iter()
                .filter(|d| d.is_write_only())
                .map(|d| d.len() as usize)
                .sum::<usize>()
                .min(MAX_REQUEST);
            let mut buf = vec![0u8; want];
            let written = if getrandom(&mut buf) {
                write_to_chain(&q.mem, &chain.descs, 0, &buf).unwrap_or(0)
            } else {
                0
            };
            q.add_used(0, chain.head, written as u32)?;
        }
        Ok(!chains.is_empty())
    }
}

/// Nothing beyond what its transport holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RngState {}

impl<'a> Persist<'a> for Rng {
    type State = RngState;
    type Args = &'a DeviceEnv<'a>;

    fn save(&mut self, _ctx: &SaveContext) -> Result<RngState, Error> {
        Ok(RngState {})
    }

    fn restore(_env: &'a DeviceEnv<'a>, _state: &RngState) -> Result<Rng, Error> {
        Ok(Rng)
    }
}

fn getrandom(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which we own.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n <= 0 {
            return false;
        }
        filled += n as usize;
    }
    true
}
