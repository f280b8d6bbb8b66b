//! TLS for `amqps://` brokers (rustls): the CA that signed the broker's
//! certificate, and a client certificate for brokers that ask for one.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

use super::params::RabbitParams;
use crate::TransportError;

fn read(key: &str, path: &std::path::Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path)
        .map_err(|e| TransportError::Refused(format!("{key}: cannot read {}: {e}", path.display())))
}

/// Read from the files at each connect, so renewed certificates are used.
pub(super) fn config(params: &RabbitParams) -> Result<OwnedTLSConfig, TransportError> {
    let cert_chain = match &params.tls_ca {
        Some(ca) => Some(String::from_utf8_lossy(&read("tls_ca", ca)?).into_owned()),
        None => None,
    };
    let identity = match (&params.tls_cert, &params.tls_key) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read("tls_cert", cert)?,
            key: read("tls_key", key)?,
        }),
        _ => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}
