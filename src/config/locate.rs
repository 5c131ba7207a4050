//! Maps between byte offsets in the TOML text and dotted key paths such as
//! `site[1].upstreams`, so every config error can name both the line and the key.
//!
//! This is a line scanner, not a second TOML parser: it only needs table headers and
//! `key =` lines, which is all a portico config uses.

/// One `key = value` line (or a table header) with the path it belongs to.
struct Entry {
    line: usize,
    start: usize,
    path: String,
}

fn entries(source: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut offset = 0;
    for (i, text) in source.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += text.len();
        let line = text.trim();
        if line.starts_with("[[") {
            let name = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            let n = counts.entry(name.to_string()).or_insert(0);
            *n += 1;
            table = indexed(name, &counts);
            // A nested array of tables (`[[site.route]]`) restarts per parent element.
            let prefix = format!("{name}.");
            counts.retain(|k, _| !k.starts_with(&prefix));
        } else if line.starts_with('[') {
            let name = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            table = indexed(name, &counts);
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim().trim_matches('"');
            if key.is_empty() || key.starts_with('#') {
                continue;
            }
            let path = if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            };
            out.push(Entry {
                line: i + 1,
                start,
                path,
            });
            continue;
        } else {
            continue;
        }
        out.push(Entry {
            line: i + 1,
            start,
            path: table.clone(),
        });
    }
    out
}

/// `site.route` with `site` seen twice and `site.route` three times → `site[1].route[2]`.
fn indexed(name: &str, counts: &std::collections::HashMap<String, usize>) -> String {
    let mut path = String::new();
    let mut so_far = String::new();
    for part in name.split('.') {
        if !so_far.is_empty() {
            so_far.push('.');
            path.push('.');
        }
        so_far.push_str(part.trim());
        path.push_str(part.trim());
        if let Some(n) = counts.get(&so_far) {
            path.push_str(&format!("[{}]", n.saturating_sub(1)));
        }
    }
    path
}

/// The 1-based line and the key path of the entry that holds byte `offset`.
pub fn at_offset(source: &str, offset: usize) -> (usize, String) {
    let all = entries(source);
    match all.iter().rev().find(|e| e.start <= offset) {
        Some(e) => (e.line, e.path.clone()),
        None => (1, String::new()),
    }
}

/// The 1-based line where `path` (or, failing that, its closest parent) is written.
pub fn line_of(source: &str, path: &str) -> usize {
    let all = entries(source);
    let mut want = path.to_string();
    loop {
        let bare = strip_index(&want);
        if let Some(e) = all.iter().find(|e| e.path == want || e.path == bare) {
            return e.line;
        }
        match want.rfind(['.', '[']) {
            Some(i) => want.truncate(i),
            None => return 1,
        }
    }
}

fn strip_index(path: &str) -> &str {
    if path.ends_with(']') {
        path.rfind('[').map_or(path, |i| &path[..i])
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "[listen]\nhttps = \"x\"\n\n[[site]]\nhosts = [\"a\"]\n\n[[site]]\nhosts = [\"b\"]\nupstreams = 3\n[[site.route]]\npath = \"/\"\n[[site.route]]\npath = 4\n";

    #[test]
    fn offsets_name_indexed_paths() {
        let off = SRC.find("upstreams").unwrap();
        assert_eq!(at_offset(SRC, off + 12), (9, "site[1].upstreams".into()));
        let off = SRC.find("path = 4").unwrap();
        assert_eq!(
            at_offset(SRC, off + 7),
            (13, "site[1].route[1].path".into())
        );
        assert_eq!(at_offset(SRC, 3), (1, "listen".into()));
    }

    #[test]
    fn paths_find_their_lines() {
        assert_eq!(line_of(SRC, "site[1].upstreams"), 9);
        assert_eq!(line_of(SRC, "site[1].hosts[0]"), 8);
        assert_eq!(line_of(SRC, "site[1].route[1].path"), 13);
        assert_eq!(line_of(SRC, "site[0].tls"), 4);
        assert_eq!(line_of(SRC, "acme.email"), 1);
    }
}
