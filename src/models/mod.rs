//! Models: what turns a document's key (or a query's content) into a vector.

pub mod bert;
