//! Feeds arbitrary bytes through everything the proxy does with a client
//! frame (see `tests/common/decode_all.rs`, which the test suite's
//! seeded-mutation test runs too).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/decode_all.rs"]
mod decode_all;

fuzz_target!(|data: &[u8]| decode_all::decode_everything(data));
