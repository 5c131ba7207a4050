//! Base64 (standard alphabet, padded: Go's `base64.StdEncoding`, which Kubernetes uses
//! for a Secret's `data` in JSON).

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn base64_encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes like Go's `StdEncoding` (which skips `\r` and `\n`); the error is the offset
/// Go reports as "illegal base64 data at input byte N".
pub(crate) fn base64_decode(input: &str) -> Result<Vec<u8>, usize> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut quad = [0u8; 4];
    let mut n = 0;
    let mut pad = 0;
    let mut quad_start = 0;
    let mut finished = false;
    for (i, c) in input.bytes().enumerate() {
        if c == b'\r' || c == b'\n' {
            continue;
        }
        if finished {
            return Err(i);
        }
        if n == 0 {
            quad_start = i;
        }
        if c == b'=' {
            if n < 2 {
                return Err(i);
            }
            pad += 1;
            quad[n] = 0;
        } else {
            if pad > 0 {
                return Err(i);
            }
            quad[n] = B64.iter().position(|&x| x == c).ok_or(i)? as u8;
        }
        n += 1;
        if n == 4 {
            let v = (u32::from(quad[0]) << 18)
                | (u32::from(quad[1]) << 12)
                | (u32::from(quad[2]) << 6)
                | u32::from(quad[3]);
            let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
            n = 0;
            finished = pad > 0;
        }
    }
    if n != 0 {
        return Err(quad_start);
    }
    Ok(out)
}
