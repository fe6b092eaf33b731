//! Debian control-file syntax (RFC 822-like paragraphs) as dpkg's status file and .deb control
//! members use it: `Field: value`, continuation lines start with a space or tab, paragraphs are
//! separated by blank lines. Field names compare case-insensitively; order is kept so a
//! rewritten paragraph reads like dpkg's.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paragraph {
    pub fields: Vec<(String, String)>,
}

impl Paragraph {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets a field, in place if present, else at the end.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self
            .fields
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(f) => f.1 = value,
            None => self.fields.push((name.to_string(), value)),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.fields.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// The paragraph in control syntax, ending with a newline (no blank line).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.fields {
            out.push_str(k);
            out.push(':');
            let mut lines = v.split('\n');
            if let Some(first) = lines.next() {
                if !first.is_empty() {
                    out.push(' ');
                    out.push_str(first);
                }
            }
            out.push('\n');
            for l in lines {
                out.push(' ');
                out.push_str(if l.is_empty() { "." } else { l });
                out.push('\n');
            }
        }
        out
    }
}

/// Parses paragraphs; `Err` names the line that is not control syntax.
pub fn parse(text: &str) -> Result<Vec<Paragraph>, String> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let Some(last) = cur.fields.last_mut() else {
                return Err(format!("line {}: continuation line without a field", n + 1));
            };
            let l = line[1..].trim_end();
            last.1.push('\n');
            last.1.push_str(if l == "." { "" } else { l });
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(format!("line {}: {line:?} is not `Field: value`", n + 1));
        };
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(format!("line {}: bad field name {k:?}", n + 1));
        }
        cur.fields.push((k.to_string(), v.trim().to_string()));
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let text = "Package: a\nStatus: install ok installed\nDescription: short\n long line\n .\n more\n\nPackage: b\nVersion: 1.0\n";
        let ps = parse(text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].get("status"), Some("install ok installed"));
        assert_eq!(ps[0].get("Description"), Some("short\nlong line\n\nmore"));
        let again = ps.iter().map(|p| p.render()).collect::<Vec<_>>().join("\n");
        assert_eq!(again, text);
        assert!(parse("no colon here\n").is_err());
        assert!(parse(" leading continuation\n").is_err());
    }
}
