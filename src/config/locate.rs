//! Where a config error is: the 1-based line and the key path (`site[1].upstreams`)
//! of a byte offset or of a path, taken from the spans of the TOML parser itself, so
//! a message points at exactly what the parser saw.
//!
//! Array-of-tables elements (`[[site]]`) carry the span of their header; tables carry
//! the span of their header too, so "the table a line belongs to" is the table whose
//! header starts last before it.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A parsed document kept for locating errors. Parsing is best effort: a document with
/// a syntax error still yields what came before the error.
pub(super) struct Located<'a> {
    text: &'a str,
    root: DeTable<'a>,
}

impl<'a> Located<'a> {
    pub(super) fn new(text: &'a str) -> Located<'a> {
        let (root, _) = DeTable::parse_recoverable(text);
        Located {
            text,
            root: root.into_inner(),
        }
    }

    /// The 1-based line of byte `offset`.
    pub(super) fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        // Byte search: an offset inside a multi-byte character still counts its line.
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The key path of the innermost key or value that holds `offset`; for an offset
    /// outside every entry (a syntax error between keys), the table it is written in.
    pub(super) fn path_at(&self, offset: usize) -> String {
        let mut inside: Option<String> = None;
        let mut table: Option<(usize, String)> = None;
        walk(&self.root, "", &mut |entry: Entry<'_>| {
            if contains(&entry.key, offset) || contains(&entry.value, offset) {
                // Visits go depth first: the innermost entry is seen last.
                inside = Some(entry.path.to_string());
            }
            if entry.is_table
                && entry.value.start <= offset
                && table
                    .as_ref()
                    .is_none_or(|(start, _)| entry.value.start >= *start)
            {
                table = Some((entry.value.start, entry.path.to_string()));
            }
        });
        inside.or(table.map(|(_, path)| path)).unwrap_or_default()
    }

    /// The line where `path` is written, or its closest written parent; line 1 when
    /// nothing of it is in the file.
    pub(super) fn line_of(&self, path: &str) -> usize {
        let mut want = path.to_string();
        loop {
            if let Some(span) = self.span_of(&want) {
                return self.line(span.start);
            }
            match want.rfind(['.', '[']) {
                Some(i) => want.truncate(i),
                None => return 1,
            }
        }
    }

    /// The span of the key at `path` (`site[1].route[0].path`): of the key itself for a
    /// table entry, of the element for an array index.
    fn span_of(&self, path: &str) -> Option<Range<usize>> {
        let mut table = &self.root;
        let mut value: Option<&Spanned<DeValue<'_>>> = None;
        let mut span = None;
        for segment in path.split('.') {
            let (name, indexes) = split_indexes(segment)?;
            if let Some(v) = value {
                table = match v.get_ref() {
                    DeValue::Table(t) => t,
                    _ => return None,
                };
            }
            let (key, found) = table.get_key_value(name)?;
            span = Some(key.span());
            value = Some(found);
            for index in indexes {
                let DeValue::Array(items) = value?.get_ref() else {
                    return None;
                };
                let item = items.get(index)?;
                span = Some(item.span());
                value = Some(item);
            }
        }
        span
    }
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    // An empty span (the parser's mark for "here") holds the offset it points at.
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// One entry of the document as [`walk`] visits it. A table's value span is its header
/// (`[listen]`, `[[site]]`) or, inline, the whole `{ ... }`.
struct Entry<'p> {
    path: &'p str,
    key: Range<usize>,
    value: Range<usize>,
    is_table: bool,
}

/// Visits every entry depth first; array elements come with their index in the path
/// and their own span as both key and value span.
fn walk(table: &DeTable<'_>, prefix: &str, visit: &mut dyn FnMut(Entry<'_>)) {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        visit(Entry {
            path: &path,
            key: key.span(),
            value: value.span(),
            is_table: matches!(value.get_ref(), DeValue::Table(_)),
        });
        walk_value(value, &path, visit);
    }
}

fn walk_value(value: &Spanned<DeValue<'_>>, path: &str, visit: &mut dyn FnMut(Entry<'_>)) {
    match value.get_ref() {
        DeValue::Table(t) => walk(t, path, visit),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{path}[{i}]");
                visit(Entry {
                    path: &path,
                    key: item.span(),
                    value: item.span(),
                    is_table: matches!(item.get_ref(), DeValue::Table(_)),
                });
                walk_value(item, &path, visit);
            }
        }
        _ => {}
    }
}

/// `route[1][2]` → (`route`, [1, 2]).
fn split_indexes(segment: &str) -> Option<(&str, Vec<usize>)> {
    let mut parts = segment.split('[');
    let name = parts.next()?;
    let mut indexes = Vec::new();
    for part in parts {
        indexes.push(part.strip_suffix(']')?.parse().ok()?);
    }
    Some((name, indexes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "[listen]\nhttps = \"x\"\n\n[[site]]\nhosts = [\"a\"]\n\n[[site]]\nhosts = [\"b\"]\nupstreams = 3\n[[site.route]]\npath = \"/\"\n[[site.route]]\npath = 4\n";

    #[test]
    fn offsets_name_indexed_paths() {
        let doc = Located::new(SRC);
        let off = SRC.find("upstreams").unwrap();
        assert_eq!(doc.line(off), 9);
        assert_eq!(doc.path_at(off + 12), "site[1].upstreams");
        let off = SRC.find("path = 4").unwrap();
        assert_eq!(doc.line(off), 13);
        assert_eq!(doc.path_at(off + 7), "site[1].route[1].path");
        assert_eq!(doc.path_at(3), "listen");
        // Between entries: the table the line is written in.
        let off = SRC.find("\n[[site.route]]").unwrap();
        assert_eq!(doc.path_at(off), "site[1]");
    }

    #[test]
    fn paths_find_their_lines() {
        let doc = Located::new(SRC);
        assert_eq!(doc.line_of("site[1].upstreams"), 9);
        assert_eq!(doc.line_of("site[1].hosts[0]"), 8);
        assert_eq!(doc.line_of("site[1].route[1].path"), 13);
        assert_eq!(doc.line_of("site[0].tls"), 4);
        assert_eq!(doc.line_of("acme.email"), 1);
    }

    #[test]
    fn a_syntax_error_on_the_last_line_is_that_line_in_the_last_table() {
        let text = format!("{SRC}this line is not toml\n");
        let (_, errors) = DeTable::parse_recoverable(&text);
        let at = errors[0].span().unwrap().start;
        let doc = Located::new(&text);
        assert_eq!(doc.line(at), 14);
        assert_eq!(doc.path_at(at), "site[1].route[1]");
    }
}
