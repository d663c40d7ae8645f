//! The control plane's certificates: a CA, the API server's serving
//! certificate, and client certificates (with kubeconfigs) for any user
//! and groups.

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use super::ControlPlane;

/// The admin's user and group (every right).
pub(crate) const ADMIN: &str = "admin";
pub(crate) const ADMIN_GROUP: &str = "system:masters";

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
    /// A kubeconfig (JSON) for `user` in `groups`. With at most one group,
    /// a client certificate for them (CN = user, O = the group). A
    /// certificate made here cannot carry more (rcgen's subject holds one
    /// value per attribute type, and a second O replaced the first: a
    /// service account's three groups came out as its last one), so with
    /// more, the admin's certificate impersonating `user` in `groups`
    /// (`as`, `as-groups`), which the API server authorizes exactly as
    /// that user in those groups.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> anyhow::Result<String> {
        // kubeconfig *-data fields are base64 of the PEM.
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let credentials = if groups.len() <= 1 {
            let (cert, key) = self.sign(user, groups, false)?;
            serde_json::json!({"client-certificate-data": b64(&cert), "client-key-data": b64(&key)})
        } else {
            let (cert, key) = self.sign(ADMIN, &[ADMIN_GROUP], false)?;
            serde_json::json!({"client-certificate-data": b64(&cert), "client-key-data": b64(&key), "as": user, "as-groups": groups})
        };
        Ok(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testenv", "cluster": {"server": self.server, "certificate-authority-data": b64(&self.ca.1)}}],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": user}}],
            "current-context": "testenv",
        })
        .to_string())
    }

    /// Signs a certificate with the cluster CA: a client certificate (CN =
    /// user, O = its group, if any) or the API server's serving certificate.
    pub(crate) fn sign(&self, cn: &str, groups: &[&str], serving: bool) -> anyhow::Result<(String, String)> {
        anyhow::ensure!(groups.len() <= 1, "a certificate carries one group at most, not {groups:?}");
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
