//! A VM as a process: build or restore it, let Ctrl-C/SIGTERM stop it, run it, and turn the
//! ending into an exit status. Shared by `starling-vmm` and `starling vm run`'s in-process
//! fallback.

use crate::{RestoreSpec, Vm, VmConfig};

/// Where the VM comes from.
pub enum Start {
    Boot(VmConfig),
    Restore(RestoreSpec),
}

/// Runs the VM to its end and returns the process exit status: the guest's (see
/// `ExitReason::status`), 2 when the VM cannot be built, 1 when running it fails. Messages go to
/// stderr prefixed `starling:`; `STARLING_VM_QUIET` silences the ending line. With
/// `STARLING_EXIT_FILE`, the status is also written there (`{"status": N, "reason": "…"}`,
/// atomically), for a supervisor that is not this process's parent (a restarted daemon).
pub fn run_to_exit(start: Start) -> u8 {
    let (status, reason) = run(start);
    if let Some(path) = std::env::var_os("STARLING_EXIT_FILE") {
        let path = std::path::PathBuf::from(path);
        let body = serde_json::json!({ "status": status, "reason": reason }).to_string();
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            eprintln!(
                "starling: could not write the exit status to {}",
                path.display()
            );
        }
    }
    status
}

fn run(start: Start) -> (u8, String) {
    let defaulted = match &start {
        Start::Boot(c) => c.run_dir.is_none(),
        Start::Restore(s) => s.run_dir.is_none(),
    };
    let ended = run_vm(start);
    if defaulted {
        // The run directory this process made for itself goes when the VM does, with the
        // vsock socket it bound there; anything else in it (disk overlays a snapshot may
        // still need) keeps it.
        let dir = crate::builder::default_run_dir();
        let sock = dir.join("vsock.sock");
        if std::fs::symlink_metadata(&sock)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            let _ = std::fs::remove_file(&sock);
        }
        let _ = std::fs::remove_dir(&dir);
    }
    ended
}

/// Says why the VM was not started; its status and reason.
fn not_started(e: impl std::fmt::Display) -> (u8, String) {
    eprintln!("starling: the VM was not started: {e}");
    (2, format!("not started: {e}"))
}

fn run_vm(mut start: Start) -> (u8, String) {
    // A memory server named by host name is looked up now, before the filter (which allows
    // neither the files nor the DNS queries a lookup takes) and before the build meets it.
    if let Start::Restore(spec) = &mut start {
        if let Some(lazy) = &spec.lazy {
            let resolved = lazy.parse::<crate::lazy::Remote>().and_then(|mut r| {
                r.addr = r.addr.resolved()?;
                Ok(r.to_string())
            });
            match resolved {
                Ok(r) => spec.lazy = Some(r),
                Err(e) => return not_started(e),
            }
        }
    }
    // The jail (when asked for) is entered now, while this process has one thread: it changes
    // what the build can see and who it is. A jailed monitor holds no snapshot key; any other
    // reads (or makes) its key now, while files may still be created: the filter allows
    // neither linking nor the key's directory.
    match crate::jail::settings() {
        Ok(Some(settings)) => {
            crate::snapshot::key::forgo();
            if let Err(e) = crate::jail::plan::enter(&settings, &mut start) {
                return not_started(e);
            }
        }
        // A clone of a jailed monitor (inside its jail already) holds none either.
        Ok(None) if crate::jail::jailed() => crate::snapshot::key::forgo(),
        Ok(None) => crate::snapshot::key::prepare(),
        Err(e) => return not_started(e),
    }
    // The seccomp filter is compiled and installed (for every thread) on a thread of its own
    // while the VM is built, off the path to the guest's first instruction: installing it costs
    // about half a millisecond (the kernel checks the program and precomputes which calls it
    // always allows), and everything a build does is allowed anyway, since clones build under
    // it. The guest runs only once it is in place.
    let jail = std::thread::Builder::new()
        .name("jail".into())
        .spawn(|| crate::jail::confine(crate::jail::Kind::Monitor));
    let built = match start {
        Start::Boot(config) => Vm::build(config),
        Start::Restore(spec) => Vm::restore(&spec),
    };
    let confined = match jail {
        Ok(t) => t.join().unwrap_or_else(|_| {
            Err(crate::jail::Error::Install {
                kind: "monitor",
                reason: "the installing thread panicked".into(),
            })
        }),
        Err(e) => Err(crate::jail::Error::Install {
            kind: "monitor",
            reason: format!("starting the installing thread: {e}"),
        }),
    };
    let vm = match (built, confined) {
        (Ok(vm), Ok(_)) => vm,
        // A build that failed says why first (bad input is the likelier cause).
        (Err(e), _) => return not_started(e),
        (Ok(_), Err(e)) => return not_started(e),
    };
    if let Err(e) = crate::signals::stop_on_signals(vm.handle()) {
        eprintln!("starling: installing signal handling: {e}");
        return (2, format!("not started: {e}"));
    }
    let handle = vm.handle();
    let ended = vm.run();
    // The attached console client is sent what the guest wrote last before this process
    // exits and its stream closes.
    crate::devices::serial::flush_attached(std::time::Duration::from_secs(5));
    match ended {
        Ok(reason) => {
            if std::env::var_os("STARLING_VM_QUIET").is_none() {
                eprintln!("starling: VM ended: {reason}");
                for f in handle.0.fs_stats() {
                    let ops: Vec<String> =
                        f.ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
                    eprintln!(
                        "starling: virtio-fs {}: the guest read {} bytes in {} reads; objects \
                         behind them: {} bytes fetched, {} bytes from the host cache; {} errors; \
                         {} requests ({}) answered in {} ms; largest READ {} bytes",
                        f.device,
                        f.read_bytes,
                        f.reads,
                        f.fetched_bytes,
                        f.cached_bytes,
                        f.errors,
                        f.requests,
                        ops.join(", "),
                        f.busy_us / 1000,
                        f.largest_read
                    );
                }
            }
            (reason.status().clamp(0, 255) as u8, reason.to_string())
        }
        Err(e) => {
            eprintln!("starling: {e}");
            (1, e.to_string())
        }
    }
}
