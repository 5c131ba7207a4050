//! `portico trust` and `portico untrust`: the local CA's root (`tls = "internal"`,
//! `<storage.path>/ca/root.pem`) in the system trust store, so browsers and curl on this
//! machine accept what portico serves for local names without `--cacert`. Outside the
//! request and certificate paths: only the CLI calls it, after the CA exists.
//!
//! Debian and its derivatives (where `update-ca-certificates` exists): the root is
//! copied to `/usr/local/share/ca-certificates/portico-local-ca-<h>.crt` (`<h>`: the first
//! 16 hex digits of the SHA-256 of the root's DER, so the name is stable for one root
//! and two data folders do not collide) and `update-ca-certificates` rebuilds
//! `/etc/ssl/certs/ca-certificates.crt`; `untrust` removes the file and runs it again
//! with `--fresh`, which also drops the stale link. Elsewhere nothing is changed and
//! [`TrustError::Unsupported`] carries the commands to run by hand.
//!
//! [`TrustStore::under`] lays the same folders out under another root (tests, image
//! builds): `update-ca-certificates` takes each of its folders as an option.

use std::path::{Path, PathBuf};
use std::process::Command;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why the root could not be (un)installed.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The root file could not be read as a PEM certificate.
    #[error("{path}: cannot read the local CA's root certificate (does a site use tls = \"internal\", and has portico run once?)", path = .path.display())]
    Root {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A file or folder of the trust store could not be written.
    #[error("{path}: cannot write to the trust store (run as root: sudo portico trust)", path = .path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `update-ca-certificates` could not be run, or failed.
    #[error("update-ca-certificates failed: {output}")]
    Update {
        /// What it wrote.
        output: String,
        /// Why it could not run, when it could not.
        #[source]
        source: Option<std::io::Error>,
    },
    /// Not a system portico knows how to change; the message says what to do.
    #[error("no update-ca-certificates on this system; to trust the root by hand:\n{instructions}")]
    Unsupported {
        /// The commands for other systems.
        instructions: String,
    },
}

/// A Debian-style trust store: `/`, or the same layout under another folder.
#[derive(Debug, Clone)]
pub struct TrustStore {
    /// `/` for the system's.
    root: PathBuf,
}

/// What `trust` or `untrust` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The `.crt` file added or removed.
    pub file: PathBuf,
    /// The bundle that `update-ca-certificates` rebuilt (what curl and OpenSSL read).
    pub bundle: PathBuf,
    /// False when there was nothing to do (already installed, or not installed).
    pub changed: bool,
}

impl TrustStore {
    /// The system's trust store.
    pub fn system() -> TrustStore {
        TrustStore { root: "/".into() }
    }

    /// A trust store laid out like `/` under `root`; its folders are created. A relative
    /// `root` is taken from the current directory (`update-ca-certificates` changes
    /// directory before it writes).
    pub fn under(root: &Path) -> TrustStore {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.into());
        TrustStore { root }
    }

    fn is_system(&self) -> bool {
        self.root == Path::new("/")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Where locally added roots go (`/usr/local/share/ca-certificates`).
    pub fn local_dir(&self) -> PathBuf {
        self.path("usr/local/share/ca-certificates")
    }

    /// The bundle `update-ca-certificates` writes (`/etc/ssl/certs/ca-certificates.crt`).
    pub fn bundle(&self) -> PathBuf {
        self.path("etc/ssl/certs/ca-certificates.crt")
    }

    /// Installs the root in `root_pem`.
    pub fn trust(&self, root_pem: &Path) -> Result<Changed, TrustError> {
        let program = update_program(root_pem)?;
        let der = read_root(root_pem)?;
        self.prepare()?;
        let file = self.local_dir().join(file_name(&der));
        let pem = pem_of(&der);
        let changed = std::fs::read_to_string(&file).ok().as_deref() != Some(pem.as_str());
        if changed {
            write_file(&file, &pem)?;
        }
        self.update(&program, false)?;
        Ok(Changed {
            file,
            bundle: self.bundle(),
            changed,
        })
    }

    /// Removes the root in `root_pem`, if it was installed.
    pub fn untrust(&self, root_pem: &Path) -> Result<Changed, TrustError> {
        let program = update_program(root_pem)?;
        let der = read_root(root_pem)?;
        let file = self.local_dir().join(file_name(&der));
        let changed = match std::fs::remove_file(&file) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => return Err(TrustError::Write { path: file, source }),
        };
        if changed {
            self.prepare()?;
            self.update(&program, true)?;
            // update-ca-certificates keeps the old bundle when no certificate at all is
            // left: say so rather than report a root removed that is still trusted.
            let bundle = std::fs::read_to_string(self.bundle()).unwrap_or_default();
            if bundle.contains(pem_of(&der).trim()) {
                return Err(TrustError::Update {
                    output: format!(
                        "{} still holds the root (was it the store's only certificate?)",
                        self.bundle().display()
                    ),
                    source: None,
                });
            }
        }
        Ok(Changed {
            file,
            bundle: self.bundle(),
            changed,
        })
    }

    /// The folders `update-ca-certificates` expects (under a non-system root, its
    /// empty config file too).
    fn prepare(&self) -> Result<(), TrustError> {
        let mut dirs = vec![self.local_dir()];
        if !self.is_system() {
            dirs.push(self.path("etc/ssl/certs"));
            dirs.push(self.path("usr/share/ca-certificates"));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).map_err(|source| TrustError::Write {
                path: dir.clone(),
                source,
            })?;
        }
        if !self.is_system() {
            let conf = self.path("etc/ca-certificates.conf");
            if !conf.exists() {
                write_file(&conf, "")?;
            }
        }
        Ok(())
    }

    fn update(&self, program: &Path, fresh: bool) -> Result<(), TrustError> {
        let mut cmd = Command::new(program);
        if fresh {
            cmd.arg("--fresh");
        }
        if !self.is_system() {
            for (flag, rel) in [
                ("--certsconf", "etc/ca-certificates.conf"),
                ("--certsdir", "usr/share/ca-certificates"),
                ("--localcertsdir", "usr/local/share/ca-certificates"),
                ("--etccertsdir", "etc/ssl/certs"),
                ("--hooksdir", "etc/ca-certificates/update.d"),
            ] {
                cmd.arg(flag).arg(self.path(rel));
            }
        }
        let out = cmd.output().map_err(|source| TrustError::Update {
            output: String::new(),
            source: Some(source),
        })?;
        if out.status.success() {
            Ok(())
        } else {
            let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&out.stderr));
            Err(TrustError::Update {
                output: output.trim().to_string(),
                source: None,
            })
        }
    }
}

/// `update-ca-certificates`: in `/usr/sbin` (often not in a user's PATH), else on PATH.
fn update_program(root_pem: &Path) -> Result<PathBuf, TrustError> {
    let sbin = Path::new("/usr/sbin/update-ca-certificates");
    if sbin.exists() {
        return Ok(sbin.into());
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("update-ca-certificates"))
            .find(|p| p.is_file())
    });
    let root = root_pem.display();
    on_path.ok_or_else(|| TrustError::Unsupported {
        instructions: format!(
            "  Fedora, RHEL: sudo cp {root} /etc/pki/ca-trust/source/anchors/portico-local-ca.pem && sudo update-ca-trust\n\
             \x20 Arch: sudo trust anchor --store {root}\n\
             \x20 macOS: sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {root}\n\
             \x20 Debian, Ubuntu, Alpine: install the ca-certificates package, then run portico trust again"
        ),
    })
}

fn read_root(path: &Path) -> Result<CertificateDer<'static>, TrustError> {
    CertificateDer::from_pem_file(path).map_err(|source| TrustError::Root {
        path: path.into(),
        source,
    })
}

/// `portico-local-ca-<first 16 hex digits of SHA-256(DER)>.crt`.
fn file_name(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("portico-local-ca-{hex}.crt")
}

/// The certificate alone, as PEM (whatever else the file held is not installed).
fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn write_file(path: &Path, text: &str) -> Result<(), TrustError> {
    std::fs::write(path, text).map_err(|source| TrustError::Write {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_name_is_stable_per_root() {
        assert_eq!(file_name(b"a"), file_name(b"a"));
        assert_ne!(file_name(b"a"), file_name(b"b"));
        assert!(file_name(b"a").starts_with("portico-local-ca-"));
        assert_eq!(file_name(b"a").len(), "portico-local-ca-.crt".len() + 16);
    }

    #[test]
    fn pem_round_trips() {
        let der = vec![0x30u8; 100];
        let back = CertificateDer::from_pem_slice(pem_of(&der).as_bytes()).unwrap();
        assert_eq!(back.as_ref(), &der[..]);
    }
}
