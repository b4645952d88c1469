//! An OpenAI-compatible embeddings client (`POST {url}` with `{model,
//! input: [...]}`, answered by `{data: [{index, embedding}]}`): OpenAI's
//! shape, which Ollama, vLLM and TEI also serve. Blocking HTTP/1.1 with
//! `ureq` (for blocking threads), over rustls for `https://` URLs, verified
//! against the system's CAs or `tlsCAFile`: batches of `batchSize`, a
//! timeout per request, and retries with backoff on connection failures,
//! 429 and 5xx.
//!
//! What an endpoint may be is the operator's choice ([`ModelAccess`]): the
//! URL is parsed as an RFC 3986 URI (control characters, spaces and user
//! info are refused), its host must be one `--allow-model-host` names,
//! redirects are not followed, no proxy from the environment is used, and
//! the body of a failed response is never relayed (only its status).

use super::{ModelDef, ModelFailure};
use crate::config::ModelAccess;
use std::sync::Arc;
use std::time::Duration;
use ureq::http::Uri;

/// Largest response body accepted (a batch of 2048 × 8192 floats as JSON
/// fits comfortably).
const MAX_RESPONSE: u64 = 512 * 1024 * 1024;

/// The variables `apiKeyEnv` may name: the operator puts a model's key in
/// `LIKEWISE_MODEL_KEY_<something>`; nothing else in the proxy's
/// environment (its upstream URI, say) can be sent as a key.
pub const API_KEY_PREFIX: &str = "LIKEWISE_MODEL_KEY_";

pub struct Client {
    agent: ureq::Agent,
    url: String,
    /// `host:port`, for messages.
    endpoint: String,
    model: String,
    api_key_env: Option<String>,
    batch: usize,
    retries: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// The parts of an `http` model's `url` the proxy acts on.
#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub secure: bool,
    /// Lower-case, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// The URL to post to, with `/v1/embeddings` when it named no path.
    pub url: String,
}

/// Parses an `http` model's `url` (RFC 3986, by the `http` crate's parser):
/// `http://` or `https://`, a host, an optional port, no user info. Errors
/// name what is wrong (a string for `BadValue`).
pub fn endpoint(url: &str) -> Result<Endpoint, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("'url' is not a valid URL ({e})"))?;
    let secure = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("'url' must start with http:// or https://".to_string()),
    };
    let authority = uri.authority().ok_or("'url' has no host")?;
    if authority.as_str().contains('@') {
        return Err("'url' may not carry user info: give the key with apiKeyEnv".to_string());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err("'url' has no host".to_string());
    }
    // What follows the host: nothing, or `:` and a port that fits 16 bits.
    let after_host = authority
        .as_str()
        .strip_prefix(authority.host())
        .unwrap_or_default();
    let port = match after_host.strip_prefix(':') {
        None if after_host.is_empty() => {
            if secure {
                443
            } else {
                80
            }
        }
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("'url' has a bad port {p:?}"))?,
        None => return Err("'url' has a bad host".to_string()),
    };
    let named_path = url
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    let url = if named_path {
        uri.to_string()
    } else {
        format!("{}/v1/embeddings", uri.to_string().trim_end_matches('/'))
    };
    Ok(Endpoint {
        secure,
        host,
        port,
        url,
    })
}

impl Client {
    /// Checks the definition against what the operator allows and builds
    /// the client. Errors (for `BadValue`): a bad URL, a host not allowed,
    /// `tlsCAFile` on `http://` or outside the allowed directories, an
    /// `apiKeyEnv` variable that is not set.
    pub fn new(def: &ModelDef, access: &ModelAccess) -> Result<Client, String> {
        let url = def.url.as_deref().ok_or("an 'http' model needs 'url'")?;
        let endpoint = endpoint(url)?;
        if !access.allows_host(&endpoint.host, endpoint.port) {
            return Err(format!(
                "the operator does not allow models to reach {}:{} (--allow-model-host)",
                endpoint.host, endpoint.port
            ));
        }
        if def.tls_ca_file.is_some() && !endpoint.secure {
            return Err(format!(
                "'tlsCAFile' is for https:// endpoints (got {url:?})"
            ));
        }
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_millis(def.timeout_ms)));
        if endpoint.secure {
            let ca_file = match &def.tls_ca_file {
                Some(file) => Some(access.file(file, "tlsCAFile")?),
                None => None,
            };
            let roots = crate::tls::root_certificates(ca_file.as_deref())?
                .iter()
                .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
                .collect();
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
                    .build(),
            );
        }
        if let Some(var) = &def.api_key_env {
            if std::env::var_os(var).is_none() {
                return Err(format!(
                    "environment variable {var} (apiKeyEnv) is not set in the proxy's environment"
                ));
            }
        }
        Ok(Client {
            agent: config.build().new_agent(),
            url: endpoint.url,
            endpoint: format!("{}:{}", endpoint.host, endpoint.port),
            model: def.remote_model.clone().unwrap_or_default(),
            api_key_env: def.api_key_env.clone(),
            batch: def.batch_size.max(1),
            retries: def.retries,
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
                Ok((status, _)) => {
                    // The body is not relayed: it may come from a service
                    // the client has no business reading.
                    let why = format!("embeddings endpoint {} answered {status}", self.endpoint);
                    let retryable = status == 429 || status >= 500;
                    if !retryable || attempt >= self.retries {
                        return Err(ModelFailure(why));
                    }
                }
                Err(e) => {
                    if attempt >= self.retries {
                        return Err(ModelFailure(format!(
                            "embeddings endpoint {} failed: {e}",
                            self.endpoint
                        )));
                    }
                }
            }
            attempt += 1;
            // Backoff between attempts: 100 ms, 200 ms, 400 ms...
            std::thread::sleep(Duration::from_millis(100 << attempt.min(6)));
        }
    }

    fn post(&self, body: &str) -> Result<(u16, Vec<u8>), String> {
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        if let Some(var) = &self.api_key_env {
            let key =
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = request.send(body).map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        if status != 200 {
            return Ok((status, Vec::new()));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok((status, body))
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
        let access = ModelAccess {
            hosts: vec!["embed.local".into(), "127.0.0.1:9".into()],
            dirs: vec![],
        };
        Client::new(&def, &access)
    }

    #[test]
    fn urls_are_parsed_as_uris_and_their_hosts_allowed_by_the_operator() {
        let plain = endpoint("http://Embed.Local/v1/e").unwrap();
        assert_eq!(
            (plain.secure, plain.host.as_str(), plain.port),
            (false, "embed.local", 80)
        );
        let bare = endpoint("https://embed.local").unwrap();
        assert_eq!(
            (bare.port, bare.url.as_str()),
            (443, "https://embed.local/v1/embeddings")
        );
        assert_eq!(endpoint("http://[::1]:8080/x").unwrap().host, "::1");
        for bad in [
            "http://embed.local/v1\r\nX-Injected: 1",
            "http://embed.local:27017/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "http://user:pw@embed.local/",
            "ftp://embed.local/",
            "embed.local/v1",
            "http://embed.local:99999/",
        ] {
            assert!(endpoint(bad).is_err(), "{bad:?} was accepted");
        }
        let ok = client(
            rawdoc! { "createModel": "m", "kind": "http", "url": "http://embed.local/v1/e", "model": "x" },
        );
        assert!(ok.is_ok(), "{ok:?}");
        // Any port of a host named alone; only the named port of host:port.
        assert!(client(rawdoc! { "createModel": "m", "kind": "http", "url": "http://embed.local:27017/", "model": "x" }).is_ok());
        assert!(client(rawdoc! { "createModel": "m", "kind": "http", "url": "http://127.0.0.1:9/", "model": "x" }).is_ok());
        let other_port = client(
            rawdoc! { "createModel": "m", "kind": "http", "url": "http://127.0.0.1:27017/", "model": "x" },
        );
        assert!(other_port.unwrap_err().contains("--allow-model-host"));
        let other_host = client(
            rawdoc! { "createModel": "m", "kind": "http", "url": "http://attacker.example/", "model": "x" },
        );
        assert!(other_host.unwrap_err().contains("--allow-model-host"));
        let wrong = client(
            rawdoc! { "createModel": "m", "kind": "http", "url": "http://embed.local/", "model": "x", "tlsCAFile": "/ca.pem" },
        );
        assert!(wrong.unwrap_err().contains("https://"));
        // No directory is allowed here, so no CA file is either.
        let outside = client(
            rawdoc! { "createModel": "m", "kind": "http", "url": "https://embed.local/", "model": "x", "tlsCAFile": "/etc/passwd" },
        );
        assert!(outside.unwrap_err().contains("--allow-model-dir"));
        let text = ModelDef::parse(
            &rawdoc! { "createModel": "m", "kind": "text", "tlsCAFile": "/ca.pem" },
            "createModel",
        );
        assert!(text.unwrap_err().to_string().contains("tlsCAFile"));
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
