//! Bodies as the request path passes them on, and the small fixed answers every
//! listener gives (errors, redirects, probes). A leaf: the listeners, the proxy and the
//! admin listener all answer with these types.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

/// Any error a body can end with; also what a store backend reports as its own
/// cause (`store::BoxError` is this type).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Response bodies: upstream bodies streamed through, or small fixed ones.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(never).boxed()
}

/// A body of `bytes`, all at once.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(never).boxed()
}

/// A `text/plain` answer with `status`.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn never(never: std::convert::Infallible) -> BoxError {
    match never {}
}
