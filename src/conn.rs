//! The only code that touches sockets: reads whole frames into one buffer
//! per connection and writes frames out, over plain TCP or TLS.

use crate::wire::{frame_len, WireError};
use bytes::{Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes made room for before each read of a socket.
const READ_CHUNK: usize = 64 * 1024;

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

enum Stream {
    Plain(TcpStream),
    /// A client that connected with TLS.
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The proxy's TLS connection to the upstream.
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A TCP (or TLS over TCP) connection that yields whole wire-protocol frames.
pub struct Connection {
    stream: Stream,
    buffer: BytesMut,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Connection {
        // Requests and replies are small and latency-bound.
        let _ = stream.set_nodelay(true);
        Connection::over(Stream::Plain(stream))
    }

    fn over(stream: Stream) -> Connection {
        Connection {
            stream,
            buffer: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// Serves a client over TLS: the handshake, then frames.
    pub async fn accept_tls(
        stream: TcpStream,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> io::Result<Connection> {
        let _ = stream.set_nodelay(true);
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(stream)
            .await?;
        Ok(Connection::over(Stream::Accepted(Box::new(tls))))
    }

    /// Talks to a server over TLS, verifying it is `host`.
    pub async fn connect_tls(
        stream: TcpStream,
        host: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> io::Result<Connection> {
        let _ = stream.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await?;
        Ok(Connection::over(Stream::Connected(Box::new(tls))))
    }

    /// Reads the next whole frame; `Ok(None)` on a clean close between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            match frame_len(&self.buffer) {
                Ok(Some(len)) => return Ok(Some(self.buffer.split_to(len).freeze())),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Framing(e)),
            }
            // Room for what may arrive next, never for what a length prefix
            // merely claims: four bytes must not cost 48 MB. The buffer grows
            // with the bytes actually received (amortised doubling).
            let missing = if self.buffer.len() >= 4 {
                let declared = crate::wire::read_i32(&self.buffer, 0);
                usize::try_from(declared)
                    .unwrap_or(0)
                    .saturating_sub(self.buffer.len())
            } else {
                4096
            };
            self.buffer.reserve(missing.clamp(1, READ_CHUNK));
            let n = match &mut self.stream {
                Stream::Plain(s) => s.read_buf(&mut self.buffer).await,
                Stream::Accepted(s) => s.read_buf(&mut self.buffer).await,
                Stream::Connected(s) => s.read_buf(&mut self.buffer).await,
            }
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
        match &mut self.stream {
            Stream::Plain(s) => s.write_all(frame).await,
            // TLS buffers records: push each frame out whole.
            Stream::Accepted(s) => {
                s.write_all(frame).await?;
                s.flush().await
            }
            Stream::Connected(s) => {
                s.write_all(frame).await?;
                s.flush().await
            }
        }
    }

    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        match &self.stream {
            Stream::Plain(s) => s.peer_addr(),
            Stream::Accepted(s) => s.get_ref().0.peer_addr(),
            Stream::Connected(s) => s.get_ref().0.peer_addr(),
        }
    }
}
