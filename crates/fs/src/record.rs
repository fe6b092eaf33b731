//! Access recording for prefetch: the objects a workload touched, in first-touch order, so a
//! later mount can fetch them in the background before they are asked for.

use std::collections::HashSet;
use std::io::Write;
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
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        writeln!(f, "{HEADER}")?;
        for (id, len) in &g.0 {
            writeln!(f, "{} {len}", id.to_hex())?;
        }
        f.into_inner()?.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

/// Reads a prefetch list written by [`Recorder::save`].
pub fn load(path: &Path) -> Result<Vec<(ObjectId, u64)>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
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
