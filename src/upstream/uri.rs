//! The connection string of the deployment behind the proxy, read by the
//! official driver, with the options likewise cannot honour refused.

use crate::tls::UpstreamTls;

/// The deployment behind the proxy, as its connection string names it.
///
/// The string is parsed by the official driver
/// ([`mongodb::options::ConnectionString`]), so every form and option it
/// knows is read (several hosts, `replicaSet`, `readPreference`, `w`,
/// `authSource`, `authMechanism`, `mongodb+srv://`, ...). The proxy's own
/// traffic runs on a driver client made from it
/// ([`crate::upstream::Deployment`]); client connections are pinned to the
/// servers that client's topology discovers.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// The parsed connection string (hosts unresolved for `mongodb+srv`).
    pub connection: mongodb::options::ConnectionString,
    /// The URI for messages, password replaced by `***`.
    pub uri: String,
    /// Who the proxy's own connections (metadata, builds, change streams)
    /// authenticate as; clients always authenticate themselves.
    pub credentials: Option<Credentials>,
    /// TLS to every server (`tls=true`, `ssl=true`, or implied by
    /// `mongodb+srv`).
    pub tls: Option<UpstreamTls>,
}

/// The credentials of the URI's user info and auth options.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    /// The database the user is defined in: `authSource`, else the
    /// database in the URI's path, else `admin` (`$external` for X.509), as
    /// the connection-string specification defines.
    pub source: String,
    /// `authMechanism` as written, if it was.
    pub mechanism: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::result::Result<(), std::fmt::Error> {
        write!(
            f,
            "Credentials {{ user: {:?}, source: {:?}, mechanism: {:?}, password: *** }}",
            self.user, self.source, self.mechanism
        )
    }
}

impl Upstream {
    /// Parses a MongoDB connection string (`mongodb://` or
    /// `mongodb+srv://`) without touching the network. Options likewise
    /// cannot honour are refused with the reason, never ignored:
    /// `loadBalanced` (clients are pinned to servers, which a load
    /// balancer hides), `socketTimeoutMS` (the driver has none), Unix
    /// socket hosts, and the TLS options that weaken verification
    /// (`tlsInsecure`, `tlsAllowInvalidCertificates`; the driver itself
    /// refuses `tlsAllowInvalidHostnames` in this build), which the
    /// proxy's own TLS to the servers does not implement.
    pub fn parse(uri: &str) -> Result<Upstream, String> {
        use mongodb::options::{ConnectionString, Tls};
        let connection = ConnectionString::parse(uri).map_err(|e| {
            format!(
                "upstream URI must be a mongodb:// or mongodb+srv:// connection string: {}",
                e.kind
            )
        })?;
        #[allow(deprecated)]
        if connection.socket_timeout.is_some() {
            return Err(
                "upstream URI option socketTimeoutMS is not supported: the Rust \
                        driver has no socket timeout (likewise bounds its own operations and \
                        change streams itself)"
                    .into(),
            );
        }
        if let mongodb::options::HostInfo::HostIdentifiers(hosts) = &connection.host_info {
            if let Some(socket) = hosts
                .iter()
                .find(|h| !matches!(h, mongodb::options::ServerAddress::Tcp { .. }))
            {
                return Err(format!(
                    "upstream URI host {socket} is not supported: likewise connects to servers \
                     over TCP"
                ));
            }
        }
        if connection
            .read_preference
            .as_ref()
            .is_some_and(|p| !matches!(p, mongodb::options::ReadPreference::Primary))
        {
            return Err(
                "upstream URI option readPreference must be primary (or absent): the \
                        proxy's own reads build indexes, and a scan and a change stream on \
                        different or lagging members would miss writes; clients choose their \
                        own read preference per command"
                    .into(),
            );
        }
        if connection.load_balanced == Some(true) {
            return Err(
                "upstream URI option loadBalanced=true is not supported: likewise pins each \
                 client connection to a server, which a load balancer hides; name the mongos \
                 routers instead"
                    .into(),
            );
        }
        let tls = match &connection.tls {
            Some(Tls::Enabled(options)) => {
                if options.allow_invalid_certificates == Some(true)
                    || connection.tls_insecure() == Some(true)
                {
                    return Err(
                        "upstream URI options tlsInsecure, tlsAllowInvalidCertificates \
                                and tlsAllowInvalidHostnames are not supported: likewise \
                                verifies the servers it connects to"
                            .into(),
                    );
                }
                Some(UpstreamTls {
                    ca_file: options.ca_file_path.clone(),
                    cert_key_file: options.cert_key_file_path.clone(),
                })
            }
            Some(Tls::Disabled) => None,
            // `mongodb+srv` means TLS unless the URI turns it off.
            None => matches!(
                connection.host_info,
                mongodb::options::HostInfo::DnsRecord(_)
            )
            .then(UpstreamTls::default),
        };
        let credentials = connection.credential.as_ref().map(|c| {
            let mechanism = c.mechanism.as_ref().map(|m| m.as_str().to_string());
            let external = matches!(
                mechanism.as_deref(),
                Some("MONGODB-X509" | "MONGODB-AWS" | "MONGODB-OIDC" | "GSSAPI" | "PLAIN")
            );
            let source = c
                .source
                .clone()
                .or_else(|| {
                    (!external)
                        .then(|| connection.default_database.clone())
                        .flatten()
                })
                .unwrap_or_else(|| if external { "$external" } else { "admin" }.to_string());
            Credentials {
                user: c.username.clone().unwrap_or_default(),
                password: c.password.clone().unwrap_or_default(),
                source,
                mechanism,
            }
        });
        Ok(Upstream {
            uri: redact(uri),
            connection,
            credentials,
            tls,
        })
    }

    /// Whether the driver finds the hosts through DNS (`mongodb+srv`).
    pub fn is_srv(&self) -> bool {
        matches!(
            self.connection.host_info,
            mongodb::options::HostInfo::DnsRecord(_)
        )
    }
}

/// `uri` with the password of its user info replaced by `***`.
fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rsplit_once('@') {
        Some((info, hosts)) => {
            let user = info.split_once(':').map_or(info, |(user, _)| user);
            let shown = if info.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{shown}@{hosts}{}", &rest[authority_end..])
        }
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use mongodb::options::{HostInfo, ServerAddress};

    fn hosts(u: &Upstream) -> Vec<String> {
        match &u.connection.host_info {
            HostInfo::HostIdentifiers(hosts) => {
                hosts.iter().map(ServerAddress::to_string).collect()
            }
            other => panic!("not a host list: {other:?}"),
        }
    }

    #[test]
    fn parses_the_uri_forms_users_paste() {
        let u = Upstream::parse("mongodb://127.0.0.1:4000/").unwrap();
        assert_eq!(hosts(&u), ["127.0.0.1:4000"]);
        let u = Upstream::parse(
            "mongodb://user:p%40ss@db.example:27019,other:1/admin?replicaSet=rs&readPreference=primary&w=majority&retryWrites=false",
        )
        .unwrap();
        assert_eq!(hosts(&u), ["db.example:27019", "other:1"]);
        assert_eq!(u.connection.replica_set.as_deref(), Some("rs"));
        assert_eq!(u.connection.retry_writes, Some(false));
        assert!(u.connection.read_preference.is_some());
        assert!(u.connection.write_concern.is_some());
        let u = Upstream::parse("mongodb://localhost").unwrap();
        assert_eq!(hosts(&u), ["localhost:27017"]);
        let u = Upstream::parse("mongodb://[::1]:5000/?directConnection=true").unwrap();
        assert_eq!(u.connection.direct_connection, Some(true));
    }

    /// `mongodb+srv` is parsed (no DNS lookup: that happens when the
    /// driver starts) and implies TLS, as the specification says.
    #[test]
    fn srv_uris_parse_and_imply_tls() {
        let u = Upstream::parse("mongodb+srv://proxy:pw@cluster0.example.net/app?retryWrites=true")
            .unwrap();
        assert!(u.is_srv());
        assert!(
            matches!(&u.connection.host_info, HostInfo::DnsRecord(h) if h == "cluster0.example.net")
        );
        assert_eq!(u.tls, Some(UpstreamTls::default()));
        assert_eq!(
            u.uri,
            "mongodb+srv://proxy:***@cluster0.example.net/app?retryWrites=true"
        );
        let u = Upstream::parse("mongodb+srv://cluster0.example.net/?tls=false").unwrap();
        assert_eq!(u.tls, None);
        // An SRV URI names one host and no port.
        assert!(Upstream::parse("mongodb+srv://a.example.net,b.example.net").is_err());
        assert!(Upstream::parse("mongodb+srv://a.example.net:27017").is_err());
    }

    #[test]
    fn credentials_are_decoded_and_redacted() {
        let u = Upstream::parse("mongodb://proxy:p%40ss%3Aw@db:27017/?authSource=ops").unwrap();
        let c = u.credentials.as_ref().unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str(), c.source.as_str()),
            ("proxy", "p@ss:w", "ops")
        );
        assert_eq!(u.uri, "mongodb://proxy:***@db:27017/?authSource=ops");
        assert!(!format!("{u:?}").contains("p@ss"));
        let plain = Upstream::parse("mongodb://u:pw@h").unwrap();
        assert_eq!(plain.credentials.unwrap().source, "admin");
        // The path's database is the default authSource.
        let path = Upstream::parse("mongodb://u:pw@h/shop?authMechanism=SCRAM-SHA-1").unwrap();
        let c = path.credentials.unwrap();
        assert_eq!(c.source, "shop");
        assert_eq!(c.mechanism.as_deref(), Some("SCRAM-SHA-1"));
        let x509 = Upstream::parse(
            "mongodb://h/?authMechanism=MONGODB-X509&tls=true&tlsCertificateKeyFile=%2Fproxy.pem",
        )
        .unwrap();
        assert_eq!(x509.credentials.unwrap().source, "$external");
        assert_eq!(
            x509.tls.unwrap().cert_key_file,
            Some(PathBuf::from("/proxy.pem"))
        );
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let refused = |uri: &str| Upstream::parse(uri).unwrap_err();
        assert!(refused("mongodb://h:1/?loadBalanced=true").contains("loadBalanced"));
        assert!(refused("mongodb://h:1/?socketTimeoutMS=1000").contains("socketTimeoutMS"));
        assert!(
            refused("mongodb://h:1/?readPreference=secondaryPreferred").contains("readPreference")
        );
        assert!(refused("mongodb://%2Ftmp%2Fmongodb-27017.sock").contains("TCP"));
        assert!(refused("mongodb://h:1/?tls=true&tlsInsecure=true").contains("tlsInsecure"));
        assert!(
            refused("mongodb://h:1/?tls=true&tlsAllowInvalidCertificates=true")
                .contains("tlsAllowInvalidCertificates")
        );
        // What the driver itself refuses comes back with its reason.
        assert!(refused("mongodb://h:1/?authMechanism=NOPE").contains("NOPE"));
        assert!(refused("mongodb://h:99999").contains("99999"));
        assert!(Upstream::parse("mongodb:///").is_err());
        assert!(Upstream::parse("postgres://h").is_err());
        let u = Upstream::parse("mongodb://h:1/?tls=true&tlsCAFile=%2Fca.pem").unwrap();
        assert_eq!(u.tls.unwrap().ca_file, Some(PathBuf::from("/ca.pem")));
        assert!(Upstream::parse("mongodb://h:1/?ssl=true")
            .unwrap()
            .tls
            .is_some());
        assert_eq!(
            Upstream::parse("mongodb://h:1/?tls=false").unwrap().tls,
            None
        );
    }
}
