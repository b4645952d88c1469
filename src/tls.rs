//! TLS on both sides, with rustls (ring provider): a server configuration
//! for clients from PEM certificate and key files, and a client
//! configuration for the upstream trusting a PEM CA bundle.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The CA bundles tried, in order, when `tls=true` names no `tlsCAFile`.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Largest PEM file read (system bundles are about 200 KiB): a path naming
/// a device or a huge file is refused rather than read without end.
pub const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use std::io::Read;
    let shown = path.display();
    // Looked at before it is opened: opening a FIFO would wait for a writer.
    if !std::fs::metadata(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .is_file()
    {
        return Err(format!("{shown}: not a regular file"));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let mut pem = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| format!("{shown}: {e}"))?;
    if pem.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("{shown}: larger than {MAX_PEM_BYTES} bytes"));
    }
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// What clients connecting with `tls=true` are served.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map(Arc::new)
        .map_err(|e| format!("certificate and key: {e}"))
}

/// The CA certificates to trust: those in `ca_file`, or the system's bundle
/// when none is named. Files are read with a size bound
/// ([`MAX_PEM_BYTES`]).
pub fn root_certificates(ca_file: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, String> {
    let bundle = match ca_file {
        Some(path) => path.to_path_buf(),
        None => SYSTEM_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .ok_or("no tlsCAFile given, and no system CA bundle found")?
            .to_path_buf(),
    };
    certificates(&bundle)
}

/// The TLS files of the connection string, used by the driver and by the
/// proxy's connections for clients alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// `tlsCAFile`; `None`: the system's CA bundle.
    pub ca_file: Option<std::path::PathBuf>,
    /// `tlsCertificateKeyFile`: the certificate and key (PEM, one file)
    /// the proxy presents (X.509 authentication).
    pub cert_key_file: Option<std::path::PathBuf>,
}

/// How connections to a `tls=true` upstream verify it (against
/// `tlsCAFile`, or the system's CA bundle), and the certificate they
/// present when `cert_key_file` names one (a PEM file holding the
/// certificate chain and its key, as the driver reads it). The proxy's
/// connections for clients are made with none: a client must never be
/// able to authenticate as the proxy's certificate.
pub fn client_config(tls: &UpstreamTls) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in root_certificates(tls.ca_file.as_deref())? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match &tls.cert_key_file {
        Some(path) => {
            let chain = certificates(path)?;
            let key = PrivateKeyDer::from_pem_file(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tlsCertificateKeyFile: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
