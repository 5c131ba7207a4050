//! What the fuzz targets in `fuzz/` reach that is not public: the parsers of network
//! input and the request path's pure steps. Compiled only under `cargo fuzz`
//! (`--cfg fuzzing`).

pub use crate::listener::http::{Answer, decide};
pub use crate::listener::proxy_protocol::{Parsed, parse as parse_proxy_header};
pub use crate::proxy::headers::{add_forwarded, client_address, strip_hop_by_hop};
pub use crate::router::{Action, Router};
pub use crate::uri::host::{normalize as normalize_host, parse as parse_host};
pub use crate::uri::path::normalize as normalize_path;
