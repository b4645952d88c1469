//! An OpenAI-compatible embeddings client (`POST {url}` with `{model,
//! input: [...]}`, answered by `{data: [{index, embedding}]}`): OpenAI's
//! shape, which Ollama, vLLM and TEI also serve. Blocking HTTP/1.1 over
//! `std::net`, for blocking threads, and over TLS (rustls) for `https://`
//! URLs, verified against the system's CAs or `tlsCAFile`: batches of
//! `batchSize`, a timeout per request, and retries with backoff on
//! connection failures, 429 and 5xx.

use super::{ModelDef, ModelFailure};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Largest response body accepted (a batch of 2048 × 8192 floats as JSON
/// fits comfortably).
const MAX_RESPONSE: usize = 512 * 1024 * 1024;

#[derive(Debug)]
pub struct Client {
    host: String,
    port: u16,
    path: String,
    model: String,
    api_key_env: Option<String>,
    batch: usize,
    timeout: Duration,
    retries: u32,
    /// For `https://`: how to verify the endpoint, and the name it must
    /// prove.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl Client {
    pub fn new(def: &ModelDef) -> Result<Client, String> {
        let url = def.url.as_deref().ok_or("an 'http' model needs 'url'")?;
        let (rest, secure) = if let Some(rest) = url.strip_prefix("http://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (rest, true)
        } else {
            return Err(format!(
                "'url' must start with http:// or https:// (got {url:?})"
            ));
        };
        if def.tls_ca_file.is_some() && !secure {
            return Err(format!(
                "'tlsCAFile' is for https:// endpoints (got {url:?})"
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/v1/embeddings"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in {url:?}"))?,
            ),
            None => (authority, if secure { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("no host in {url:?}"));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tls = if secure {
            let config =
                crate::tls::client_config(def.tls_ca_file.as_deref().map(std::path::Path::new))?;
            let name = ServerName::try_from(host.to_string())
                .map_err(|_| format!("{host:?} is not a name a certificate can prove"))?;
            Some((config, name))
        } else {
            None
        };
        if let Some(var) = &def.api_key_env {
            if std::env::var_os(var).is_none() {
                return Err(format!(
                    "environment variable {var} (apiKeyEnv) is not set in the proxy's environment"
                ));
            }
        }
        Ok(Client {
            host: host.to_string(),
            port,
            path: path.to_string(),
            model: def.remote_model.clone().unwrap_or_default(),
            api_key_env: def.api_key_env.clone(),
            batch: def.batch_size.max(1),
            timeout: Duration::from_millis(def.timeout_ms),
            retries: def.retries,
            tls,
        })
    }

    /// Embeds `texts` in order, `batchSize` per request.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelFailure> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch) {
            out.extend(self.embed_batch(chunk)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelFailure> {
        let body = serde_json::json!({ "model": self.model, "input": texts }).to_string();
        let mut attempt = 0;
        loop {
            match self.post(&body) {
                Ok((200, response)) => return parse(&response, texts.len()).map_err(ModelFailure),
                Ok((status, response)) => {
                    let why = format!(
                        "embeddings endpoint answered {status}: {}",
                        String::from_utf8_lossy(&response[..response.len().min(300)])
                    );
                    let retryable = status == 429 || status >= 500;
                    if !retryable || attempt >= self.retries {
                        return Err(ModelFailure(why));
                    }
                }
                Err(e) => {
                    if attempt >= self.retries {
                        return Err(ModelFailure(format!(
                            "embeddings endpoint {}:{} failed: {e}",
                            self.host, self.port
                        )));
                    }
                }
            }
            attempt += 1;
            // Backoff between attempts: 100 ms, 200 ms, 400 ms...
            std::thread::sleep(Duration::from_millis(100 << attempt.min(6)));
        }
    }

    fn post(&self, body: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let address = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("host did not resolve"))?;
        let stream = TcpStream::connect_timeout(&address, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.path,
            self.host,
            self.port,
            body.len()
        );
        if let Some(var) = &self.api_key_env {
            let key = std::env::var(var).map_err(|_| {
                std::io::Error::other(format!("environment variable {var} is not set"))
            })?;
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        head.push_str("\r\n");
        match &self.tls {
            None => exchange(stream, &head, body),
            Some((config, name)) => {
                let session = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(std::io::Error::other)?;
                exchange(rustls::StreamOwned::new(session, stream), &head, body)
            }
        }
    }
}

/// Writes one request and reads the response to its end. A TLS peer that
/// closes without `close_notify` (common with `Connection: close`) ends
/// the read with `UnexpectedEof`; what arrived counts if it parses as a
/// whole response (`parse_response` checks `Content-Length` and chunks).
fn exchange(
    mut stream: impl Read + Write,
    head: &str,
    body: &str,
) -> std::io::Result<(u16, Vec<u8>)> {
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()?;
    let mut raw = Vec::new();
    match stream
        .take(MAX_RESPONSE as u64 + 64 * 1024)
        .read_to_end(&mut raw)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse_response(&raw)
}

/// Splits an HTTP/1.x response into status and body (de-chunked).
fn parse_response(raw: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("response has no header end"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("response header is not text"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("response has no status"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let body = &raw[end + 4..];
    if chunked {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("truncated chunk"))?;
            let size_text =
                std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("bad chunk size"))?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 || out.len() + size > MAX_RESPONSE {
                return Err(bad("truncated or oversized chunk"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        return Ok((status, out));
    }
    match length {
        Some(n) if body.len() < n => Err(bad("response body shorter than its Content-Length")),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

/// Reads `{data: [{index, embedding: [...]}, ...]}` into `expected` vectors
/// in input order.
fn parse(body: &[u8], expected: usize) -> Result<Vec<Vec<f32>>, String> {
    #[derive(serde::Deserialize)]
    struct Item {
        index: Option<usize>,
        embedding: Vec<f32>,
    }
    #[derive(serde::Deserialize)]
    struct Response {
        data: Vec<Item>,
    }
    let response: Response = serde_json::from_slice(body)
        .map_err(|e| format!("embeddings response is not {{data: [{{embedding}}]}}: {e}"))?;
    if response.data.len() != expected {
        return Err(format!(
            "embeddings endpoint returned {} embeddings for {expected} inputs",
            response.data.len()
        ));
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (position, item) in response.data.into_iter().enumerate() {
        let slot = item.index.unwrap_or(position);
        if slot >= expected || out[slot].is_some() {
            return Err("embeddings response has a bad or repeated 'index'".into());
        }
        out[slot] = Some(item.embedding);
    }
    Ok(out.into_iter().map(|v| v.unwrap_or_default()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn client(def: bson::RawDocumentBuf) -> Result<Client, String> {
        let def = ModelDef::parse(&def, "createModel").map_err(|e| e.to_string())?;
        Client::new(&def)
    }

    #[test]
    fn urls_choose_plain_or_tls_and_their_default_ports() {
        let plain = client(rawdoc! { "createModel": "m", "kind": "http", "url": "http://embed.local/v1/e", "model": "x" }).unwrap();
        assert_eq!((plain.port, plain.tls.is_none()), (80, true));
        let secure = client(
            rawdoc! { "createModel": "m", "kind": "http", "url": "https://embed.local/v1/e", "model": "x" },
        );
        // The system bundle may be missing on a bare machine: then the
        // refusal says so rather than trusting anything.
        match secure {
            Ok(secure) => assert_eq!(
                (secure.port, secure.tls.is_some(), secure.path.as_str()),
                (443, true, "/v1/e")
            ),
            Err(e) => assert!(e.contains("CA bundle"), "{e}"),
        }
        let wrong = client(
            rawdoc! { "createModel": "m", "kind": "http", "url": "http://embed.local/", "model": "x", "tlsCAFile": "/ca.pem" },
        );
        assert!(wrong.unwrap_err().contains("https://"));
        let missing = client(
            rawdoc! { "createModel": "m", "kind": "http", "url": "https://embed.local/", "model": "x", "tlsCAFile": "/nonexistent/ca.pem" },
        );
        assert!(missing.unwrap_err().contains("/nonexistent/ca.pem"));
        assert!(client(rawdoc! { "createModel": "m", "kind": "http", "url": "ftp://embed.local/", "model": "x" }).is_err());
        let text = ModelDef::parse(
            &rawdoc! { "createModel": "m", "kind": "text", "tlsCAFile": "/ca.pem" },
            "createModel",
        );
        assert!(text.unwrap_err().to_string().contains("tlsCAFile"));
    }

    #[test]
    fn reads_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain).unwrap(), (200, b"hello".to_vec()));
        let chunked = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (503, b"hello".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn orders_embeddings_by_index() {
        let body = br#"{"data":[{"index":1,"embedding":[2.0]},{"index":0,"embedding":[1.0]}]}"#;
        assert_eq!(parse(body, 2).unwrap(), vec![vec![1.0], vec![2.0]]);
        assert!(parse(body, 3).unwrap_err().contains("2 embeddings for 3"));
        let repeated = br#"{"data":[{"index":0,"embedding":[2.0]},{"index":0,"embedding":[1.0]}]}"#;
        assert!(parse(repeated, 2).is_err());
    }
}
