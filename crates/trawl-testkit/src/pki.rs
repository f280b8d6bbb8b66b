//! Credentials made at test time: a throwaway CA with server and client
//! certificates, and signed NATS JWTs for operator mode.

use std::path::Path;

/// A throwaway CA (`ca.pem`), a server certificate for 127.0.0.1
/// (`server.pem`, `server-key.pem`) and a client certificate (`client.pem`,
/// `client-key.pem`) in `dir`.
pub fn make_certs(dir: &Path) {
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 1 -subj /CN=trawl-e2e-ca 2>/dev/null
            for who in server client; do
              openssl req -newkey rsa:2048 -nodes -keyout $who-key.pem -out $who.csr -subj /CN=trawl-e2e-$who 2>/dev/null
            done
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth\\n' > server.ext
            printf 'extendedKeyUsage=clientAuth\\n' > client.ext
            for who in server client; do
              openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out $who.pem -days 1 -extfile $who.ext 2>/dev/null
            done",
        )
        .current_dir(dir)
        .output()
        .expect("sh and openssl (tests/run.sh installs openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A signed NATS JWT (`ed25519-nkey`) with `nats` claims, issued by `issuer` for `subject`.
pub fn nats_jwt(
    issuer: &nkeys::KeyPair,
    subject: &str,
    name: &str,
    nats: serde_json::Value,
) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{name}-{subject}"),
        "iat": 1_700_000_000u64,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let body = format!("{header}.{}", b64.encode(claims.to_string()));
    let signature = issuer.sign(body.as_bytes()).unwrap();
    format!("{body}.{}", b64.encode(signature))
}
