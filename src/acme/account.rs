//! The ACME account: created once per (directory, email) and kept in the store, so
//! restarts and other replicas reuse it instead of registering again. Replicas starting
//! together take the account lock first, so exactly one of them registers.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};

use super::AcmeError;
use crate::config::Acme;
use crate::objects::short_hash;
use crate::store::{Kind, Locker, Object, Store, StoreError, hold};

/// How long the registration lock lives without renewal.
const LOCK_TTL: Duration = Duration::from_secs(15);

/// The store name of the account for `acme`: `h(directory + "\n" + email)`.
pub(super) fn account_name(acme: &Acme) -> String {
    short_hash(&format!(
        "{}\n{}",
        acme.directory,
        acme.email.as_deref().unwrap_or("")
    ))
}

fn builder(acme: &Acme) -> Result<instant_acme::AccountBuilder, AcmeError> {
    Ok(Account::builder_with_http(super::http::client(
        acme.ca_root.as_deref(),
    )?))
}

/// The account from the store, or a new one registered (once, under a lock) and stored.
pub(super) async fn load_or_create(
    store: &dyn Store,
    locker: Arc<dyn Locker>,
    acme: &Acme,
    holder: &str,
) -> Result<Account, AcmeError> {
    let name = account_name(acme);
    if let Some(account) = load(store, acme, &name).await? {
        return Ok(account);
    }
    let lock_name = format!("acme-account-{name}");
    let deadline = tokio::time::Instant::now() + LOCK_TTL * 2;
    let lease = loop {
        if let Some(lease) = locker.try_acquire(&lock_name, LOCK_TTL).await? {
            break lease;
        }
        // Another process is registering: its account will be in the store soon.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(account) = load(store, acme, &name).await? {
            return Ok(account);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(AcmeError::LockLost);
        }
    };
    let guard = hold(locker, lease);
    let result = async {
        // Whoever held the lock before us may have finished meanwhile.
        if let Some(account) = load(store, acme, &name).await? {
            return Ok(account);
        }
        let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let eab = match &acme.eab {
            Some(eab) => Some(ExternalAccountKey::new(
                eab.kid.clone(),
                &base64url_decode(&eab.hmac_key).ok_or(AcmeError::EabKey)?,
            )),
            None => None,
        };
        let (account, credentials) = builder(acme)?
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                acme.directory.clone(),
                eab.as_ref(),
            )
            .await?;
        let key_pem = rcgen::KeyPair::try_from(credentials.private_key().secret_pkcs8_der())
            .map(|k| k.serialize_pem())
            .map_err(AcmeError::Key)?;
        let json = serde_json::to_vec(&credentials).map_err(AcmeError::Account)?;
        let object = Object::new()
            .with_data("account.json", json)
            .with_data("tls.key", key_pem)
            .with_annotation("portico.dev/directory", acme.directory.clone());
        match store.put(Kind::Account, &name, &object, None).await {
            Ok(_) => {
                tracing::info!(directory = %acme.directory, holder, "registered an ACME account");
                Ok(account)
            }
            // Someone registered and stored one meanwhile: use theirs, so every replica
            // shares one account.
            Err(StoreError::Conflict { .. }) => {
                load(store, acme, &name).await?.ok_or(AcmeError::LockLost)
            }
            Err(e) => Err(e.into()),
        }
    }
    .await;
    let _ = guard.release().await;
    result
}

async fn load(store: &dyn Store, acme: &Acme, name: &str) -> Result<Option<Account>, AcmeError> {
    let Some(stored) = store.get(Kind::Account, name).await? else {
        return Ok(None);
    };
    let Some(json) = stored.object.get("account.json") else {
        return Ok(None);
    };
    let credentials: AccountCredentials =
        serde_json::from_slice(json).map_err(AcmeError::Account)?;
    Ok(Some(builder(acme)?.from_credentials(credentials).await?))
}

/// External Account Binding keys come base64url-encoded, padded or not; some CAs
/// hand out the standard alphabet.
fn base64url_decode(input: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::{Engine, alphabet};
    const ANY_PADDING: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, ANY_PADDING);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, ANY_PADDING);
    let input = input.trim();
    URL_SAFE
        .decode(input)
        .or_else(|_| STANDARD.decode(input))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_decodes_padded_and_unpadded() {
        assert_eq!(base64url_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64url_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64url_decode("_-8").unwrap(), vec![0xff, 0xef]);
        assert!(base64url_decode("a b").is_none());
    }
}
