//! Access recording for prefetch: the objects a workload touched, in first-touch order, so a
//! later mount can fetch them in the background before they are asked for.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use starling_store::ObjectId;

#[derive(Default)]
pub struct Recorder {
    inner: Mutex<Touched>,
}

/// Objects in first-touch order, and the set of those seen.
type Touched = (Vec<(ObjectId, u64)>, HashSet<ObjectId>);

/// Prefetch list file format: a header line, then `HEX-ID MAX-LEN` per object.
const HEADER: &str = "starling-prefetch 1";

impl Recorder {
    pub fn touch(&self, id: &ObjectId, max_len: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.1.insert(*id) {
            g.0.push((*id, max_len));
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the list (atomically: temporary file, then rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let tmp = path.with_extension("tmp");
        // Made new, never opened through what is there (a FIFO would hold the writer until
        // someone reads it; a link would send the list elsewhere): a leftover is removed
        // first.
        let _ = std::fs::remove_file(&tmp);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        let mut f = std::io::BufWriter::new(file);
        writeln!(f, "{HEADER}")?;
        for (id, len) in &g.0 {
            writeln!(f, "{} {len}", id.to_hex())?;
        }
        f.into_inner()?.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

/// The largest prefetch list read (a line is about 80 bytes: millions of objects).
const MAX_LIST: u64 = 256 << 20;

/// A list file's bytes: a regular file (opened without waiting: a FIFO would hold the
/// reader until someone writes), at most [`MAX_LIST`].
fn read_list(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_LIST {
        return Err(std::io::Error::other(format!(
            "{} bytes, more than a prefetch list's {MAX_LIST}",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    f.take(MAX_LIST).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads a prefetch list written by [`Recorder::save`].
pub fn load(path: &Path) -> Result<Vec<(ObjectId, u64)>, String> {
    let bytes = read_list(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let not_list = || {
        format!(
            "{}: not a prefetch list (its first line is not {HEADER:?})",
            path.display()
        )
    };
    if !bytes.starts_with(format!("{HEADER}\n").as_bytes()) {
        return Err(not_list());
    }
    let text = String::from_utf8(bytes).map_err(|_| not_list())?;
    let mut lines = text.lines();
    lines.next();
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let bad = || format!("{} line {}: expected `ID LEN`", path.display(), i + 2);
            let (id, len) = l.split_once(' ').ok_or_else(bad)?;
            Ok((
                id.parse().map_err(|_| bad())?,
                len.trim().parse().map_err(|_| bad())?,
            ))
        })
        .collect()
}
