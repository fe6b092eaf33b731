//! What a thread that makes a forbidden system call meets: SIGSYS (the filters' mismatch action
//! is SECCOMP_RET_TRAP), whose handler writes one line naming the thread and the call and ends
//! the process with [`FORBIDDEN_EXIT_STATUS`]. Killing outright (SECCOMP_RET_KILL_PROCESS)
//! would leave an operator with a bare SIGSYS and no clue which call it was.

/// The exit status of a monitor stopped by its filter (128 + SIGSYS, as a shell reports it).
pub const FORBIDDEN_EXIT_STATUS: u8 = 159;

/// x86_64 system call names by number (`asm/unistd_64.h`), "-" where none is assigned.
const NAMES: &str = concat!(
    "read write open close stat fstat lstat poll lseek mmap mprotect munmap brk rt_sigaction ",
    "rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv writev access pipe select ",
    "sched_yield mremap msync mincore madvise shmget shmat shmctl dup dup2 pause nanosleep ",
    "getitimer alarm setitimer getpid sendfile socket connect accept sendto recvfrom sendmsg ",
    "recvmsg shutdown bind listen getsockname getpeername socketpair setsockopt getsockopt ",
    "clone fork vfork execve exit wait4 kill uname semget semop semctl shmdt msgget msgsnd ",
    "msgrcv msgctl fcntl flock fsync fdatasync truncate ftruncate getdents getcwd chdir ",
    "fchdir rename mkdir rmdir creat link unlink symlink readlink chmod fchmod chown fchown ",
    "lchown umask gettimeofday getrlimit getrusage sysinfo times ptrace getuid syslog getgid ",
    "setuid setgid geteuid getegid setpgid getppid getpgrp setsid setreuid setregid ",
    "getgroups setgroups setresuid getresuid setresgid getresgid getpgid setfsuid setfsgid ",
    "getsid capget capset rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigsuspend ",
    "sigaltstack utime mknod uselib personality ustat statfs fstatfs sysfs getpriority ",
    "setpriority sched_setparam sched_getparam sched_setscheduler sched_getscheduler ",
    "sched_get_priority_max sched_get_priority_min sched_rr_get_interval mlock munlock ",
    "mlockall munlockall vhangup modify_ldt pivot_root _sysctl prctl arch_prctl adjtimex ",
    "setrlimit chroot sync acct settimeofday mount umount2 swapon swapoff reboot sethostname ",
    "setdomainname iopl ioperm create_module init_module delete_module get_kernel_syms ",
    "query_module quotactl nfsservctl getpmsg putpmsg afs_syscall tuxcall security gettid ",
    "readahead setxattr lsetxattr fsetxattr getxattr lgetxattr fgetxattr listxattr ",
    "llistxattr flistxattr removexattr lremovexattr fremovexattr tkill time futex ",
    "sched_setaffinity sched_getaffinity set_thread_area io_setup io_destroy io_getevents ",
    "io_submit io_cancel get_thread_area lookup_dcookie epoll_create epoll_ctl_old ",
    "epoll_wait_old remap_file_pages getdents64 set_tid_address restart_syscall semtimedop ",
    "fadvise64 timer_create timer_settime timer_gettime timer_getoverrun timer_delete ",
    "clock_settime clock_gettime clock_getres clock_nanosleep exit_group epoll_wait ",
    "epoll_ctl tgkill utimes vserver mbind set_mempolicy get_mempolicy mq_open mq_unlink ",
    "mq_timedsend mq_timedreceive mq_notify mq_getsetattr kexec_load waitid add_key ",
    "request_key keyctl ioprio_set ioprio_get inotify_init inotify_add_watch ",
    "inotify_rm_watch migrate_pages openat mkdirat mknodat fchownat futimesat newfstatat ",
    "unlinkat renameat linkat symlinkat readlinkat fchmodat faccessat pselect6 ppoll unshare ",
    "set_robust_list get_robust_list splice tee sync_file_range vmsplice move_pages ",
    "utimensat epoll_pwait signalfd timerfd_create eventfd fallocate timerfd_settime ",
    "timerfd_gettime accept4 signalfd4 eventfd2 epoll_create1 dup3 pipe2 inotify_init1 ",
    "preadv pwritev rt_tgsigqueueinfo perf_event_open recvmmsg fanotify_init fanotify_mark ",
    "prlimit64 name_to_handle_at open_by_handle_at clock_adjtime syncfs sendmmsg setns ",
    "getcpu process_vm_readv process_vm_writev kcmp finit_module sched_setattr sched_getattr ",
    "renameat2 seccomp getrandom memfd_create kexec_file_load bpf execveat userfaultfd ",
    "membarrier mlock2 copy_file_range preadv2 pwritev2 pkey_mprotect pkey_alloc pkey_free ",
    "statx io_pgetevents rseq - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - ",
    "- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - ",
    "- - - - - - - - - - - - - - pidfd_send_signal io_uring_setup io_uring_enter ",
    "io_uring_register open_tree move_mount fsopen fsconfig fsmount fspick pidfd_open clone3 ",
    "close_range openat2 pidfd_getfd faccessat2 process_madvise epoll_pwait2 mount_setattr ",
    "quotactl_fd landlock_create_ruleset landlock_add_rule landlock_restrict_self ",
    "memfd_secret process_mrelease futex_waitv set_mempolicy_home_node ",
);

/// The name of system call `nr` on x86_64, if it has one.
pub fn name(nr: i64) -> Option<&'static str> {
    let n = usize::try_from(nr).ok()?;
    NAMES.split_ascii_whitespace().nth(n).filter(|s| *s != "-")
}

/// What the line calls the process: "the monitor" or "the memory server".
static WHO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the handler for the whole process (signal dispositions are per process);
/// `memory_server` names the process in the line.
pub fn install(memory_server: bool) -> std::io::Result<()> {
    WHO.store(memory_server, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is an
    // extern "C" fn of the SA_SIGINFO shape that only makes async-signal-safe calls.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            on_sigsys;
        act.sa_sigaction = handler as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A fixed buffer the handler formats into: no allocation in a signal handler.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }
    fn push_hex(&mut self, v: u64) {
        self.push(b"0x");
        let digits = b"0123456789abcdef";
        let mut started = false;
        for shift in (0..16).rev() {
            let d = ((v >> (shift * 4)) & 0xf) as usize;
            if d != 0 || started || shift == 0 {
                started = true;
                self.push(&digits[d..d + 1]);
            }
        }
    }
    fn push_dec(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// Formats the line for `nr` made by thread `thread` with its first two arguments (named
/// where the filter checks them); shared with the tests.
fn format(line: &mut Line, memory_server: bool, thread: &[u8], nr: i64, args: [u64; 2]) {
    line.push(b"starling: seccomp stopped the ");
    line.push(if memory_server {
        b"memory server".as_slice()
    } else {
        b"monitor".as_slice()
    });
    line.push(b": its thread ");
    line.push(thread);
    line.push(b" made the system call ");
    match name(nr) {
        Some(n) => {
            line.push(n.as_bytes());
            line.push(b" (");
            line.push_dec(nr.unsigned_abs());
            line.push(b")");
        }
        None => {
            line.push(b"number ");
            line.push_dec(nr.unsigned_abs());
        }
    }
    match nr {
        libc::SYS_ioctl => {
            line.push(b" with request ");
            line.push_hex(args[1] & 0xffff_ffff);
        }
        libc::SYS_socket => {
            line.push(b" for domain ");
            line.push_dec(args[0] & 0xffff_ffff);
        }
        libc::SYS_prctl => {
            line.push(b" with option ");
            line.push_dec(args[0] & 0xffff_ffff);
        }
        _ => {}
    }
    line.push(
        b", which its filter forbids: a bug, or an attack on it \
          (STARLING_SECCOMP=off runs without the filter, to debug)\n",
    );
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SIGSYS from seccomp carries the call in its _sigsys member: call address at offset 16,
    // the number (int) at 24 (x86_64 siginfo layout; libc does not expose the member).
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; offset 24 lies
    // within its 128 bytes.
    let nr = unsafe {
        (info as *const u8)
            .add(24)
            .cast::<libc::c_int>()
            .read_unaligned()
    };
    // SAFETY: for SA_SIGINFO handlers the third argument is the interrupted context, a valid
    // ucontext_t; the refused call's arguments are still in its registers.
    let args = unsafe {
        let gregs = &(*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs;
        [
            gregs[libc::REG_RDI as usize] as u64,
            gregs[libc::REG_RSI as usize] as u64,
        ]
    };
    let mut thread = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes and a NUL into the 17-byte buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, thread.as_mut_ptr()) };
    let end = thread.iter().position(|&b| b == 0).unwrap_or(16);
    let mut line = Line {
        buf: [0; 512],
        len: 0,
    };
    let memory_server = WHO.load(std::sync::atomic::Ordering::Relaxed);
    format(
        &mut line,
        memory_server,
        &thread[..end],
        i64::from(nr),
        args,
    );
    // SAFETY: write and _exit are async-signal-safe and allowed by every filter; the buffer
    // is valid for `len` bytes.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(i32::from(FORBIDDEN_EXIT_STATUS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_named_from_the_kernel_s_table() {
        assert_eq!(name(0), Some("read"));
        assert_eq!(name(libc::SYS_socket), Some("socket"));
        assert_eq!(name(libc::SYS_ptrace), Some("ptrace"));
        assert_eq!(name(libc::SYS_openat2), Some("openat2"));
        assert_eq!(name(libc::SYS_process_madvise), Some("process_madvise"));
        assert_eq!(name(400), None);
        assert_eq!(name(-1), None);
        assert_eq!(name(100_000), None);
        let mut line = Line {
            buf: [0; 512],
            len: 0,
        };
        format(&mut line, false, b"vcpu0", libc::SYS_socket, [17, 3]);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert!(
            text.starts_with("starling: seccomp stopped the monitor: its thread vcpu0 made the system call socket (41) for domain 17, which"),
            "{text}"
        );
        assert!(text.ends_with("to debug)\n"), "{text}");
        let mut line = Line {
            buf: [0; 512],
            len: 0,
        };
        format(
            &mut line,
            true,
            b"api",
            libc::SYS_ioctl,
            [3, 0xffff_ffff_4004_54cf],
        );
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert!(
            text.contains("memory server: its thread api made the system call ioctl (16) with request 0x400454cf, which"),
            "{text}"
        );
    }
}
