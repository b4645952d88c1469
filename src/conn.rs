//! The only code that touches sockets: reads whole frames into one buffer
//! per connection and writes frames out.

use crate::wire::{frame_len, WireError};
use bytes::{Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub enum ReadError {
    /// The peer closed or reset the connection.
    Io(io::Error),
    /// The peer closed in the middle of a frame.
    UnexpectedEof,
    /// The declared frame length is impossible; the stream cannot be resynchronised.
    Framing(WireError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::UnexpectedEof => write!(f, "connection closed mid-message"),
            ReadError::Framing(e) => write!(f, "{e}"),
        }
    }
}

/// A TCP connection that yields whole wire-protocol frames.
pub struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Connection {
        // Requests and replies are small and latency-bound.
        let _ = stream.set_nodelay(true);
        Connection {
            stream,
            buffer: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// Reads the next whole frame; `Ok(None)` on a clean close between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            match frame_len(&self.buffer) {
                Ok(Some(len)) => return Ok(Some(self.buffer.split_to(len).freeze())),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Framing(e)),
            }
            // The length is known and bounded once four bytes are in.
            if self.buffer.len() >= 4 {
                let declared = crate::wire::read_i32(&self.buffer, 0);
                let want = usize::try_from(declared).unwrap_or(0);
                self.buffer.reserve(want.saturating_sub(self.buffer.len()));
            } else {
                self.buffer.reserve(4096);
            }
            let n = self
                .stream
                .read_buf(&mut self.buffer)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::UnexpectedEof)
                };
            }
        }
    }

    pub async fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.stream.write_all(frame).await
    }

    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }
}
