//! The path a route is matched on. Clients can write one path many ways (`//respond`,
//! `/./respond`, `/x/../respond`, `/%72espond`); a route meant to answer or block
//! `/respond` must see all of them as `/respond`, or it is bypassed. So routes match the
//! normalised path, as nginx's `location` does:
//!
//! - percent-encoded unreserved characters (RFC 3986 §2.3: letters, digits, `-._~`) are
//!   decoded; other escapes stay, with upper-case hex digits;
//! - empty segments are merged (`//` is `/`);
//! - dot segments are removed (RFC 3986 §5.2.4), after decoding, so `%2e%2e` is `..`.
//!
//! Refused with 400, because no normal form of them is safe to route: a path that climbs
//! above `/`, an encoded `/` (`%2F`: a segment boundary the upstream may or may not see),
//! an encoded NUL, a malformed escape, and anything that does not start with `/`.
//!
//! The upstream still gets the path exactly as the client sent it: normalising is for
//! choosing the route, not for rewriting the request.

use std::borrow::Cow;

/// Why a request path cannot be routed (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    #[error("the path must start with /")]
    NotAbsolute,
    #[error("the path climbs above /")]
    AboveRoot,
    #[error("the path has an encoded / in a segment")]
    EncodedSlash,
    #[error("the path has an encoded NUL")]
    EncodedNul,
    #[error("the path has a malformed percent escape")]
    BadEscape,
}

/// The normal form of `path` (no query), borrowed when it already is one.
pub(crate) fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Most paths need nothing: no escape, no empty segment, no segment starting with a
    // dot. Checked in one pass over the bytes.
    let bytes = path.as_bytes();
    let plain = !bytes
        .windows(2)
        .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
        && !bytes.contains(&b'%');
    if plain {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)?))
}

/// Decodes `%XX` of unreserved characters, upper-cases the hex of the others.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // Runs of plain bytes are copied as they are (the input is a str, and every
            // boundary we cut at is an ASCII '%', so the slices stay valid UTF-8).
            let end = bytes[i..]
                .iter()
                .position(|&c| c == b'%')
                .map_or(bytes.len(), |p| i + p);
            out.push_str(&path[i..end]);
            i = end;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).and_then(|c| hex(*c)),
            bytes.get(i + 2).and_then(|c| hex(*c)),
        ) else {
            return Err(PathError::BadEscape);
        };
        let c = hi << 4 | lo;
        match c {
            b'/' => return Err(PathError::EncodedSlash),
            0 => return Err(PathError::EncodedNul),
            c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                out.push(char::from(c));
            }
            c => {
                out.push('%');
                out.push(char::from(HEX[usize::from(c >> 4)]));
                out.push(char::from(HEX[usize::from(c & 0xf)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Merges empty segments and resolves `.` and `..`; a `..` at the root is an error
/// (RFC 3986 would clamp it, but a client that climbs out of `/` is probing, and the
/// upstream may resolve it against something else).
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    // Whether the result ends with `/`: a trailing empty segment, `.` or `..`.
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn the_bypasses_of_the_attack_run_are_one_path() {
        for p in [
            "/respond",
            "//respond",
            "/./respond",
            "/x/../respond",
            "/%72espond",
            "/%2e/respond",
            "///x/%2E%2E/respond",
        ] {
            assert_eq!(n(p).unwrap(), "/respond", "{p}");
        }
    }

    #[test]
    fn trailing_slashes_and_roots() {
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/a/b/").unwrap(), "/a/b/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/a/..").unwrap(), "/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a//").unwrap(), "/a/");
        assert_eq!(n("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(n("/..a/b.").unwrap(), "/..a/b.");
    }

    #[test]
    fn reserved_escapes_stay_escaped_with_upper_case_hex() {
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/a%3fb%c3%a9").unwrap(), "/a%3Fb%C3%A9");
        assert_eq!(n("/%7Euser").unwrap(), "/~user");
        assert_eq!(n("/é").unwrap(), "/é");
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../.."), Err(PathError::AboveRoot));
        assert_eq!(n("/%2e%2e/etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%00"), Err(PathError::EncodedNul));
        assert_eq!(n("/a%4"), Err(PathError::BadEscape));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
        assert_eq!(n(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/v1/x.json").unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalize("/a//b").unwrap(), Cow::Owned(_)));
    }
}
