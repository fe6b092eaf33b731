//! Ctrl-C and SIGTERM stop the VM cleanly: the signals are blocked in every thread and one
//! thread takes them with sigwait, so no handler runs in the middle of a vCPU exit.

use crate::vm::VmHandle;

/// Call before [`crate::Vm::run`] (threads started later inherit the mask).
pub fn stop_on_signals(vm: VmHandle) -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use; the calls only
    // read and write that set and this thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised signal set owned by this closure; `sig` is a
            // valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                vm.stop(Some(sig));
            }
        })?;
    Ok(())
}
