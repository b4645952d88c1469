//! Feeds arbitrary bytes through everything the proxy does with a client
//! frame before forwarding it: framing, inflating OP_COMPRESSED, decoding
//! by opcode, walking the command body and classifying the command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use likewise::command::Command;
use likewise::wire::{self, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(Some(len)) = wire::frame_len(data) else {
        return;
    };
    let Ok((_, message)) = wire::inflate(bytes::Bytes::copy_from_slice(&data[..len])) else {
        return;
    };
    match wire::decode(&message) {
        Ok(Message::Msg(m)) => {
            for element in m.body() {
                let _ = element;
            }
            let _ = Command::classify(m.body());
        }
        Ok(Message::Query(q)) => {
            let _ = Command::classify(q.command());
        }
        _ => {}
    }
});
