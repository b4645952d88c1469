//! likewise: a MongoDB wire-protocol proxy that gives any MongoDB deployment
//! semantic (vector) indexes.
//!
//! The data path, in the order the tree reads:
//!
//! 1. `server` accepts a client and spawns `proxy::serve` for it.
//! 2. `proxy` pins the client to its own upstream connection and loops:
//! 3. `conn` reads one whole frame from the client;
//! 4. `wire` decodes it (OP_COMPRESSED inflated, OP_MSG/OP_QUERY parsed,
//!    checksums verified) without copying the documents;
//! 5. `command` classifies the body: commands the proxy owns (the `hello`
//!    handshake, search-index administration, vector queries) are handled
//!    by `proxy::admin` and `proxy::query` over the indexes in `registry`
//!    (engines from `index`), everything else is `Passthrough`;
//! 6. passthrough requests go upstream as their original bytes, and every
//!    reply comes back as the upstream's bytes (compressed again if the
//!    client compressed its request);
//! 7. errors become MongoDB-shaped replies (`error`), never crashes.

pub mod command;
pub mod config;
pub mod conn;
pub mod cpu;
pub mod error;
pub mod index;
pub mod maintain;
pub mod metrics;
pub mod models;
pub mod proxy;
pub mod registry;
pub mod rewrite;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod wire;

pub use likewise_compute::{linalg, train};

/// The cores the machine gives this process (at least 1), read once: how
/// many queries (and slices of one query, `cpu::beside`) run on the CPU
/// at once (`cpu::run`) and how
/// many threads an index build uses (`registry::SearchIndex::apply_changes`).
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
