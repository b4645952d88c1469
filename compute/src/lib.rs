//! likewise's CPU-bound core, kept apart from the proxy:
//!
//! - `index`: vector indexes behind the `VectorIndex` trait (the exact
//!   oracle `exact::Flat`, `hnsw::Hnsw`), distance kernels chosen at run
//!   time for the CPU (`metric`) and checksummed snapshots (`persist`);
//! - `bert`: the text encoder's forward pass (BERT-family sentence
//!   encoders such as all-MiniLM-L6-v2);
//! - `train`: adapter training with the ranking objective, and retrieval
//!   metrics;
//! - `linalg`: the one matrix product the encoder and training share.
//!
//! Everything here is synchronous and does no I/O beyond reading the files
//! or byte streams a caller hands it: no sockets, no async runtime, no
//! MongoDB connection (this crate does not depend on any). Callers run it
//! on blocking threads. It is its own crate so that test builds optimise it
//! alone (see the workspace's dev profile) and so that the compiler holds
//! that line.

pub mod bert;
pub mod index;
pub mod linalg;
pub mod train;
