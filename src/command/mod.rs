//! Typed views over raw commands. Each command the proxy owns has a file
//! here with a "read the request" half and a "handle the reply" half; every
//! other command is `Passthrough` and its bytes are forwarded untouched.

pub mod hello;

pub use hello::Hello;

use crate::wire::msg::first_key;
use bson::RawDocument;

/// What the proxy does with a command, decided from its body alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `hello` / `isMaster`: the reply is rewritten so drivers see a router.
    Hello(Hello),
    /// Not ours: forward the original bytes, relay the replies.
    Passthrough,
}

impl Command {
    pub fn classify(body: &RawDocument) -> Command {
        match first_key(body) {
            Some(name) if Hello::is_hello(name) => Command::Hello(Hello::parse(body)),
            _ => Command::Passthrough,
        }
    }
}
