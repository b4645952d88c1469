//! Vector indexes as the proxy keeps them: the engines themselves (exact,
//! HNSW, distance kernels, snapshots) come from `likewise_compute::index`
//! and are re-exported here; this module adds what ties them to MongoDB
//! documents: the `_id` <-> key map (`ids`) and BSON vectors (`vector`).
//! The catalog of live indexes is `crate::registry`.

pub mod analysis;
pub mod bytes;
pub mod embedded;
pub mod ids;
pub mod max_score;
pub mod slices;
pub mod text;
pub mod vector;
pub mod words;

pub use likewise_compute::index::*;

/// Atlas's limit on vector dimensions.
pub const MAX_DIMENSIONS: usize = 8192;

/// Atlas's ceiling on `$vectorSearch`'s `numCandidates` (and so on
/// `limit`): the most results one vector query returns.
pub const MAX_CANDIDATES: usize = 10_000;
