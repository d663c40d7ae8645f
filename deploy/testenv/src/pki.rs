//! The control plane's certificates: a CA, the API server's serving
//! certificate, and client certificates (with kubeconfigs) for any user
//! and groups.

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use super::ControlPlane;

/// A new self-signed CA: its parameters, key and certificate (PEM).
pub(crate) fn ca() -> anyhow::Result<(CertificateParams, KeyPair, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "spawner-testenv-ca");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key)?;
    Ok((params, key, cert.pem()))
}

impl ControlPlane {
    /// A kubeconfig (JSON) for `user` in `groups`.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> anyhow::Result<String> {
        let (cert, key) = self.sign(user, groups, false)?;
        // kubeconfig *-data fields are base64 of the PEM.
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        Ok(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testenv", "cluster": {"server": self.server, "certificate-authority-data": b64(&self.ca.1)}}],
            "users": [{"name": user, "user": {"client-certificate-data": b64(&cert), "client-key-data": b64(&key)}}],
            "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": user}}],
            "current-context": "testenv",
        })
        .to_string())
    }

    /// Signs a certificate with the cluster CA: a client certificate (CN =
    /// user, O = groups) or the API server's serving certificate.
    pub(crate) fn sign(&self, cn: &str, groups: &[&str], serving: bool) -> anyhow::Result<(String, String)> {
        let sans = if serving { vec!["127.0.0.1".to_string(), "localhost".to_string()] } else { Vec::new() };
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![if serving { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate()?;
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::from_params(&self.ca.0, &ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}
