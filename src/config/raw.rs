//! The TOML file as written: serde structs that mirror the file one to one and refuse
//! unknown keys. Nothing here is validated beyond types; `config::model` does that.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub acme: RawAcme,
    #[serde(default)]
    pub limits: RawLimits,
    pub kubernetes: Option<RawKubernetes>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub site: Vec<RawSite>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub access: Option<bool>,
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    pub ingress_class: Option<String>,
    pub gateway_class: Option<String>,
    pub namespaces: Option<Vec<String>>,
    pub publish_service: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub http: Option<String>,
    pub https: Option<String>,
    pub admin: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub proxy_protocol: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub backend: Option<String>,
    pub path: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    pub email: Option<String>,
    pub directory: Option<String>,
    pub ca_root: Option<String>,
    pub challenge: Option<String>,
    pub eab_kid: Option<String>,
    pub eab_hmac_key: Option<String>,
    pub profile: Option<String>,
}

/// Durations are strings such as `"500ms"`, `"10s"`, `"5m"`, `"1h"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub handshake_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub upstream_connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub max_h2_streams: Option<u32>,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSite {
    #[serde(default)]
    pub hosts: Vec<String>,
    pub tls: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub upstreams: Option<Vec<String>>,
    pub upstream_protocol: Option<String>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub path: Option<String>,
    pub upstreams: Option<Vec<String>>,
    pub upstream_protocol: Option<String>,
    pub respond: Option<RawRespond>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRespond {
    pub status: Option<u16>,
    pub body: Option<String>,
}
