//! aws-lc-rs' TLS 1.3 cipher suites with HKDF over a keyed HMAC that is reused.
//!
//! aws-lc-rs' own HKDF (`Prk::expand`, then `Okm::fill`) keys a fresh HMAC for every
//! expand, hashing the ipad and opad blocks again each time; a TLS 1.3 handshake does
//! some twenty expands of a handful of secrets. rustls' `HkdfUsingHmac` keys the HMAC
//! once per secret and copies the keyed state for each expand (aws-lc's `HMAC_CTX` is
//! flat: a clone is a memcpy). Only the HKDF changes: the hash, the AEADs and the
//! order of the suites are aws-lc-rs'.
//!
//! A full handshake's early secret, HKDF-Extract(0, 0), is the same for every
//! connection: it is keyed once per hash and copied.

use rustls::SupportedCipherSuite;
use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::crypto::tls13::{HkdfExpander, HkdfUsingHmac, OkmBlock, OutputLengthError};
use rustls::crypto::{self, CipherSuiteCommon};
use rustls::{CipherSuite, Tls13CipherSuite};
use std::sync::OnceLock;

static HMAC_SHA256: Hmac = Hmac(aws_lc_rs::hmac::HMAC_SHA256);
static HMAC_SHA384: Hmac = Hmac(aws_lc_rs::hmac::HMAC_SHA384);
static HKDF_SHA256: Hkdf = Hkdf::new(&HMAC_SHA256);
static HKDF_SHA384: Hkdf = Hkdf::new(&HMAC_SHA384);

static AES_256_GCM_SHA384: Tls13CipherSuite =
    with_hkdf(cipher_suite::TLS13_AES_256_GCM_SHA384, &HKDF_SHA384);
static AES_128_GCM_SHA256: Tls13CipherSuite =
    with_hkdf(cipher_suite::TLS13_AES_128_GCM_SHA256, &HKDF_SHA256);
static CHACHA20_POLY1305_SHA256: Tls13CipherSuite =
    with_hkdf(cipher_suite::TLS13_CHACHA20_POLY1305_SHA256, &HKDF_SHA256);

/// `suites` with their TLS 1.3 cipher suites swapped for the ones above, in place (so
/// the list and its order stay the provider's); a suite this module does not know is
/// kept as it is.
pub(crate) fn swap_suites(suites: &mut [SupportedCipherSuite]) {
    for suite in suites {
        let ours = match suite.suite() {
            CipherSuite::TLS13_AES_256_GCM_SHA384 => &AES_256_GCM_SHA384,
            CipherSuite::TLS13_AES_128_GCM_SHA256 => &AES_128_GCM_SHA256,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => &CHACHA20_POLY1305_SHA256,
            _ => continue,
        };
        *suite = SupportedCipherSuite::Tls13(ours);
    }
}

/// A copy of the TLS 1.3 suite `base` with `hkdf` as its HKDF (evaluated at compile
/// time: a wrong `base` fails the build, not a handshake).
const fn with_hkdf(base: SupportedCipherSuite, hkdf: &'static Hkdf) -> Tls13CipherSuite {
    let SupportedCipherSuite::Tls13(base) = base else {
        panic!("not a TLS 1.3 suite");
    };
    Tls13CipherSuite {
        common: CipherSuiteCommon {
            suite: base.common.suite,
            hash_provider: base.common.hash_provider,
            confidentiality_limit: base.common.confidentiality_limit,
        },
        hkdf_provider: hkdf,
        ..*base
    }
}

/// rustls' `HkdfUsingHmac`, but for the early secret of a handshake without a PSK.
/// Its `fips()` is false, as aws-lc-rs' own is in this build (no FIPS module): one to
/// revisit if the `fips` feature is ever turned on.
struct Hkdf {
    hmac: &'static Hmac,
    with_hmac: HkdfUsingHmac<'static>,
    /// HKDF-Extract(0, 0), keyed.
    early: OnceLock<aws_lc_rs::hmac::Key>,
}

impl Hkdf {
    const fn new(hmac: &'static Hmac) -> Self {
        Self {
            hmac,
            with_hmac: HkdfUsingHmac(hmac),
            early: OnceLock::new(),
        }
    }
}

impl crypto::tls13::Hkdf for Hkdf {
    fn extract_from_zero_ikm(&self, salt: Option<&[u8]>) -> Box<dyn HkdfExpander> {
        if salt.is_some() {
            return self.with_hmac.extract_from_zero_ikm(salt);
        }
        let early = self.early.get_or_init(|| {
            let zeroes = [0u8; crypto::hmac::Tag::MAX_LEN];
            let zeroes = &zeroes[..self.hmac.0.tag_len()];
            let salt = aws_lc_rs::hmac::Key::new(self.hmac.0, zeroes);
            let prk = aws_lc_rs::hmac::sign(&salt, zeroes);
            aws_lc_rs::hmac::Key::new(self.hmac.0, prk.as_ref())
        });
        Box::new(Expander(Key(early.clone())))
    }

    fn extract_from_secret(&self, salt: Option<&[u8]>, secret: &[u8]) -> Box<dyn HkdfExpander> {
        self.with_hmac.extract_from_secret(salt, secret)
    }

    fn expander_for_okm(&self, okm: &OkmBlock) -> Box<dyn HkdfExpander> {
        self.with_hmac.expander_for_okm(okm)
    }

    fn hmac_sign(&self, key: &OkmBlock, message: &[u8]) -> crypto::hmac::Tag {
        self.with_hmac.hmac_sign(key, message)
    }
}

/// HKDF-Expand over a keyed HMAC, as rustls' `HkdfExpanderUsingHmac` (which cannot be
/// made from a key outside rustls).
struct Expander(Key);

impl Expander {
    fn expand_unchecked(&self, info: &[&[u8]], output: &mut [u8]) {
        use crypto::hmac::Key as _;
        let mut term = crypto::hmac::Tag::new(b"");
        for (n, chunk) in output.chunks_mut(self.0.tag_len()).enumerate() {
            // At most 255 blocks: expand_slice refuses longer outputs.
            term = self.0.sign_concat(term.as_ref(), info, &[(n + 1) as u8]);
            chunk.copy_from_slice(&term.as_ref()[..chunk.len()]);
        }
    }
}

impl HkdfExpander for Expander {
    fn expand_slice(&self, info: &[&[u8]], output: &mut [u8]) -> Result<(), OutputLengthError> {
        use crypto::hmac::Key as _;
        if output.len() > 255 * self.0.tag_len() {
            return Err(OutputLengthError);
        }
        self.expand_unchecked(info, output);
        Ok(())
    }

    fn expand_block(&self, info: &[&[u8]]) -> OkmBlock {
        let mut block = [0u8; OkmBlock::MAX_LEN];
        let block = &mut block[..self.hash_len()];
        self.expand_unchecked(info, block);
        OkmBlock::new(block)
    }

    fn hash_len(&self) -> usize {
        self.0.0.algorithm().tag_len()
    }
}

/// HMAC from aws-lc-rs as rustls' `Hmac` (rustls keeps its own aws-lc one private).
struct Hmac(aws_lc_rs::hmac::Algorithm);

impl crypto::hmac::Hmac for Hmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn crypto::hmac::Key> {
        Box::new(Key(aws_lc_rs::hmac::Key::new(self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

/// A keyed HMAC: the inner and outer pads are hashed once, here, and every tag starts
/// from a copy of that state.
struct Key(aws_lc_rs::hmac::Key);

impl crypto::hmac::Key for Key {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> crypto::hmac::Tag {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.0);
        ctx.update(first);
        for part in middle {
            ctx.update(part);
        }
        ctx.update(last);
        crypto::hmac::Tag::new(ctx.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().tag_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::tls13::Hkdf;

    /// The same secrets out of both HKDFs, for each suite's hash: extract, expand to a
    /// block and to odd lengths (more than one HMAC block), and the finished HMAC.
    #[test]
    fn same_output_as_aws_lc_rs_hkdf() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let mut ours = provider.cipher_suites.clone();
        swap_suites(&mut ours);
        assert_eq!(
            ours.iter().map(|s| s.suite()).collect::<Vec<_>>(),
            provider
                .cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        );
        let mut compared = 0;
        for (theirs, ours) in provider.cipher_suites.iter().zip(&ours) {
            let (SupportedCipherSuite::Tls13(theirs), SupportedCipherSuite::Tls13(ours)) =
                (theirs, ours)
            else {
                continue;
            };
            assert!(
                !std::ptr::eq(*theirs, *ours),
                "{:?} not swapped",
                ours.common.suite
            );
            let (a, b): (&dyn Hkdf, &dyn Hkdf) = (theirs.hkdf_provider, ours.hkdf_provider);
            let salt = [7u8; 48];
            let secret = b"shared secret from the key exchange";
            let info: &[&[u8]] = &[b"tls13 ", b"c hs traffic", &[1, 2, 3]];
            for (ea, eb) in [
                (
                    a.extract_from_secret(None, secret),
                    b.extract_from_secret(None, secret),
                ),
                (
                    a.extract_from_secret(Some(&salt[..20]), secret),
                    b.extract_from_secret(Some(&salt[..20]), secret),
                ),
                (
                    a.extract_from_zero_ikm(Some(&salt)),
                    b.extract_from_zero_ikm(Some(&salt)),
                ),
                (a.extract_from_zero_ikm(None), b.extract_from_zero_ikm(None)),
                // The cached early secret again, from its copy.
                (a.extract_from_zero_ikm(None), b.extract_from_zero_ikm(None)),
            ] {
                assert_eq!(ea.hash_len(), eb.hash_len());
                let block = ea.expand_block(info);
                assert_eq!(block.as_ref(), eb.expand_block(info).as_ref());
                for len in [12, 32, 48, 100] {
                    let (mut x, mut y) = (vec![0; len], vec![0; len]);
                    ea.expand_slice(info, &mut x).unwrap();
                    eb.expand_slice(info, &mut y).unwrap();
                    assert_eq!(x, y);
                }
                let (xa, xb) = (a.expander_for_okm(&block), b.expander_for_okm(&block));
                assert_eq!(
                    xa.expand_block(info).as_ref(),
                    xb.expand_block(info).as_ref()
                );
                assert_eq!(
                    a.hmac_sign(&block, b"transcript").as_ref(),
                    b.hmac_sign(&block, b"transcript").as_ref()
                );
            }
            compared += 1;
        }
        assert_eq!(compared, 3);
    }
}
