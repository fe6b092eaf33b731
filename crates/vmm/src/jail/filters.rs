//! The system calls each kind of Starling process may make once confined, found by tracing
//! every test that runs a monitor (strace -f over the vmm and CLI suites, counting what each
//! thread calls after the VM is built, and what the processes a monitor starts call in their
//! whole life) and then widened only by calls of the same harmlessness (time, memory, calls
//! on descriptors already open). Arguments are checked where the call itself is the danger:
//! `ioctl` by request (KVM, TUN, userfaultfd and a few terminal and descriptor requests),
//! `socket` by domain (no raw packet or netlink sockets), `prctl` by option.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_clock_data, kvm_coalesced_mmio_zone, kvm_cpuid2, kvm_debugregs, kvm_fpu, kvm_ioeventfd,
    kvm_irq_level, kvm_irqchip, kvm_irqfd, kvm_lapic_state, kvm_mp_state, kvm_msr_list, kvm_msrs,
    kvm_pit_config, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_userspace_memory_region,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::Error;

/// The kinds of process that get a filter of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A VM's monitor (`starling-vmm`, or `starling vm run`/`vm restore` in their own process).
    Monitor,
    /// `starling-vmm --memory-server`: reads a snapshot's memory and answers on a socket.
    MemoryServer,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Monitor => "monitor",
            Kind::MemoryServer => "memory-server",
        }
    }
}

/// Calls every Rust program here makes: memory, threads, locks, time, signals, exit.
const RUNTIME: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_futex,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_set_tid_address,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_poll,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
];

/// What a monitor adds: its files, events, sockets, and starting clones and helpers (which
/// inherit the filter, so also what a monitor does before it is confined).
const MONITOR: &[i64] = &[
    // Files: the run directory, snapshots, disks, overlays, the console.
    libc::SYS_openat,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_getdents64,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_mkdir,
    libc::SYS_rename,
    libc::SYS_unlink,
    libc::SYS_rmdir,
    libc::SYS_unlinkat,
    libc::SYS_mkdirat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_getcwd,
    libc::SYS_flock,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_memfd_create,
    libc::SYS_copy_file_range,
    // std::fs::copy's fallback across file systems (a disk layer copied into a snapshot).
    libc::SYS_sendfile,
    // Events: device threads, irqfds, the API and vsock sockets.
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    // Lazy restores.
    libc::SYS_userfaultfd,
    // Clones, memory servers, the network helper: started, waited for, stopped.
    libc::SYS_execve,
    libc::SYS_wait4,
    libc::SYS_pidfd_open,
    libc::SYS_sysinfo,
    libc::SYS_getrusage,
    libc::SYS_waitid,
    libc::SYS_kill,
    libc::SYS_setpgid,
    libc::SYS_getppid,
    libc::SYS_prlimit64,
    libc::SYS_arch_prctl,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_uname,
    // A started process confining itself further (a memory server adds its own filter).
    libc::SYS_seccomp,
];

/// What a memory server adds: its sockets (and one to the server it relays, if any), and
/// the vectored writes TLS makes of its records (`tls://`).
const MEMORY_SERVER: &[i64] = &[
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_writev,
    libc::SYS_readv,
];

const KVMIO: u64 = 0xAE;

const FIONBIO: u64 = 0x5421;
const FIOCLEX: u64 = 0x5451;
/// isatty.
const TCGETS: u64 = 0x5401;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(0, nr, 0)
}
const fn iow<T>(nr: u64) -> u64 {
    ioc(1, nr, std::mem::size_of::<T>())
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(2, nr, std::mem::size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(3, nr, std::mem::size_of::<T>())
}

/// The requests a monitor makes: KVM's (building a VM, running it, saving and restoring it;
/// numbers as linux/kvm.h defines them and kvm-ioctls mirrors, with kvm-bindings' sizes), then
/// descriptor, terminal, TAP and userfaultfd requests.
const MONITOR_IOCTLS: &[u64] = &[
    io(0x00),                                 // KVM_GET_API_VERSION
    io(0x01),                                 // KVM_CREATE_VM
    iowr::<kvm_msr_list>(0x02),               // KVM_GET_MSR_INDEX_LIST
    io(0x03),                                 // KVM_CHECK_EXTENSION
    io(0x04),                                 // KVM_GET_VCPU_MMAP_SIZE
    iowr::<kvm_cpuid2>(0x05),                 // KVM_GET_SUPPORTED_CPUID
    iowr::<kvm_msr_list>(0x0a),               // KVM_GET_MSR_FEATURE_INDEX_LIST
    io(0x41),                                 // KVM_CREATE_VCPU
    iow::<kvm_userspace_memory_region>(0x46), // KVM_SET_USER_MEMORY_REGION
    io(0x47),                                 // KVM_SET_TSS_ADDR
    iow::<u64>(0x48),                         // KVM_SET_IDENTITY_MAP_ADDR
    io(0x60),                                 // KVM_CREATE_IRQCHIP
    iowr::<kvm_irqchip>(0x62),                // KVM_GET_IRQCHIP
    ior::<kvm_irqchip>(0x63),                 // KVM_SET_IRQCHIP (_IOR in linux/kvm.h)
    iow::<kvm_irq_level>(0x61),               // KVM_IRQ_LINE
    iow::<kvm_irqfd>(0x76),                   // KVM_IRQFD
    iow::<kvm_ioeventfd>(0x79),               // KVM_IOEVENTFD (register and unregister)
    iow::<kvm_coalesced_mmio_zone>(0x67),     // KVM_REGISTER_COALESCED_MMIO (the console)
    iow::<kvm_coalesced_mmio_zone>(0x68),     // KVM_UNREGISTER_COALESCED_MMIO
    iow::<kvm_pit_config>(0x77),              // KVM_CREATE_PIT2
    iow::<kvm_clock_data>(0x7b),              // KVM_SET_CLOCK
    ior::<kvm_clock_data>(0x7c),              // KVM_GET_CLOCK
    ior::<kvm_pit_state2>(0x9f),              // KVM_GET_PIT2
    iow::<kvm_pit_state2>(0xa0),              // KVM_SET_PIT2
    io(0x80),                                 // KVM_RUN
    ior::<kvm_regs>(0x81),                    // KVM_GET_REGS
    iow::<kvm_regs>(0x82),                    // KVM_SET_REGS
    ior::<kvm_sregs>(0x83),                   // KVM_GET_SREGS
    iow::<kvm_sregs>(0x84),                   // KVM_SET_SREGS
    iowr::<kvm_msrs>(0x88),                   // KVM_GET_MSRS
    iow::<kvm_msrs>(0x89),                    // KVM_SET_MSRS
    ior::<kvm_fpu>(0x8c),                     // KVM_GET_FPU
    iow::<kvm_fpu>(0x8d),                     // KVM_SET_FPU
    ior::<kvm_lapic_state>(0x8e),             // KVM_GET_LAPIC
    iow::<kvm_lapic_state>(0x8f),             // KVM_SET_LAPIC
    iow::<kvm_cpuid2>(0x90),                  // KVM_SET_CPUID2
    iowr::<kvm_cpuid2>(0x91),                 // KVM_GET_CPUID2
    ior::<kvm_mp_state>(0x98),                // KVM_GET_MP_STATE
    iow::<kvm_mp_state>(0x99),                // KVM_SET_MP_STATE
    ior::<kvm_vcpu_events>(0x9f),             // KVM_GET_VCPU_EVENTS
    iow::<kvm_vcpu_events>(0xa0),             // KVM_SET_VCPU_EVENTS
    ior::<kvm_debugregs>(0xa1),               // KVM_GET_DEBUGREGS
    iow::<kvm_debugregs>(0xa2),               // KVM_SET_DEBUGREGS
    io(0xa2),                                 // KVM_SET_TSC_KHZ
    io(0xa3),                                 // KVM_GET_TSC_KHZ
    ior::<kvm_xsave>(0xa4),                   // KVM_GET_XSAVE
    iow::<kvm_xsave>(0xa5),                   // KVM_SET_XSAVE
    ior::<kvm_xcrs>(0xa6),                    // KVM_GET_XCRS
    iow::<kvm_xcrs>(0xa7),                    // KVM_SET_XCRS
    io(0xad),                                 // KVM_KVMCLOCK_CTRL
    ior::<kvm_xsave>(0xcf),                   // KVM_GET_XSAVE2
    FIONBIO,
    0x541b, // FIONREAD
    FIOCLEX,
    0x5450, // FIONCLEX
    TCGETS,
    0x5413,     // TIOCGWINSZ
    0x540f,     // TIOCGPGRP
    0x400454ca, // TUNSETIFF
    0x800454d2, // TUNGETIFF
    0x400454d0, // TUNSETOFFLOAD
    0x400454d8, // TUNSETVNETHDRSZ
    0x400454cb, // TUNSETPERSIST (a clone takes over a TAP made for it)
    0x800454cf, // TUNGETFEATURES
    0xaa00,     // USERFAULTFD_IOC_NEW (/dev/userfaultfd)
    0xc018aa3f, // UFFDIO_API
    0xc020aa00, // UFFDIO_REGISTER
    0x8010aa01, // UFFDIO_UNREGISTER
    0x8010aa02, // UFFDIO_WAKE
    0xc028aa03, // UFFDIO_COPY
    0xc020aa04, // UFFDIO_ZEROPAGE
];

/// What a memory server asks of its descriptors: non-blocking, close-on-exec, isatty.
const MEMORY_SERVER_IOCTLS: &[u64] = &[FIONBIO, FIOCLEX, TCGETS];

/// prctl options: thread names, the seccomp state, and a child confining itself.
const PRCTL_OPTIONS: &[i32] = &[
    libc::PR_SET_NAME,
    libc::PR_GET_NAME,
    libc::PR_GET_SECCOMP,
    libc::PR_SET_NO_NEW_PRIVS,
    libc::PR_GET_NO_NEW_PRIVS,
    libc::PR_SET_PDEATHSIG,
];

/// Socket domains: local sockets, and TCP for memory servers on another host.
const SOCKET_DOMAINS: &[i32] = &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6];

/// One rule per allowed value of argument `index`, compared as the kernel reads these
/// arguments: a 32-bit int (an ioctl request is an unsigned int, the upper half ignored).
fn arg_is(
    index: u8,
    values: impl IntoIterator<Item = u64>,
) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .into_iter()
        .map(|v| {
            SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect()
}

fn rules(
    kind: Kind,
    net_helper: bool,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let (extra, ioctls): (&[i64], &[u64]) = match kind {
        Kind::Monitor => (MONITOR, MONITOR_IOCTLS),
        Kind::MemoryServer => (MEMORY_SERVER, MEMORY_SERVER_IOCTLS),
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = RUNTIME
        .iter()
        .chain(extra)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    // A monitor of a VM on Starling's network: its clones' network helper (`starling
    // net-helper`, `clone_net.rs`) runs under the monitor's filter and speaks netlink (links,
    // addresses, nftables).
    let netlink = if net_helper {
        &[libc::AF_NETLINK][..]
    } else {
        &[]
    };
    let domains = SOCKET_DOMAINS.iter().chain(netlink);
    rules.insert(
        libc::SYS_prctl,
        arg_is(0, PRCTL_OPTIONS.iter().map(|&o| o as u64))?,
    );
    rules.insert(libc::SYS_socket, arg_is(0, domains.map(|&d| d as u64))?);
    rules.insert(libc::SYS_ioctl, arg_is(1, ioctls.iter().copied())?);
    Ok(rules)
}

/// The BPF program for `kind`: allowed calls pass, any other traps (SIGSYS, see `sigsys.rs`).
/// With `net_helper`, a monitor may also do what its clones' network helper does.
pub fn compile(kind: Kind, net_helper: bool) -> Result<BpfProgram, Error> {
    let build = |reason: String| Error::Build {
        kind: kind.name(),
        reason,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| build(e.to_string()))?;
    let filter = SeccompFilter::new(
        rules(kind, net_helper).map_err(|e| build(e.to_string()))?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| build(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_linux_s() {
        // Values from linux/kvm.h on x86_64, as strace prints them.
        assert_eq!(io(0x01), 0xae01); // KVM_CREATE_VM
        assert_eq!(io(0x80), 0xae80); // KVM_RUN
        assert_eq!(ior::<kvm_regs>(0x81), 0x8090ae81); // KVM_GET_REGS
        assert_eq!(iow::<kvm_userspace_memory_region>(0x46), 0x4020ae46);
        assert_eq!(iowr::<kvm_cpuid2>(0x05), 0xc008ae05); // KVM_GET_SUPPORTED_CPUID
        assert_eq!(iow::<kvm_irqfd>(0x76), 0x4020ae76); // KVM_IRQFD
        assert_eq!(iow::<kvm_ioeventfd>(0x79), 0x4040ae79); // KVM_IOEVENTFD
        assert_eq!(ior::<kvm_xsave>(0xa4), 0x9000aea4); // KVM_GET_XSAVE
        assert_eq!(ior::<kvm_irqchip>(0x63), 0x8208ae63); // KVM_SET_IRQCHIP
    }

    #[test]
    fn every_kind_compiles() {
        for (kind, net) in [
            (Kind::Monitor, false),
            (Kind::Monitor, true),
            (Kind::MemoryServer, false),
        ] {
            let program = compile(kind, net).unwrap();
            assert!(!program.is_empty());
            // The kernel refuses programs over 4096 instructions.
            assert!(program.len() < 4096, "{} instructions", program.len());
        }
    }
}
