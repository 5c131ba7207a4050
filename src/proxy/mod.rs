//! placeholder: the request path lands on branch `proxy`; this is only the interface.
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::config::{Config, HostPattern};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub struct ConnInfo {
    pub peer: SocketAddr,
    pub proto: &'static str,
    pub cert_hosts: Option<Arc<[HostPattern]>>,
}

pub struct Proxy;

impl Proxy {
    pub fn new(_config: &Config) -> Proxy {
        Proxy
    }
    pub fn update(&self, _config: &Config) {}
    pub async fn serve(
        &self,
        _req: hyper::Request<hyper::body::Incoming>,
        _conn: &ConnInfo,
    ) -> hyper::Response<Body> {
        hyper::Response::new(Full::new(Bytes::from_static(b"stub")).map_err(|e| match e {}).boxed())
    }
}
