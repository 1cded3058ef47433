//! TLS material and settings, with rustls and its aws-lc-rs provider:
//! certificate files read and checked as the config is validated (readable,
//! the key matches the certificate, valid now), the server side (SNI picks
//! a certificate, ALPN, lowest version, resumption) and the client side
//! towards backends (system roots, a CA file, or no verification).

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
};

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::{aws_lc_rs, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions},
    sign::CertifiedKey,
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read it: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not valid PEM: {source:?}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in it (PEM \"CERTIFICATE\")", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key in it (PEM \"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\")", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: the private key is encrypted: xlb reads it unencrypted (e.g. `openssl pkey -in KEY -out PLAIN`), with the file readable by root only", path.display())]
    EncryptedKey { path: PathBuf },
    #[error("{}: the private key cannot be used: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{}: the private key does not match the certificate", path.display())]
    Mismatch { path: PathBuf },
    #[error("{}: the certificate cannot be parsed: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("{}: an X.509 v{version} certificate: xlb (rustls) takes v3 only (issue it with extensions, e.g. `openssl x509 -req -extfile` giving a subjectAltName)", path.display())]
    NotV3 { path: PathBuf, version: u32 },
    #[error("{}: the certificate expired at {not_after}", path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("{}: the certificate is not valid before {not_before}", path.display())]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("TLS set-up: {0}")]
    Setup(#[source] rustls::Error),
}

/// The one crypto provider xlb uses.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(aws_lc_rs::default_provider())).clone()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// A certificate chain and its private key, from one PEM file.
#[derive(Clone)]
pub struct CertFile {
    pub path: PathBuf,
    /// The DNS names of the leaf (its subjectAltNames, else its CN), lower
    /// case; `*.example.com` for wildcards.
    pub names: Vec<String>,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for CertFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFile({}, {:?})", self.path.display(), self.names)
    }
}

/// Equal when the same file holds the same chain: a certificate replaced
/// on disk makes a reload a change.
impl PartialEq for CertFile {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.key.cert == other.key.cert
    }
}

impl CertFile {
    /// Reads `path` (chain, leaf first, and private key) and checks it.
    pub fn load(path: &Path) -> Result<CertFile, TlsError> {
        let pem = read(path)?;
        let chain = certificates(path, &pem)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound
                if memchr::memmem::find(&pem, b"ENCRYPTED PRIVATE KEY").is_some() =>
            {
                TlsError::EncryptedKey { path: path.to_owned() }
            }
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: path.to_owned() },
            source => TlsError::Pem {
                path: path.to_owned(),
                source,
            },
        })?;
        let (names, not_after) = leaf_facts(path, &chain[0])?;
        let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|source| match source {
            rustls::Error::InconsistentKeys(_) => TlsError::Mismatch { path: path.to_owned() },
            source => TlsError::Key {
                path: path.to_owned(),
                source,
            },
        })?;
        Ok(CertFile {
            path: path.to_owned(),
            names,
            not_after,
            key: Arc::new(key),
        })
    }

    /// Serves `name` (exactly, or by a wildcard for one label).
    fn serves(&self, name: &str, wildcard: bool) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(suffix) if wildcard => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            Some(_) => false,
            None => n == name,
        })
    }
}

/// The names of a leaf certificate and the end of its validity; refuses one
/// that is not valid now.
fn leaf_facts(path: &Path, der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), TlsError> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).map_err(|e| TlsError::Certificate {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if cert.version() != x509_parser::x509::X509Version::V3 {
        // rustls (webpki) takes v3 only; say so rather than blame the key.
        return Err(TlsError::NotV3 {
            path: path.to_owned(),
            version: cert.version().0.saturating_add(1),
        });
    }
    let validity = cert.validity();
    if validity.not_after.timestamp() < now {
        return Err(TlsError::Expired {
            path: path.to_owned(),
            not_after: validity.not_after.to_string(),
        });
    }
    if validity.not_before.timestamp() > now {
        return Err(TlsError::NotYetValid {
            path: path.to_owned(),
            not_before: validity.not_before.to_string(),
        });
    }
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect();
    }
    Ok((names, validity.not_after.timestamp()))
}

/// The lowest TLS version a service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// Picks the certificate for the name the client asked for: an exact
/// name first, then a wildcard, else the first certificate (also for
/// clients that send no name).
#[derive(Debug)]
struct BySni(Vec<CertFile>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|name| {
            let name = name.to_ascii_lowercase();
            let name = name.trim_end_matches('.');
            let pick = |wildcard| self.0.iter().find(|c| c.serves(name, wildcard));
            pick(false).or_else(|| pick(true))
        });
        chosen.or(self.0.first()).map(|c| c.key.clone())
    }
}

type Resumption = (Arc<dyn ProducesTickets>, Arc<dyn StoresServerSessions>);

/// Session tickets and the session cache of a service, kept for the life
/// of the process so that reloads do not end resumption; each service has
/// its own (a session of one is never resumed on another). The ticket key
/// rotates every 6 hours (the previous one is still accepted).
fn resumption(service: &str) -> Result<Resumption, TlsError> {
    static BY_SERVICE: OnceLock<std::sync::Mutex<HashMap<String, Resumption>>> = OnceLock::new();
    let mut all = BY_SERVICE
        .get_or_init(Default::default)
        .lock()
        .expect("resumption lock");
    if let Some(r) = all.get(service) {
        return Ok(r.clone());
    }
    let tickets = aws_lc_rs::Ticketer::new().map_err(TlsError::Setup)?;
    let cache: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(SESSION_CACHE);
    all.insert(service.to_string(), (tickets.clone(), cache.clone()));
    Ok((tickets, cache))
}

/// Sessions remembered for resumption by session id (clients without
/// tickets).
const SESSION_CACHE: usize = 20_000;

/// The server side of service `service`: its certificates, ALPN
/// protocols (in the order of preference) and lowest version.
pub fn server_config(
    service: &str,
    certs: &[CertFile],
    alpn: &[String],
    min: MinVersion,
) -> Result<Arc<ServerConfig>, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni(certs.to_vec())));
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    (cfg.ticketer, cfg.session_storage) = resumption(service)?;
    Ok(Arc::new(cfg))
}

/// How a backend's certificate is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Verify {
    /// Against the system's trusted roots (`/etc/ssl/certs`).
    System,
    /// Against the certificates of a CA file.
    Ca {
        path: PathBuf,
        roots: Vec<CertificateDer<'static>>,
    },
    /// Not at all (encryption without authentication).
    None,
}

impl Verify {
    /// `"none"`, or the path of a PEM file of CA certificates.
    pub fn ca_file(path: &Path) -> Result<Verify, TlsError> {
        let pem = read(path)?;
        Ok(Verify::Ca {
            path: path.to_owned(),
            roots: certificates(path, &pem)?,
        })
    }
}

/// The client side towards a backend. The chain is checked (unless
/// `Verify::None`); the name only with `check_name` (a configured name, as
/// HAProxy checks the name only when one is given).
pub fn client_config(verify: &Verify, check_name: bool) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?;
    let mut roots = RootCertStore::empty();
    match verify {
        Verify::None => {}
        Verify::System => drop(roots.add_parsable_certificates(system_roots().iter().cloned())),
        Verify::Ca { roots: ca, .. } => drop(roots.add_parsable_certificates(ca.iter().cloned())),
    }
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::None => Arc::new(Unverified(provider())),
        _ => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Setup(rustls::Error::General(e.to_string())))?;
            if check_name {
                webpki
            } else {
                Arc::new(AnyName(webpki))
            }
        }
    };
    let mut cfg = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // Backends speak HTTP/1.1 to xlb.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The system's trusted roots, read once.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!("system CA certificates: {e}");
        }
        found.certs
    })
}

/// The name a backend connection asks for and checks: a DNS name, or the
/// backend's address.
pub fn server_name(name: Option<&str>, addr: IpAddr) -> ServerName<'static> {
    name.and_then(|n| ServerName::try_from(n.to_string()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.into()))
}

/// A chain checked against the roots, whatever name it is for.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `tls_verify = "none"`: signatures are still checked (the handshake
/// needs them), the certificate is not.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
