//! One fork budget for a VM and every generation of its clones: how many more clones the
//! guests of the family may still ask for (`fork N` on the vsock service). It is a counter in
//! a shared memfd page that each clone inherits (`RestoreSpec::budget_fd`), so a clone that
//! forks spends from the same budget as its parent instead of starting a fresh one: a guest
//! forking in a chain, or its clones each forking, ends when the family's budget does.
//! Forks the operator asks for through the API are not counted.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// The default budget of a VM family (`VmConfig::fork_budget`).
pub const DEFAULT: u32 = 1024;

const PAGE: usize = 4096;

pub struct ForkBudget {
    fd: OwnedFd,
    cell: *const AtomicU32,
}

// SAFETY: `cell` points into a MAP_SHARED mapping owned by this value for its whole life and
// is only accessed atomically.
unsafe impl Send for ForkBudget {}
// SAFETY: as above: shared access is through AtomicU32 only.
unsafe impl Sync for ForkBudget {}

impl ForkBudget {
    /// A new family's budget of `clones`.
    pub fn new(clones: u32) -> std::io::Result<Self> {
        // SAFETY: the name is a NUL-terminated literal; the flags are valid.
        let fd = unsafe {
            libc::memfd_create(
                c"starling-fork-budget".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by memfd_create and belongs to nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on a descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), PAGE as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // A clone cannot shrink the page under the rest of the family (SIGBUS on their next
        // fork): its size is sealed.
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS on a memfd we own, made with MFD_ALLOW_SEALING.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let budget = Self::map(fd)?;
        // SAFETY: cell points into the live mapping.
        unsafe { &*budget.cell }.store(clones, Ordering::SeqCst);
        Ok(budget)
    }

    /// The family's budget, from a descriptor the parent passed (a clone's start). Anything
    /// but a one-page file sealed against shrinking is refused.
    pub fn inherit(fd: RawFd) -> std::io::Result<Self> {
        if fd < 3 {
            return Err(std::io::Error::other(format!(
                "fork budget descriptor {fd}: not an inherited descriptor"
            )));
        }
        // Checked before it is taken: a descriptor that is something else is left alone.
        // SAFETY: an all-zero stat is a valid value of the plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat fills the struct; a bad descriptor is an error, nothing more.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: F_GET_SEALS takes no pointer.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || st.st_size != PAGE as libc::off_t
            || seals < 0
            || seals & libc::F_SEAL_SHRINK == 0
        {
            return Err(std::io::Error::other(format!(
                "fork budget descriptor {fd}: not a sealed one-page file"
            )));
        }
        // SAFETY: the descriptor was handed to this process to own (the spec names it once)
        // and is what a budget is.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Passed on to clones explicitly, to nothing else this process starts.
        // SAFETY: F_SETFD on a descriptor we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        Self::map(fd)
    }

    fn map(fd: OwnedFd) -> std::io::Result<Self> {
        // SAFETY: a fresh shared mapping of one page of a file we hold; unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ForkBudget {
            fd,
            cell: p as *const AtomicU32,
        })
    }

    fn cell(&self) -> &AtomicU32 {
        // SAFETY: the mapping lives as long as self; AtomicU32 has u32's layout and the page
        // is aligned.
        unsafe { &*self.cell }
    }

    /// Takes `n` clones from the budget, or none (false) if fewer are left.
    pub fn take(&self, n: u32) -> bool {
        self.cell()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }

    /// Gives back `n` clones a failed fork did not start.
    pub fn give_back(&self, n: u32) {
        let _ = self
            .cell()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                Some(left.saturating_add(n))
            });
    }

    /// Clones the family may still fork.
    pub fn left(&self) -> u32 {
        self.cell().load(Ordering::SeqCst)
    }

    /// The descriptor clones inherit.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for ForkBudget {
    fn drop(&mut self) {
        // SAFETY: the one-page mapping made in `map`, not used after this.
        unsafe { libc::munmap(self.cell as *mut libc::c_void, PAGE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_shared_with_whoever_inherits_it_and_refuses_past_zero() {
        let parent = ForkBudget::new(5).unwrap();
        // SAFETY: dup of a descriptor we own, handed to `inherit` to own.
        let dup = unsafe { libc::dup(parent.fd()) };
        let child = ForkBudget::inherit(dup).unwrap();
        assert!(parent.take(2));
        assert!(child.take(3));
        assert_eq!(parent.left(), 0);
        assert!(!child.take(1));
        assert!(!parent.take(1));
        child.give_back(1);
        assert!(parent.take(1));
        assert_eq!(child.left(), 0);

        // A descriptor that is not a budget is refused, and left open.
        let f = tempfile::tempfile().unwrap();
        f.set_len(PAGE as u64).unwrap();
        let e = ForkBudget::inherit(f.as_raw_fd()).err().unwrap();
        assert!(e.to_string().contains("not a sealed one-page file"), "{e}");
        assert!(f.metadata().is_ok());
        assert!(ForkBudget::inherit(0).is_err());
        // Its size cannot be changed under the family.
        // SAFETY: ftruncate on a descriptor the budget owns; it must fail.
        assert_ne!(unsafe { libc::ftruncate(parent.fd(), 0) }, 0);
    }
}
