//! What the fuzz targets in `fuzz/` reach that is not public: the header rewrite of the
//! proxy. Compiled only under `cargo fuzz` (`--cfg fuzzing`).

pub use crate::proxy::headers::{add_forwarded, client_address, strip_hop_by_hop};
