//! The daemon's few uses of a VM's guest agent (docs/api/agent.md), through the monitor's
//! vsock socket and `starling_guest::exec`: sync before a commit, stop before a kill.

use std::path::Path;
use std::time::Duration;

use starling_guest::exec::{self, ExecError, Request, EXEC_PORT};

/// Asks the agent to end the VM's workload (the command, or the image's init by powering
/// off); what it does (`command` or `poweroff`).
pub fn stop(vsock: &Path) -> Result<String, ExecError> {
    let s = exec::connect(vsock, EXEC_PORT)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    exec::stop(s)
}

/// Runs `argv` in the guest with no input and its output discarded; its exit status. A guest
/// that does not answer within `timeout` is an error (the socket times out).
pub fn exec(vsock: &Path, argv: &[&str], timeout: Duration) -> Result<u32, ExecError> {
    let s = exec::connect(vsock, EXEC_PORT)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let outcome = exec::run(
        s,
        &Request::new(argv),
        None,
        &mut std::io::sink(),
        &mut std::io::sink(),
    )?;
    match outcome.error {
        Some(e) if outcome.status != 0 => Err(ExecError::Refused(e)),
        _ => Ok(outcome.status),
    }
}
