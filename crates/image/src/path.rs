//! Paths inside an image: sequences of raw byte names (not necessarily UTF-8).

/// A file name as a tree may hold it: non-empty, no `/` or NUL, not `.` or `..`.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Joins components with `/`, the form hardlink targets and reports use.
pub fn join(components: &[Vec<u8>]) -> Vec<u8> {
    components.join(&b'/')
}

/// Splits a `/`-joined image path, rejecting anything that would step outside the image.
pub fn split(path: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => continue,
            c if valid_name(c) => out.push(c.to_vec()),
            _ => return None,
        }
    }
    Some(out)
}

/// For messages: the path as text, invalid UTF-8 shown escaped.
pub fn display(path: &[u8]) -> String {
    let s = String::from_utf8_lossy(path);
    if s.contains(['\n', '\u{fffd}']) {
        format!("{:?}", s)
    } else {
        s.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_refuses_escapes() {
        assert_eq!(
            split(b"./a//b/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(split(b"a/../b").is_none());
        assert!(split(b"..").is_none());
        assert_eq!(split(b"").unwrap().len(), 0);
    }
}
