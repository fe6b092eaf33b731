//! Guest RAM and where its pages come from.
//!
//! A booted VM's RAM is a memfd mapped shared, so the pages KVM sees are the memfd's, when the
//! host gives a memfd transparent huge pages (its shmem setting, `advise` or more) or the VM
//! asked for none. Freezing (for a fork or a snapshot) turns the VM's own mapping into a private
//! copy-on-write view of a memfd that nobody writes any more: the first freeze costs nothing
//! (the VM's memfd becomes the frozen image), later ones copy only the pages that hold data.
//! Where the shmem setting is `never` (distributions' default) a memfd gets 4 KiB pages only,
//! and a guest whose every 2 MiB KVM must map as 512 pages runs measurably slower (much slower
//! nested: bench/results/vm-firecracker-tier2.md); such a VM's RAM is anonymous memory at
//! 2 MiB-aligned addresses instead, given huge pages as the host's anonymous THP setting
//! allows, and its first freeze copies the pages that hold data. Clones and restored VMs map a
//! frozen memfd or a snapshot's memory file MAP_PRIVATE: they share its pages until they write.
//! Lazily restored VMs start from empty anonymous memory filled by userfaultfd.
//!
//! RAM ranges (below the MMIO hole, above 4 GiB) are laid end to end in the backing file.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};

use crate::layout::ram_ranges;

pub const PAGE: u64 = 4096;
/// A transparent huge page (x86-64's PMD size).
const HUGE: u64 = 2 << 20;

/// What the VM's mapping is a view of.
enum Backing {
    /// A memfd the VM writes through to (booted VMs where memfds get huge pages, or that
    /// asked for none).
    Shared(File),
    /// A private copy-on-write view of a file no one writes (restored VMs, clones, a VM after
    /// its first fork).
    Private(File),
    /// Anonymous memory: booted VMs' (aligned, for huge pages) or filled on demand through
    /// userfaultfd (lazy restore).
    Anonymous,
}

pub struct GuestRam {
    pub mem: GuestMemoryMmap,
    backing: Backing,
    bytes: u64,
    /// Ranges this process mapped itself (aligned anonymous RAM), which the regions do not
    /// unmap: emptied when the RAM is dropped.
    own_mappings: Vec<(u64, u64)>,
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        for &(host, len) in &self.own_mappings {
            // SAFETY: a range this GuestRam mapped and still owns. Emptied, not unmapped: a
            // device thread still holding a clone of `mem` while the VM is torn down reads
            // zeros (or, after a freeze, the frozen image) instead of faulting; the address
            // space, and a frozen image mapped there, go with the process (a monitor runs one
            // VM).
            unsafe { libc::madvise(host as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) };
        }
    }
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// A memfd of `bytes`, sealed against nothing (it is ours), close-on-exec.
pub fn memfd(name: &str, bytes: u64) -> std::io::Result<File> {
    let cname = std::ffi::CString::new(name).map_err(io_err)?;
    // SAFETY: a valid NUL-terminated name; the returned fd, if any, is owned by the File.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by no one else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(bytes)?;
    Ok(f)
}

impl GuestRam {
    /// Fresh zeroed RAM for a booting VM: a shared memfd, or — when huge pages are wanted and
    /// the host gives a memfd none — aligned anonymous memory (see the module's text).
    pub fn fresh(bytes: u64, hugepages: bool) -> std::io::Result<Self> {
        if hugepages && !shmem_gets_huge_pages() && anonymous_gets_huge_pages() {
            return Self::fresh_anonymous(bytes);
        }
        let f = memfd("starling-guest-ram", bytes)?;
        let mem = map(bytes, Some(&f), libc::MAP_SHARED)?;
        if hugepages {
            advise_huge(&mem);
        }
        Ok(GuestRam {
            mem,
            backing: Backing::Shared(f),
            bytes,
            own_mappings: Vec::new(),
        })
    }

    /// Fresh RAM as aligned anonymous memory, advised to take huge pages.
    fn fresh_anonymous(bytes: u64) -> std::io::Result<Self> {
        let (mem, own_mappings) = map_aligned_anonymous(bytes)?;
        advise_huge(&mem);
        Ok(GuestRam {
            mem,
            backing: Backing::Anonymous,
            bytes,
            own_mappings,
        })
    }

    /// A private copy-on-write view of `file` (a snapshot's memory file or a frozen memfd).
    pub fn private_over(file: File, bytes: u64) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        if len < bytes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("memory file holds {len} bytes, the VM has {bytes}"),
            ));
        }
        let mem = map(bytes, Some(&file), libc::MAP_PRIVATE)?;
        Ok(GuestRam {
            mem,
            backing: Backing::Private(file),
            bytes,
            own_mappings: Vec::new(),
        })
    }

    /// Empty anonymous RAM whose pages arrive through userfaultfd.
    pub fn anonymous(bytes: u64) -> std::io::Result<Self> {
        let mem = map(bytes, None, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)?;
        Ok(GuestRam {
            mem,
            backing: Backing::Anonymous,
            bytes,
            own_mappings: Vec::new(),
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// (host address, length, offset in the backing file) of each RAM range.
    pub fn ranges(&self) -> Vec<(u64, u64, u64)> {
        let mut off = 0;
        self.mem
            .iter()
            .map(|r| {
                let host = r
                    .get_host_address(MemoryRegionAddress(0))
                    .map_or(0, |p| p as u64);
                let v = (host, r.len(), off);
                off += r.len();
                v
            })
            .collect()
    }

    /// Reads one byte of page `page` (numbered in the backing file), so that a lazily
    /// restored VM's fault thread fetches it.
    pub fn touch(&self, page: u64) {
        let at = page * PAGE;
        for (host, len, off) in self.ranges() {
            if at >= off && at < off + len {
                // SAFETY: the address lies inside one of our live RAM mappings; a volatile
                // read so that it happens.
                unsafe { std::ptr::read_volatile((host + at - off) as *const u8) };
            }
        }
    }

    /// Makes the current contents an image nobody writes and returns it; from here on the VM
    /// writes to private copies. The vCPUs and devices must be stopped.
    pub fn freeze(&mut self) -> std::io::Result<File> {
        let frozen = match &self.backing {
            Backing::Shared(f) => f.try_clone()?,
            Backing::Private(_) | Backing::Anonymous => {
                let copy = memfd("starling-guest-ram", self.bytes)?;
                let zero = [0u8; PAGE as usize];
                self.for_each_data_page(|host, off, len| {
                    // SAFETY: host..host+len lies inside one of our live RAM mappings.
                    let src = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
                    // Zero pages stay holes: a huge page's untouched parts count as present.
                    for (i, page) in src.chunks(PAGE as usize).enumerate() {
                        if page != zero {
                            copy.write_all_at(page, off + i as u64 * PAGE)?;
                        }
                    }
                    Ok(())
                })?;
                copy
            }
        };
        // Taken before any range moves, so that nothing after the first remap can fail.
        let backing = Backing::Private(frozen.try_clone()?);
        let ranges = self.ranges();
        for (i, &(host, len, off)) in ranges.iter().enumerate() {
            // SAFETY: replaces our own mapping at exactly its address and length with a private
            // view of a file holding the same bytes; nothing can observe a gap (MAP_FIXED
            // replaces atomically), vCPUs are parked, and KVM's MMU notifier drops its stale
            // translations of the old pages.
            if let Err(e) = unsafe { remap(host, len, Some(&frozen), off, libc::MAP_PRIVATE) } {
                // A failed MAP_FIXED may have unmapped range i already: it is undone too.
                self.unfreeze(&ranges[..=i], &frozen)
                    .map_err(|r| io_err(format!("{e}; undoing the ranges remapped: {r}")))?;
                return Err(e);
            }
        }
        self.backing = backing;
        Ok(frozen)
    }

    /// Undoes a freeze that failed part way: `ranges` may be mapped over `frozen`, which holds
    /// the bytes the VM had there.
    fn unfreeze(&self, ranges: &[(u64, u64, u64)], frozen: &File) -> std::io::Result<()> {
        for &(host, len, off) in ranges {
            match &self.backing {
                // SAFETY: as in freeze: our own range, vCPUs parked, the same bytes behind it.
                Backing::Shared(f) => unsafe { remap(host, len, Some(f), off, libc::MAP_SHARED)? },
                // The bytes go back into memory of the process's own (where a later snapshot
                // finds them, through the page map), so that `frozen` is not kept alive.
                Backing::Private(_) | Backing::Anonymous => {
                    // SAFETY: as above; the range is filled from `frozen` before vCPUs run.
                    unsafe { remap(host, len, None, 0, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)? };
                    for (s, e) in data_extents(frozen, off, off + len)? {
                        // SAFETY: s..e lies inside this range (data_extents clips to it), which
                        // is mapped read-write and used by nothing else while vCPUs are parked.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                (host + (s - off)) as *mut u8,
                                (e - s) as usize,
                            )
                        };
                        frozen.read_exact_at(dst, s)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Calls `f(host address, file offset, length)` for runs of pages that may hold data:
    /// the backing file's data extents and the pages this process wrote privately. Pages in
    /// neither are zero.
    fn for_each_data_page(
        &self,
        mut f: impl FnMut(u64, u64, usize) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let file = match &self.backing {
            Backing::Shared(f) | Backing::Private(f) => Some(f),
            Backing::Anonymous => None,
        };
        let private = !matches!(self.backing, Backing::Shared(_));
        let mut pagemap = if private {
            Some(File::open("/proc/self/pagemap")?)
        } else {
            None
        };
        for (host, len, off) in self.ranges() {
            let pages = (len / PAGE) as usize;
            let mut data = vec![false; pages];
            if let Some(file) = file {
                for (s, e) in data_extents(file, off, off + len)? {
                    for p in ((s - off) / PAGE)..((e - off).div_ceil(PAGE)) {
                        if let Some(d) = data.get_mut(p as usize) {
                            *d = true;
                        }
                    }
                }
            }
            if let Some(pm) = pagemap.as_mut() {
                let mut entries = vec![0u8; pages * 8];
                pm.read_exact_at(&mut entries, host / PAGE * 8)?;
                for (p, e) in entries.chunks_exact(8).enumerate() {
                    let v = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
                    let present_or_swapped = v & (3 << 62) != 0;
                    let file_page = v & (1 << 61) != 0;
                    if present_or_swapped && !file_page {
                        data[p] = true;
                    }
                }
            }
            let mut p = 0;
            while p < pages {
                if !data[p] {
                    p += 1;
                    continue;
                }
                let start = p;
                while p < pages && data[p] && p - start < 512 {
                    p += 1;
                }
                let (h, o, n) = (
                    host + start as u64 * PAGE,
                    off + start as u64 * PAGE,
                    (p - start) as u64 * PAGE,
                );
                f(h, o, n as usize)?;
            }
        }
        Ok(())
    }

    /// Writes RAM to `path` as a sparse file (all-zero pages left as holes); returns the bytes
    /// written and the page map: (page number, BLAKE3) of every page written, by which a lazy
    /// restore knows which pages to fetch and checks what it gets.
    pub fn write_to(&self, path: &Path) -> std::io::Result<(u64, Vec<u8>)> {
        let out = crate::private::create_file(path)?;
        out.set_len(self.bytes)?;
        let mut written = 0;
        let mut map = Vec::new();
        let zero = [0u8; PAGE as usize];
        self.for_each_data_page(|host, off, len| {
            // SAFETY: host..host+len lies inside one of our live RAM mappings.
            let src = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
            for (i, page) in src.chunks(PAGE as usize).enumerate() {
                if page != zero {
                    let at = off + i as u64 * PAGE;
                    out.write_all_at(page, at)?;
                    written += page.len() as u64;
                    map.extend_from_slice(&(at / PAGE).to_le_bytes());
                    map.extend_from_slice(blake3::hash(page).as_bytes());
                }
            }
            Ok(())
        })?;
        out.sync_all()?;
        Ok((written, map))
    }
}

/// Maps `len` bytes of `file` from `off` (or anonymous memory) over our own mapping at `host`.
///
/// # Safety
/// `host..host + len` must be a range of guest RAM this process mapped, which nothing reads or
/// writes meanwhile (vCPUs parked), and `file` must hold at `off` the bytes the VM should see.
unsafe fn remap(
    host: u64,
    len: u64,
    file: Option<&File>,
    off: u64,
    kind: i32,
) -> std::io::Result<()> {
    // SAFETY: the caller's contract above; MAP_FIXED replaces the old pages atomically.
    let p = unsafe {
        libc::mmap(
            host as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            kind | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.map_or(-1, |f| f.as_raw_fd()),
            off as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The data extents of `file` within `start..end` (SEEK_DATA/SEEK_HOLE; files that cannot say
/// are all data).
fn data_extents(file: &File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut f = file.try_clone()?;
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        // SAFETY: plain lseek on a descriptor we own.
        let s = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
        if s < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            if e.raw_os_error() == Some(libc::EINVAL) {
                out.push((pos, end));
                break;
            }
            return Err(e);
        }
        let s = s as u64;
        if s >= end {
            break;
        }
        // SAFETY: as above.
        let e = unsafe { libc::lseek(f.as_raw_fd(), s as libc::off_t, libc::SEEK_HOLE) };
        let e = if e < 0 { end } else { (e as u64).min(end) };
        out.push((s, e));
        pos = e;
    }
    f.seek(SeekFrom::Start(0))?;
    Ok(out)
}

fn map(bytes: u64, file: Option<&File>, flags: i32) -> std::io::Result<GuestMemoryMmap> {
    let mut regions = Vec::new();
    let mut off = 0u64;
    for (gpa, len) in ram_ranges(bytes) {
        let mut b = MmapRegionBuilder::new(len as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags | libc::MAP_NORESERVE);
        if let Some(f) = file {
            b = b.with_file_offset(FileOffset::new(f.try_clone()?, off));
        }
        let region = b.build().map_err(io_err)?;
        regions.push(
            GuestRegionMmap::new(region, GuestAddress(gpa))
                .ok_or_else(|| io_err("guest RAM range overflows"))?,
        );
        off += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(io_err)
}

/// Whether this host gives memfds transparent huge pages when asked (its shmem THP setting is
/// `advise`, `within_size`, `always` or `force`; `never`, `deny` or none is no).
fn shmem_gets_huge_pages() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .is_ok_and(|s| shmem_setting_gives_huge_pages(&s))
}

fn shmem_setting_gives_huge_pages(setting: &str) -> bool {
    matches!(
        chosen(setting),
        Some("advise" | "within_size" | "always" | "force")
    )
}

/// Whether anonymous memory advised to take huge pages gets them (the THP setting is
/// `always` or `madvise`): if not, a memfd is no worse and its first fork copies nothing.
fn anonymous_gets_huge_pages() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| matches!(chosen(&s), Some("always" | "madvise")))
}

/// The bracketed choice of a sysfs setting such as `always [madvise] never`.
fn chosen(setting: &str) -> Option<&str> {
    setting
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
}

/// Anonymous RAM whose ranges start at 2 MiB-aligned addresses: KVM maps a huge page as one
/// only where guest and host addresses agree modulo its size (kernels before 6.7 do not align
/// large anonymous mappings themselves). Returns the ranges mapped, for [`GuestRam`]'s drop.
fn map_aligned_anonymous(bytes: u64) -> std::io::Result<(GuestMemoryMmap, Vec<(u64, u64)>)> {
    let mut regions = Vec::new();
    let mut owned = Vec::new();
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    for (gpa, len) in ram_ranges(bytes) {
        let span = len + HUGE;
        // SAFETY: a new anonymous mapping at an address of the kernel's choosing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = p as u64;
        let aligned = start.next_multiple_of(HUGE);
        // SAFETY: the head and tail trimmed lie in the mapping just made, outside the range
        // kept; nothing refers to them.
        unsafe {
            if aligned > start {
                libc::munmap(p, (aligned - start) as usize);
            }
            let end = aligned + len;
            if start + span > end {
                libc::munmap(end as *mut libc::c_void, (start + span - end) as usize);
            }
        }
        owned.push((aligned, len));
        // SAFETY: aligned..aligned+len is a live read-write mapping of ours, used for nothing
        // else; the region does not unmap it (GuestRam's drop empties it).
        let region = unsafe {
            MmapRegionBuilder::new(len as usize)
                .with_raw_mmap_pointer(aligned as *mut u8)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(flags)
                .build()
        }
        .map_err(io_err)?;
        regions.push(
            GuestRegionMmap::new(region, GuestAddress(gpa))
                .ok_or_else(|| io_err("guest RAM range overflows"))?,
        );
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(io_err)?;
    Ok((mem, owned))
}

fn advise_huge(mem: &GuestMemoryMmap) {
    for r in mem.iter() {
        if let Ok(host) = r.get_host_address(MemoryRegionAddress(0)) {
            // SAFETY: advice only, on a mapping of guest RAM, with its exact bounds. Huge pages
            // let KVM map guest memory 2 MiB at a time (where the host's THP settings allow
            // it); failure only loses the speed-up.
            unsafe { libc::madvise(host.cast(), r.len() as usize, libc::MADV_HUGEPAGE) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn freeze_keeps_the_image_and_private_views_diverge() {
        let mut ram = GuestRam::fresh(16 << 20, false).unwrap();
        ram.mem
            .write_obj(0x1234_5678u32, GuestAddress(0x10000))
            .unwrap();
        let frozen = ram.freeze().unwrap();
        // The VM writes after the freeze: private.
        ram.mem
            .write_obj(0xdead_beefu32, GuestAddress(0x10000))
            .unwrap();
        let clone = GuestRam::private_over(frozen.try_clone().unwrap(), 16 << 20).unwrap();
        let v: u32 = clone.mem.read_obj(GuestAddress(0x10000)).unwrap();
        assert_eq!(v, 0x1234_5678, "a clone sees the image as of the freeze");
        clone.mem.write_obj(7u32, GuestAddress(0x20000)).unwrap();
        let again = GuestRam::private_over(frozen, 16 << 20).unwrap();
        assert_eq!(again.mem.read_obj::<u32>(GuestAddress(0x20000)).unwrap(), 0);

        // A second freeze copies the private pages into a new image.
        let frozen2 = ram.freeze().unwrap();
        let c2 = GuestRam::private_over(frozen2, 16 << 20).unwrap();
        assert_eq!(
            c2.mem.read_obj::<u32>(GuestAddress(0x10000)).unwrap(),
            0xdead_beef
        );

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("mem");
        let (n, map) = c2.write_to(&f).unwrap();
        assert!(n <= 2 * PAGE, "only pages with data are written ({n})");
        assert_eq!(map.len() as u64, n / PAGE * 40);
        assert_eq!(&map[..8], &(0x10000 / PAGE).to_le_bytes());
        let back = GuestRam::private_over(File::open(&f).unwrap(), 16 << 20).unwrap();
        assert_eq!(
            back.mem.read_obj::<u32>(GuestAddress(0x10000)).unwrap(),
            0xdead_beef
        );
    }

    /// A freeze that fails after remapping some ranges is undone: what the VM sees and what
    /// later snapshots read stay as they were.
    #[test]
    fn a_failed_freeze_is_undone() {
        let bytes = 16 << 20;
        let at = GuestAddress(0x30000);
        // Shared: writes reach the memfd again.
        let ram = GuestRam::fresh(bytes, false).unwrap();
        ram.mem.write_obj(1u32, at).unwrap();
        let Backing::Shared(f) = &ram.backing else {
            unreachable!()
        };
        let frozen = f.try_clone().unwrap();
        let ranges = ram.ranges();
        let (host, len, off) = ranges[0];
        // SAFETY: our own test mapping; nothing else uses it.
        unsafe { remap(host, len, Some(&frozen), off, libc::MAP_PRIVATE) }.unwrap();
        ram.unfreeze(&ranges[..1], &frozen).unwrap();
        ram.mem.write_obj(2u32, at).unwrap();
        let mut b = [0u8; 4];
        f.read_exact_at(&mut b, 0x30000).unwrap();
        assert_eq!(
            u32::from_le_bytes(b),
            2,
            "the VM writes through to its memfd"
        );

        // Private: the data pages become the process's own, so a snapshot still finds them.
        let anon = GuestRam::anonymous(bytes).unwrap();
        anon.mem.write_obj(0xfeed_f00du32, at).unwrap();
        let copy = memfd("test", bytes).unwrap();
        copy.write_all_at(&0xfeed_f00du32.to_le_bytes(), 0x30000)
            .unwrap();
        let ranges = anon.ranges();
        let (host, len, off) = ranges[0];
        // SAFETY: as above.
        unsafe { remap(host, len, Some(&copy), off, libc::MAP_PRIVATE) }.unwrap();
        anon.unfreeze(&ranges[..1], &copy).unwrap();
        drop(copy);
        let dir = tempfile::tempdir().unwrap();
        let (n, map) = anon.write_to(&dir.path().join("mem")).unwrap();
        assert_eq!(n, PAGE, "the one data page is found");
        assert_eq!(&map[..8], &(0x30000 / PAGE).to_le_bytes());
        assert_eq!(anon.mem.read_obj::<u32>(at).unwrap(), 0xfeed_f00d);
    }

    #[test]
    fn the_host_s_shmem_setting_is_read_from_its_brackets() {
        let yes = [
            "always within_size [advise] never deny force",
            "[always] never",
            "[force]",
        ];
        for s in yes {
            assert!(shmem_setting_gives_huge_pages(s), "{s}");
        }
        let no = [
            "always within_size advise [never] deny force",
            "[deny]",
            "",
            "advise",
        ];
        for s in no {
            assert!(!shmem_setting_gives_huge_pages(s), "{s}");
        }
    }

    /// Anonymous RAM for huge pages: aligned, huge pages where the host gives them, frozen with
    /// its data pages copied and its zero pages left out.
    #[test]
    fn anonymous_ram_is_aligned_takes_huge_pages_and_freezes_by_copy() {
        let bytes = 64 << 20;
        let mut ram = GuestRam::fresh_anonymous(bytes).unwrap();
        for (host, _, _) in ram.ranges() {
            assert_eq!(host % HUGE, 0, "range at {host:#x} is not 2 MiB-aligned");
        }
        // 8 MiB written: huge pages, unless the host has transparent huge pages off.
        for mib in 0..8u64 {
            ram.mem
                .write_obj(mib as u32 + 1, GuestAddress(16 << 20 | mib << 20))
                .unwrap();
        }
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if thp.contains("[never]") || thp.is_empty() {
            starling_testkit::skip(&format!(
                "this host's transparent huge pages are off ({thp:?}): no huge page to find"
            ));
        } else {
            let (host, len, _) = ram.ranges()[0];
            let huge_kib = huge_kib_of(host, host + len);
            assert!(
                huge_kib >= 2048,
                "no huge page behind 8 MiB written into RAM advised to take them ({huge_kib} KiB)"
            );
        }
        let frozen = ram.freeze().unwrap();
        ram.mem.write_obj(99u32, GuestAddress(16 << 20)).unwrap();
        let mut b = [0u8; 4];
        frozen.read_exact_at(&mut b, 16 << 20).unwrap();
        assert_eq!(
            u32::from_le_bytes(b),
            1,
            "the image is the RAM as of the freeze"
        );
        let held: u64 = data_extents(&frozen, 0, bytes)
            .unwrap()
            .iter()
            .map(|(s, e)| e - s)
            .sum();
        // A memfd on huge pages reports whole huge pages as data.
        let most = if shmem_gets_huge_pages() {
            8 * HUGE
        } else {
            8 * PAGE
        };
        assert!(
            held <= most,
            "the frozen image holds {held} bytes of data for 8 pages written"
        );
        let dir = tempfile::tempdir().unwrap();
        let (n, _) = ram.write_to(&dir.path().join("mem")).unwrap();
        assert_eq!(n, 8 * PAGE, "a snapshot writes the 8 pages with data");
    }

    /// KiB of anonymous huge pages in this process's mapping starting at `start`.
    fn huge_kib_of(start: u64, end: u64) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let mut kib = 0;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
                    {
                        inside = a < end && b > start;
                        continue;
                    }
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix("AnonHugePages:") {
                    kib += v
                        .trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0);
                }
            }
        }
        kib
    }
}
