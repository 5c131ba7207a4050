//! Objects as Secrets: the names, types and labels of each [`Kind`], and the mapping
//! both ways, keeping metadata that is not portico's as it is on the server.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::api::{
    ApiClient, KubeError, LABEL_MANAGED_BY, MANAGED_BY, Resource, object_name, resource_version,
};
use crate::store::{ANNOTATION_PREFIXES, Kind, Object, StoreError, Stored, Version, validate_name};

/// Label with the object's [`Kind`] (`account`, `certificate`, `http01`, `ca`).
pub(super) const LABEL_KIND: &str = "portico.dev/kind";

pub(super) const TLS_TYPE: &str = "kubernetes.io/tls";

pub(super) const OPAQUE_TYPE: &str = "Opaque";

pub(super) const TLS_KEYS: [&str; 2] = ["tls.crt", "tls.key"];

/// The Secret name prefix of a kind.
pub(super) const fn secret_prefix(kind: Kind) -> &'static str {
    kind.secret_prefix()
}

/// The Secret that holds object `name` of `kind`.
pub(super) fn secret_name(kind: Kind, name: &str) -> String {
    format!("{}{name}", secret_prefix(kind))
}

/// The Secret type of a kind.
pub(super) const fn secret_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Certificate => TLS_TYPE,
        _ => OPAQUE_TYPE,
    }
}

/// The label selector of a kind's Secrets.
pub(super) fn selector(kind: Kind) -> String {
    format!("{LABEL_KIND}={kind},{LABEL_MANAGED_BY}={MANAGED_BY}")
}

/// Every readable object of a kind and the list's resourceVersion (where a watch starts).
pub(super) async fn list_secrets(
    api: &ApiClient,
    kind: Kind,
) -> Result<(Vec<(String, Stored)>, String), StoreError> {
    let list = api
        .list(Resource::Secrets, &selector(kind))
        .await
        .map_err(|source| StoreError::Unavailable {
            action: format!("list {kind} Secrets"),
            source: Box::new(source),
        })?;
    let version = resource_version(&list).unwrap_or_default().to_owned();
    let items = match list {
        Value::Object(mut map) => map.remove("items"),
        _ => None,
    };
    let items = match items {
        Some(Value::Array(items)) => items,
        Some(Value::Null) | None => Vec::new(),
        Some(_) => {
            return Err(StoreError::Unavailable {
                action: format!("list {kind} Secrets"),
                source: Box::new(KubeError::Response("items is not a list".into())),
            });
        }
    };
    let mut objects: Vec<(String, Stored)> = items
        .into_iter()
        .filter_map(|item| readable(kind, item))
        .collect();
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((objects, version))
}

pub(super) fn is_ours(annotation: &str) -> bool {
    ANNOTATION_PREFIXES
        .iter()
        .any(|p| annotation.starts_with(p))
}

/// The Secret to write for `object`: new, or `current` at `expected` with portico's
/// parts replaced and everything else kept.
pub(super) fn to_secret(
    kind: Kind,
    secret: &str,
    object: &Object,
    current: Option<(Secret, &Version)>,
) -> Secret {
    let mut metadata = match current {
        Some((current, expected)) => ObjectMeta {
            resource_version: Some(expected.as_str().to_owned()),
            // The server keeps its own bookkeeping when a replace leaves it out.
            managed_fields: None,
            ..current.metadata
        },
        None => ObjectMeta {
            name: Some(secret.to_owned()),
            ..ObjectMeta::default()
        },
    };
    let labels = metadata.labels.get_or_insert_default();
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels.insert(LABEL_KIND.into(), kind.as_str().into());
    let mut annotations = metadata.annotations.take().unwrap_or_default();
    annotations.retain(|key, _| !is_ours(key));
    annotations.extend(object.annotations.clone());
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);

    let mut data: BTreeMap<String, ByteString> = object
        .data
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
        .collect();
    if kind == Kind::Certificate {
        for key in TLS_KEYS {
            data.entry(key.to_owned()).or_insert(ByteString(Vec::new()));
        }
    }
    Secret {
        metadata,
        type_: Some(secret_type(kind).to_owned()),
        data: (!data.is_empty()).then_some(data),
        ..Secret::default()
    }
}

/// A Secret as the API sent it, checked to be of `kind`'s type. The reason never quotes
/// the Secret.
pub(super) fn read_secret(kind: Kind, value: Value) -> Result<Secret, String> {
    let secret: Secret = serde_json::from_value(value).map_err(|e| {
        // serde_json's message can quote a value; its category cannot.
        format!("not a Secret ({:?} error in its JSON)", e.classify())
    })?;
    let found = secret.type_.as_deref().unwrap_or(OPAQUE_TYPE);
    if found != secret_type(kind) {
        return Err(format!(
            "type {found:?}, but {kind} Secrets are {:?}",
            secret_type(kind)
        ));
    }
    Ok(secret)
}

/// The object a Secret holds, and its name in the store.
pub(super) fn from_secret(kind: Kind, value: Value) -> Result<(String, Stored), String> {
    let secret = read_secret(kind, value)?;
    let full = secret.metadata.name.as_deref().unwrap_or_default();
    let prefix = secret_prefix(kind);
    let name = full
        .strip_prefix(prefix)
        .ok_or_else(|| format!("the name does not start with {prefix:?}"))?;
    validate_name(kind, name).map_err(|e| format!("{name:?} is not a store name: {e}"))?;
    let version = secret
        .metadata
        .resource_version
        .clone()
        .ok_or("no resourceVersion")?;
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    if kind == Kind::Certificate {
        for key in TLS_KEYS {
            if data.get(key).is_some_and(Vec::is_empty) {
                data.remove(key);
            }
        }
    }
    let annotations = secret
        .metadata
        .annotations
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| is_ours(k))
        .collect();
    Ok((
        name.to_owned(),
        Stored {
            object: Object { data, annotations },
            version: Version::new(version),
        },
    ))
}

/// A listed or watched Secret, or `None` (logged) if it cannot be read.
pub(super) fn readable(kind: Kind, value: Value) -> Option<(String, Stored)> {
    let secret = object_name(&value).unwrap_or("<no name>").to_owned();
    match from_secret(kind, value) {
        Ok(object) => Some(object),
        Err(reason) => {
            tracing::warn!(%kind, secret, reason, "skipping a Secret labelled as portico's that it cannot read");
            None
        }
    }
}
