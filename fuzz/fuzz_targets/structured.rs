//! Structure-aware fuzzing: the input is a recipe for a well-formed command
//! the proxy owns, nested and widened as the bytes say
//! (`tests/common/structured.rs`), fed through everything the proxy does
//! with a client frame (`tests/common/decode_all.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/decode_all.rs"]
mod decode_all;
#[path = "../../tests/common/structured.rs"]
mod structured;

fuzz_target!(|data: &[u8]| decode_all::decode_everything(&structured::frame(data)));
