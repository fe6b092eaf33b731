//! A bound on the tar extension entries the `tar` crate reads wholly into memory.
//!
//! `tar::Archive` reads a GNU long name ('L'), GNU long link ('K') or PAX extended header
//! ('x') entry with `read_to_end` and no limit: a header declaring 8 GiB makes it allocate as
//! much as the stream yields (and a few KiB of gzip inflate to that). [`TarBound`] sits between
//! the (decompressed) stream and the archive, follows tar's 512-byte framing as the bytes pass
//! (changing none of them), and fails with `InvalidData` when an 'L', 'K', 'x' or 'g' header
//! declares more than [`MAX_EXTENSION`] bytes.
//!
//! The framing is followed as `tar` 0.4 reads it: a header block, then its data rounded up to
//! 512 bytes, the data size being the header's (octal or GNU base-256) unless a PAX 'x' entry
//! before it has a `size` record; an old GNU sparse ('S') header marked extended is followed by
//! extension blocks before its data; the first all-zero block ends the archive. What follows
//! the end, and everything after a header that does not parse (bad checksum or size field),
//! passes unexamined: `tar` refuses such an archive itself.

use std::io::{self, Read};

/// The most an extension entry may declare. GNU tar's long names are a few KiB at most; PAX
/// headers hold a path, a link target, times, ids and xattrs.
pub(crate) const MAX_EXTENSION: u64 = 1 << 20;

const BLOCK: usize = 512;

/// A tar archive reading `r` through a [`TarBound`].
pub(crate) fn archive<R: Read>(r: R) -> tar::Archive<TarBound<R>> {
    tar::Archive::new(TarBound::new(r))
}

/// A reader passing a tar stream through unchanged, failing when an extension entry declares
/// more than its cap.
pub(crate) struct TarBound<R> {
    inner: R,
    cap: u64,
    state: State,
    /// The header or sparse extension block being gathered.
    block: [u8; BLOCK],
    filled: usize,
    /// The records of a PAX 'x' entry, until the entry they describe.
    pax: Option<Vec<u8>>,
    /// Why the stream was refused: every read after that fails with it.
    refused: Option<String>,
}

enum State {
    /// Gathering a header block.
    Header,
    /// Gathering old GNU sparse extension blocks; `data` bytes (padding included) follow them.
    SparseExt { data: u64 },
    /// Passing `left` bytes of an entry's data and padding; a PAX 'x' entry's first `keep`
    /// bytes (its records) are kept in `kept`.
    Data {
        left: u64,
        keep: usize,
        kept: Option<Vec<u8>>,
    },
    /// Past the end of the archive, or lost in it: bytes pass unexamined.
    Off,
}

impl<R: Read> TarBound<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self::with_cap(inner, MAX_EXTENSION)
    }

    pub(crate) fn with_cap(inner: R, cap: u64) -> Self {
        TarBound {
            inner,
            cap,
            state: State::Header,
            block: [0; BLOCK],
            filled: 0,
            pax: None,
            refused: None,
        }
    }

    /// Follows the framing over `bytes`, the next bytes of the stream.
    fn observe(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Off => return Ok(()),
                State::Data { left, keep, kept } => {
                    let n = bytes
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    if let Some(kept) = kept {
                        let more = (*keep - kept.len()).min(n);
                        kept.extend_from_slice(&bytes[..more]);
                    }
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        if let Some(kept) = kept.take() {
                            self.pax = Some(kept);
                        }
                        self.state = State::Header;
                    }
                }
                State::Header | State::SparseExt { .. } => {
                    let n = bytes.len().min(BLOCK - self.filled);
                    self.block[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                    self.filled += n;
                    bytes = &bytes[n..];
                    if self.filled == BLOCK {
                        self.filled = 0;
                        self.state = match self.state {
                            State::SparseExt { data } => self.sparse_ext(data),
                            _ => self.header()?,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// The state after the header in `self.block`, as `tar`'s `next_entry` reads it.
    fn header(&mut self) -> Result<State, String> {
        if self.block.iter().all(|&b| b == 0) {
            return Ok(State::Off);
        }
        let h = tar::Header::from_byte_slice(&self.block);
        let sum = self.block[..148]
            .iter()
            .chain(&self.block[156..])
            .fold(8 * 32, |a, &b| a + u32::from(b));
        if h.cksum().ok() != Some(sum) {
            return Ok(State::Off);
        }
        let Ok(declared) = h.entry_size() else {
            return Ok(State::Off);
        };
        let t = h.entry_type();
        let kind = if t.is_gnu_longname() {
            Some("GNU long name")
        } else if t.is_gnu_longlink() {
            Some("GNU long link name")
        } else if t.is_pax_local_extensions() {
            Some("PAX extended header")
        } else if t.is_pax_global_extensions() {
            Some("PAX global header")
        } else {
            None
        };
        if let Some(kind) = kind {
            if declared > self.cap {
                return Err(format!(
                    "tar entry: a {kind} of {declared} bytes (more than {})",
                    self.cap
                ));
            }
        }
        // `tar` keeps a PAX entry's records for the next entry that is not an extension
        // entry, whose size a `size` record overrides; it reads 'L', 'K' and 'x' entries as
        // extensions only in a ustar or GNU header, and hands any other entry on, with the
        // records.
        let recognized = h.as_ustar().is_some() || h.as_gnu().is_some();
        let size = match (kind, &self.pax) {
            (None, Some(records)) => pax_size(records).unwrap_or(declared),
            _ => declared,
        };
        let swallowed = recognized
            && (t.is_gnu_longname() || t.is_gnu_longlink() || t.is_pax_local_extensions());
        if !swallowed {
            self.pax = None;
        }
        let Some(padded) = size.checked_add(BLOCK as u64 - 1) else {
            return Ok(State::Off);
        };
        let data = padded & !(BLOCK as u64 - 1);
        if !swallowed && t.is_gnu_sparse() {
            return Ok(match h.as_gnu() {
                Some(g) if g.is_extended() => State::SparseExt { data },
                Some(_) => self.data(data, None, 0),
                None => State::Off,
            });
        }
        // A PAX entry's records are kept: they were checked to be at most the cap.
        if swallowed && t.is_pax_local_extensions() {
            let keep = declared as usize;
            return Ok(self.data(data, Some(Vec::with_capacity(keep)), keep));
        }
        Ok(self.data(data, None, 0))
    }

    /// The state after the sparse extension block in `self.block`.
    fn sparse_ext(&mut self, data: u64) -> State {
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.as_mut_bytes().copy_from_slice(&self.block);
        if ext.is_extended() {
            State::SparseExt { data }
        } else {
            self.data(data, None, 0)
        }
    }

    /// The state for `left` bytes of data (padding included), keeping the first `keep` (a PAX
    /// entry's records) in `kept`.
    fn data(&mut self, left: u64, kept: Option<Vec<u8>>, keep: usize) -> State {
        if left == 0 {
            if kept.is_some() {
                self.pax = kept;
            }
            return State::Header;
        }
        State::Data { left, keep, kept }
    }
}

/// The `size` record of PAX records, as `tar` finds it: the first, if every record before it
/// parses and its value is a number.
fn pax_size(records: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(records) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for TarBound<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = &self.refused {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
        }
        let n = self.inner.read(buf)?;
        if let Err(why) = self.observe(&buf[..n]) {
            self.refused = Some(why.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Cursor, Read};
    use std::path::Path;

    use tar::{EntryType, Header};

    use super::*;

    pub(crate) const GIB8: u64 = 8 << 30;

    /// A header of `kind` for `path` declaring `size` (base-256 past 8 GiB - 1), checksummed.
    pub(crate) fn header(kind: EntryType, path: &str, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h.set_cksum();
        h
    }

    /// What `b` wrote, without the two zero blocks that end an archive.
    pub(crate) fn unended(b: tar::Builder<Vec<u8>>) -> Vec<u8> {
        let mut bytes = b.into_inner().unwrap();
        bytes.truncate(bytes.len() - 1024);
        bytes
    }

    /// `bytes`, then `bomb`'s header.
    fn then(mut bytes: Vec<u8>, bomb: &Header) -> Vec<u8> {
        bytes.extend_from_slice(bomb.as_bytes());
        bytes
    }

    /// An archive's bytes: a file `a` holding "abc", then `bomb`'s header.
    pub(crate) fn bomb_prefix(bomb: &Header) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header(EntryType::Regular, "a", 3), &b"abc"[..])
            .unwrap();
        then(unended(b), bomb)
    }

    /// `prefix`, then zeros without end, counting what is read; past `limit` bytes it fails
    /// (a bound that did not hold fails the test rather than filling memory).
    pub(crate) struct Endless {
        prefix: Cursor<Vec<u8>>,
        pub consumed: u64,
        limit: u64,
    }

    impl Endless {
        pub(crate) fn new(prefix: Vec<u8>) -> Self {
            Endless {
                prefix: Cursor::new(prefix),
                consumed: 0,
                limit: 64 << 20,
            }
        }
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.consumed > self.limit {
                return Err(io::Error::other("read past the test's limit"));
            }
            let mut n = self.prefix.read(buf)?;
            if n == 0 {
                n = buf.len();
                buf.fill(0);
            }
            self.consumed += n as u64;
            Ok(n)
        }
    }

    /// A reader handing out at most `chunk` bytes a call: headers span reads.
    struct Dribble<R>(R, usize);

    impl<R: Read> Read for Dribble<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1);
            self.0.read(&mut buf[..n])
        }
    }

    /// What `tar` makes of an archive: each entry's type, path, link, size, PAX records and
    /// content; or its error.
    type Listing = Vec<(u8, Vec<u8>, Option<Vec<u8>>, u64, Vec<u8>, Vec<u8>)>;

    fn list<R: Read>(mut ar: tar::Archive<R>) -> io::Result<Listing> {
        let mut out = Vec::new();
        for e in ar.entries()? {
            let mut e = e?;
            let pax = match e.pax_extensions()? {
                Some(exts) => exts
                    .flat_map(|x| {
                        let x = x.unwrap();
                        [x.key_bytes(), b"=", x.value_bytes(), b"\n"].concat()
                    })
                    .collect(),
                None => Vec::new(),
            };
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            out.push((
                e.header().entry_type().as_byte(),
                e.path_bytes().into_owned(),
                e.link_name_bytes().map(|l| l.into_owned()),
                e.size(),
                pax,
                data,
            ));
        }
        Ok(out)
    }

    /// The first error reading `bytes` (then zeros) through the bound, and how much of the
    /// source that took.
    fn refusal(bytes: Vec<u8>) -> (io::Error, u64) {
        let mut src = Endless::new(bytes);
        let err = list(archive(&mut src)).unwrap_err();
        (err, src.consumed)
    }

    /// `bytes` pass the bound unchanged, in reads of any size, and `tar` lists the same
    /// entries through it as without it. Returns the listing.
    fn passes(bytes: &[u8]) -> Listing {
        for chunk in [1, 7, 512, 4096, 1 << 20] {
            let mut out = Vec::new();
            TarBound::new(Dribble(bytes, chunk))
                .read_to_end(&mut out)
                .unwrap();
            assert!(out == bytes, "bytes changed in reads of {chunk}");
        }
        let plain = list(tar::Archive::new(bytes)).unwrap();
        let bounded = list(archive(Dribble(bytes, 100))).unwrap();
        assert_eq!(plain, bounded);
        plain
    }

    #[test]
    fn an_8_gib_gnu_long_name_is_refused_after_its_header() {
        let bytes = bomb_prefix(&header(EntryType::GNULongName, "././@LongLink", GIB8));
        let len = bytes.len() as u64;
        let (err, consumed) = refusal(bytes);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            err.to_string(),
            "tar entry: a GNU long name of 8589934592 bytes (more than 1048576)"
        );
        assert!(consumed <= len + 4 * 512, "{consumed} bytes read");
    }

    #[test]
    fn an_8_gib_gnu_long_link_or_pax_header_is_refused_after_its_header() {
        for (kind, what) in [
            (EntryType::GNULongLink, "GNU long link name"),
            (EntryType::XHeader, "PAX extended header"),
            (EntryType::XGlobalHeader, "PAX global header"),
        ] {
            let bytes = bomb_prefix(&header(kind, "././@LongLink", GIB8));
            let len = bytes.len() as u64;
            let (err, consumed) = refusal(bytes);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert_eq!(
                err.to_string(),
                format!("tar entry: a {what} of 8589934592 bytes (more than 1048576)")
            );
            assert!(consumed <= len + 4 * 512, "{what}: {consumed} bytes read");
        }
    }

    #[test]
    fn an_octal_size_past_the_cap_is_refused_and_one_at_it_passes() {
        let name = |n: usize| {
            let mut b = tar::Builder::new(Vec::new());
            let mut long = vec![b'n'; n - 1];
            long.push(0);
            b.append(
                &header(EntryType::GNULongName, "././@LongLink", n as u64),
                &long[..],
            )
            .unwrap();
            b.append(&header(EntryType::Regular, "short", 1), &b"x"[..])
                .unwrap();
            b.into_inner().unwrap()
        };
        let at = name(4096);
        let mut out = Vec::new();
        TarBound::with_cap(&at[..], 4096)
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == at);
        let over = name(4097);
        let err = TarBound::with_cap(&over[..], 4096)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tar entry: a GNU long name of 4097 bytes (more than 4096)"
        );
    }

    /// A PAX 'x' entry holding `records`.
    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions(records.iter().map(|(k, v)| (*k, v.as_bytes())))
            .unwrap();
        unended(b)
    }

    #[test]
    fn a_pax_size_record_overrides_the_header_size() {
        // The header says 0 bytes, the PAX record 1024: the 8 GiB long-name header in the
        // file's data is data, and passes.
        let bomb = header(EntryType::GNULongName, "././@LongLink", GIB8);
        let mut bytes = pax(&[("size", "1024")]);
        bytes.extend_from_slice(header(EntryType::Regular, "f", 0).as_bytes());
        bytes.extend_from_slice(bomb.as_bytes());
        bytes.extend_from_slice(&[7; 512]);
        bytes.extend_from_slice(header(EntryType::Regular, "g", 0).as_bytes());
        bytes.extend_from_slice(&[0; 1024]);
        let listing = passes(&bytes);
        assert_eq!(listing.len(), 2);
        assert_eq!(listing[0].3, 1024);
        assert_eq!(&listing[0].5[..512], bomb.as_bytes());

        // The header says 1024, the PAX record 0: the next header is the bomb.
        let mut bytes = pax(&[("mtime", "1.5"), ("size", "0")]);
        bytes.extend_from_slice(header(EntryType::Regular, "f", 1024).as_bytes());
        let (err, _) = refusal(then(bytes, &bomb));
        assert_eq!(
            err.to_string(),
            "tar entry: a GNU long name of 8589934592 bytes (more than 1048576)"
        );
    }

    /// An old GNU sparse file: 512 bytes of 'a' at 0, 512 of 'b' at 2048 (the second in an
    /// extension block), 2560 bytes in all.
    fn sparse() -> Vec<u8> {
        let mut h = header(EntryType::GNUSparse, "sparse", 1024);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].set_offset(0);
        gnu.sparse[0].set_length(512);
        gnu.set_is_extended(true);
        gnu.set_real_size(2560);
        h.set_cksum();
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.sparse[0].set_offset(2048);
        ext.sparse[0].set_length(512);
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(ext.as_bytes());
        bytes.extend_from_slice(&[b'a'; 512]);
        bytes.extend_from_slice(&[b'b'; 512]);
        bytes
    }

    #[test]
    fn old_gnu_sparse_extension_blocks_come_before_the_data() {
        let mut bytes = sparse();
        bytes.extend_from_slice(header(EntryType::Regular, "after", 0).as_bytes());
        bytes.extend_from_slice(&[0; 1024]);
        let listing = passes(&bytes);
        assert_eq!(listing.len(), 2);
        assert_eq!(listing[0].5.len(), 2560);
        assert_eq!(listing[0].5[2048], b'b');

        let bomb = header(EntryType::GNULongName, "././@LongLink", GIB8);
        let (err, _) = refusal(then(sparse(), &bomb));
        assert_eq!(
            err.to_string(),
            "tar entry: a GNU long name of 8589934592 bytes (more than 1048576)"
        );
    }

    #[test]
    fn after_the_end_or_a_header_that_does_not_parse_nothing_is_examined() {
        let bomb = header(EntryType::GNULongName, "././@LongLink", GIB8);
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header(EntryType::Regular, "a", 3), &b"abc"[..])
            .unwrap();
        let ended = b.into_inner().unwrap();
        let mut corrupt = header(EntryType::Regular, "f", 0);
        corrupt.as_mut_bytes()[0] ^= 1;
        for prefix in [ended, corrupt.as_bytes().to_vec()] {
            let bytes = then(prefix, &bomb);
            let mut out = Vec::new();
            TarBound::new(&bytes[..]).read_to_end(&mut out).unwrap();
            assert!(out == bytes);
        }
    }

    /// A builder holding a long name ('L'), a long link target ('K') and a PAX header ('x'):
    /// `long` (content "hello"), `link` to `target`, `with-pax` (an xattr, mtime 12.5).
    pub(crate) fn with_extensions(long: &str, target: &str) -> tar::Builder<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(EntryType::Regular, "x", 5);
        b.append_data(&mut h, long, &b"hello"[..]).unwrap();
        let mut h = header(EntryType::Symlink, "x", 0);
        b.append_link(&mut h, "link", target).unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.a", &b"1"[..]), ("mtime", &b"12.5"[..])])
            .unwrap();
        b.append(&header(EntryType::Regular, "with-pax", 2), &b"hi"[..])
            .unwrap();
        b
    }

    #[test]
    fn archives_the_tar_crate_builds_pass_unchanged() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        let target = format!("/{}", "t".repeat(200));
        let mut b = with_extensions(&long, &target);
        let mut g = header(EntryType::XGlobalHeader, "pax_global_header", 0);
        let comment = b"17 comment=hello\n";
        g.set_size(comment.len() as u64);
        g.set_cksum();
        b.append(&g, &comment[..]).unwrap();
        b.append(&header(EntryType::Regular, "last", 600), &[9u8; 600][..])
            .unwrap();
        let bytes = b.into_inner().unwrap();
        assert!(bytes.windows(13).any(|w| w == b"././@LongLink"));
        let listing = passes(&bytes);
        let paths: Vec<&[u8]> = listing.iter().map(|e| &e.1[..]).collect();
        assert_eq!(
            paths,
            [
                long.as_bytes(),
                b"link",
                b"with-pax",
                b"pax_global_header",
                b"last"
            ]
        );
        assert_eq!(listing[1].2.as_deref(), Some(target.as_bytes()));
        assert_eq!(listing[2].4, b"SCHILY.xattr.user.a=1\nmtime=12.5\n");
    }

    #[test]
    fn archives_gnu_tar_makes_pass_unchanged() {
        let gnu_tar = std::process::Command::new("tar")
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GNU tar"));
        if !gnu_tar {
            starling_testkit::skip("GNU tar is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let deep = tree.join("d".repeat(90)).join("e".repeat(90));
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f".repeat(120)), "hello\n").unwrap();
        std::os::unix::fs::symlink(deep.join("f".repeat(120)), tree.join("link")).unwrap();
        let one = dir.path().join("one");
        std::fs::create_dir_all(&one).unwrap();
        std::fs::write(one.join("sized"), vec![b's'; 3000]).unwrap();
        // 30 runs of data: an old GNU sparse header and extension blocks.
        let f = std::fs::File::create(tree.join("sparse")).unwrap();
        for i in 0..30u64 {
            std::os::unix::fs::FileExt::write_all_at(&f, &[b'x'; 100], i << 16).unwrap();
        }
        f.set_len(30 << 16).unwrap();
        let tar = |name: &str, from: &Path, what: &str, args: &[&str]| {
            let out = dir.path().join(name);
            let st = std::process::Command::new("tar")
                .args(args)
                .arg("-cf")
                .arg(&out)
                .arg("-C")
                .arg(from)
                .arg(what)
                .status()
                .unwrap();
            assert!(st.success(), "tar {args:?}");
            std::fs::read(out).unwrap()
        };
        let pax = tar("pax.tar", &tree, ".", &["--format=pax"]);
        // A size record for the one file (GNU tar writes its own past 8 GiB).
        let sized = tar(
            "sized.tar",
            &one,
            "sized",
            &["--format=pax", "--pax-option=size:=3000"],
        );
        let gnu = tar("gnu.tar", &tree, ".", &["--format=gnu", "--sparse"]);
        assert!(pax.windows(5).any(|w| w == b"path="));
        assert!(sized.windows(10).any(|w| w == b"size=3000\n"));
        assert!(gnu.windows(13).any(|w| w == b"././@LongLink"));
        let sized = passes(&sized);
        assert!(sized.len() == 1 && sized[0].3 == 3000 && sized[0].5 == [b's'; 3000]);
        let pax = passes(&pax);
        assert_eq!(pax.len(), 6, "{pax:?}");
        let sparse = passes(&gnu)
            .into_iter()
            .find(|e| e.1.ends_with(b"sparse"))
            .unwrap();
        assert_eq!(sparse.0, b'S');
        assert_eq!(sparse.5.len(), 30 << 16);
    }
}
