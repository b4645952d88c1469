//! Vector indexes as the proxy keeps them: the engines themselves (exact,
//! HNSW, distance kernels, snapshots) come from `likewise_compute::index`
//! and are re-exported here; this module adds what ties them to MongoDB
//! documents: the `_id` <-> key map (`ids`), BSON vectors (`vector`) and the
//! catalog of live indexes (`registry`).

pub mod ids;
pub mod registry;
pub mod vector;

pub use likewise_compute::index::*;
