//! The only code that touches sockets: reads whole frames into one buffer
//! per connection and writes frames out, over plain TCP or TLS.

use crate::wire::{frame_len, WireError};
use bytes::{Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes made room for before each read of a socket.
const READ_CHUNK: usize = 64 * 1024;

/// Buffer capacity a connection holds without drawing on a [`Budget`]:
/// enough for any handshake or authentication exchange.
const FREE_BUFFER: usize = 128 * 1024;

/// Bytes that connections not yet authenticated may hold in their frame
/// buffers, all together. A connection that would need more is closed: a
/// client that has not authenticated has no business sending large frames,
/// and without a bound a few thousand of them, each sending part of a
/// 48 MB frame, would grow the proxy's memory without end.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: std::sync::atomic::AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            used: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Bytes currently drawn.
    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A draw on a budget, returned when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: std::sync::Arc<Budget>,
    bytes: usize,
}

impl Charge {
    /// Draws or returns bytes so the charge is `want`; false if the budget
    /// cannot give them.
    fn set(&mut self, want: usize) -> bool {
        if want > self.bytes {
            if !self.budget.take(want - self.bytes) {
                return false;
            }
        } else {
            self.budget.give(self.bytes - want);
        }
        self.bytes = want;
        true
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

#[derive(Debug)]
pub enum ReadError {
    /// The peer closed or reset the connection.
    Io(io::Error),
    /// The peer closed in the middle of a frame.
    UnexpectedEof,
    /// The declared frame length is impossible; the stream cannot be resynchronised.
    Framing(WireError),
    /// The connection is not authenticated and its frame would take more
    /// than the unauthenticated connections' [`Budget`] has left.
    OverBudget,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::UnexpectedEof => write!(f, "connection closed mid-message"),
            ReadError::Framing(e) => write!(f, "{e}"),
            ReadError::OverBudget => write!(
                f,
                "an unauthenticated connection sent a frame larger than the budget left for \
                 unauthenticated connections (--max-unauthenticated-buffer-mb)"
            ),
        }
    }
}

enum Stream {
    Plain(TcpStream),
    /// A client that connected with TLS.
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The proxy's TLS connection to the upstream.
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// One end of an in-process pair ([`Connection::pair`]).
    Memory(tokio::io::DuplexStream),
}

/// A TCP (or TLS over TCP) connection that yields whole wire-protocol frames.
pub struct Connection {
    stream: Stream,
    buffer: BytesMut,
    /// While the client has not authenticated: what its buffer draws from
    /// the shared budget.
    charge: Option<Charge>,
    /// Requests written that still owe their last reply (see
    /// [`Connection::outstanding`]).
    outstanding: usize,
    /// A frame write began and did not finish (its future was dropped).
    writing: bool,
    /// The far end is a replica-set secondary (see
    /// [`Connection::to_secondary`]).
    secondary: bool,
    /// A read or write failed, or the peer closed: the stream is done.
    broken: bool,
    /// The client completed an authentication conversation on it.
    authenticated: bool,
}

/// Whether a frame is a request that will be answered: OP_MSG without
/// `moreToCome`, OP_QUERY, or OP_COMPRESSED (whose flags are inside the
/// compressed payload; the proxy only sends those uncompressed).
fn expects_reply(frame: &[u8]) -> bool {
    use crate::wire::{read_i32, read_u32, OpCode};
    if frame.len() < 16 {
        return false;
    }
    match OpCode::from_i32(read_i32(frame, 12)) {
        OpCode::Msg => {
            frame.len() >= 20 && read_u32(frame, 16) & crate::wire::msg::MORE_TO_COME == 0
        }
        OpCode::Query | OpCode::Compressed => true,
        _ => false,
    }
}

/// Whether a frame is the last reply to a request: an OP_MSG without
/// `moreToCome` (exhaust replies set it on all but the last), an OP_REPLY,
/// or OP_COMPRESSED.
fn is_last_reply(frame: &[u8]) -> bool {
    use crate::wire::{read_i32, read_u32, OpCode};
    if frame.len() < 16 {
        return false;
    }
    match OpCode::from_i32(read_i32(frame, 12)) {
        OpCode::Msg => {
            frame.len() < 20 || read_u32(frame, 16) & crate::wire::msg::MORE_TO_COME == 0
        }
        OpCode::Reply | OpCode::Compressed => true,
        _ => false,
    }
}

impl Connection {
    /// Marks the connection as one to a replica-set secondary: commands
    /// the proxy frames itself on it (`upstream::pinned`) then carry a
    /// secondary read preference, without which a secondary refuses reads.
    pub fn to_secondary(&mut self) {
        self.secondary = true;
    }

    /// Whether [`Connection::to_secondary`] was called.
    pub fn is_secondary(&self) -> bool {
        self.secondary
    }

    /// Records that the stream failed (a read or write error, or the
    /// peer closed it) where the caller handled it as an error reply.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether [`Connection::mark_broken`] was called.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether the peer has closed the stream (or it failed), found
    /// without waiting: a read already ready with the end of the stream,
    /// an error, or bytes. Meant for an idle connection to a server
    /// (nothing [`Connection::outstanding`]), which sends nothing unasked:
    /// bytes from it would be taken for the next request's reply, so they
    /// too mark the stream broken. Sees what the runtime's I/O driver has
    /// seen: a close still in flight reads as open.
    pub fn peer_closed(&mut self) -> bool {
        use futures_util::FutureExt;
        if self.broken || self.outstanding > 0 || !self.buffer.is_empty() {
            return self.broken;
        }
        self.buffer.reserve(1);
        let ready = match &mut self.stream {
            Stream::Plain(s) => s.read_buf(&mut self.buffer).now_or_never(),
            Stream::Accepted(s) => s.read_buf(&mut self.buffer).now_or_never(),
            Stream::Connected(s) => s.read_buf(&mut self.buffer).now_or_never(),
            Stream::Memory(s) => s.read_buf(&mut self.buffer).now_or_never(),
        };
        if ready.is_some() {
            self.broken = true;
        }
        self.broken
    }

    pub fn new(stream: TcpStream) -> Connection {
        // Requests and replies are small and latency-bound.
        let _ = stream.set_nodelay(true);
        Connection::over(Stream::Plain(stream))
    }

    fn over(stream: Stream) -> Connection {
        Connection {
            stream,
            buffer: BytesMut::with_capacity(16 * 1024),
            charge: None,
            outstanding: 0,
            writing: false,
            secondary: false,
            broken: false,
            authenticated: false,
        }
    }

    /// On a connection to a server: how many requests written on it still
    /// owe their last reply. A request abandoned mid-way (a timeout) leaves
    /// its replies to come; they must be read and dropped before the
    /// connection carries another request.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Whether a frame write was interrupted part way: the stream then
    /// holds half a message and cannot carry another.
    pub fn interrupted_write(&self) -> bool {
        self.writing
    }

    /// Makes this connection's buffer beyond [`FREE_BUFFER`] draw on
    /// `budget` until [`Connection::authenticated`].
    pub fn limit_by(&mut self, budget: std::sync::Arc<Budget>) {
        self.charge = Some(Charge { budget, bytes: 0 });
    }

    /// The client has authenticated: its buffer no longer draws on the
    /// budget (what it held is returned).
    pub fn authenticated(&mut self) {
        self.charge = None;
        self.authenticated = true;
    }

    /// Whether [`Connection::authenticated`] was called.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// While the client has not authenticated: draws `bytes` beyond
    /// [`FREE_BUFFER`] from the budget for memory a frame will take besides
    /// its buffer (inflating OP_COMPRESSED), returned when the result is
    /// dropped. `Ok(None)` for authenticated clients.
    pub fn draw(&self, bytes: usize) -> Result<Option<Charge>, ReadError> {
        let Some(charge) = &self.charge else {
            return Ok(None);
        };
        let mut draw = Charge {
            budget: charge.budget.clone(),
            bytes: 0,
        };
        if draw.set(bytes.saturating_sub(FREE_BUFFER)) {
            Ok(Some(draw))
        } else {
            Err(ReadError::OverBudget)
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

    /// Two connected in-process ends, each carrying whole frames as a
    /// socket would (`buffer` bytes in flight each way): how a server
    /// played inside the proxy ([`crate::upstream::delegate`]) is talked to
    /// exactly like one over the network.
    pub fn pair(buffer: usize) -> (Connection, Connection) {
        let (a, b) = tokio::io::duplex(buffer);
        (
            Connection::over(Stream::Memory(a)),
            Connection::over(Stream::Memory(b)),
        )
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
                Ok(Some(len)) => {
                    let frame = self.buffer.split_to(len).freeze();
                    if is_last_reply(&frame) {
                        self.outstanding = self.outstanding.saturating_sub(1);
                    }
                    return Ok(Some(frame));
                }
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
            if let Some(charge) = &mut self.charge {
                if !charge.set(self.buffer.capacity().saturating_sub(FREE_BUFFER)) {
                    return Err(ReadError::OverBudget);
                }
            }
            let n = match &mut self.stream {
                Stream::Plain(s) => s.read_buf(&mut self.buffer).await,
                Stream::Accepted(s) => s.read_buf(&mut self.buffer).await,
                Stream::Connected(s) => s.read_buf(&mut self.buffer).await,
                Stream::Memory(s) => s.read_buf(&mut self.buffer).await,
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
        self.writing = true;
        match &mut self.stream {
            Stream::Plain(s) => s.write_all(frame).await?,
            // TLS buffers records: push each frame out whole.
            Stream::Accepted(s) => {
                s.write_all(frame).await?;
                s.flush().await?
            }
            Stream::Connected(s) => {
                s.write_all(frame).await?;
                s.flush().await?
            }
            Stream::Memory(s) => s.write_all(frame).await?,
        }
        self.writing = false;
        if expects_reply(frame) {
            self.outstanding += 1;
        }
        Ok(())
    }

    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        match &self.stream {
            Stream::Plain(s) => s.peer_addr(),
            Stream::Accepted(s) => s.get_ref().0.peer_addr(),
            Stream::Connected(s) => s.get_ref().0.peer_addr(),
            Stream::Memory(_) => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "an in-process connection has no peer address",
            )),
        }
    }
}
