//! The per-bottle certificate authority: made at launch, key in memory only,
//! mints (and caches, bounded) one leaf per intercepted host.

use super::ProxyError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

/// Leaves kept at most; the oldest is dropped first.
pub const LEAF_CACHE_CAP: usize = 1024;

/// The bottle's CA. Its private key never leaves this value.
pub struct BottleCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    identity: String,
    leaves: Mutex<LeafCache>,
}

impl fmt::Debug for BottleCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BottleCa")
            .field("identity", &self.identity)
            .field("fingerprint", &self.fingerprint_sha256())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct LeafCache {
    map: HashMap<String, Arc<CertifiedKey>>,
    order: VecDeque<String>,
}

impl BottleCa {
    /// A fresh ECDSA P-256 CA named after the bottle, valid for 30 days.
    pub fn generate(identity: &str) -> Result<Self, ProxyError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(ProxyError::Ca)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(ProxyError::Ca)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("bottle CA {identity}"));
        dn.push(DnType::OrganizationName, "bottle");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(30);
        let cert = params.self_signed(&key).map_err(ProxyError::Ca)?;
        Ok(Self {
            cert,
            key,
            identity: identity.to_string(),
            leaves: Mutex::default(),
        })
    }

    /// The CA certificate, PEM, for the guest's trust store.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// SHA-256 of the DER certificate, upper-case hex pairs joined by `:`.
    pub fn fingerprint_sha256(&self) -> String {
        let digest = Sha256::digest(self.cert.der());
        digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The leaf for `host` (a DNS name or IP text), minted on first use.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, ProxyError> {
        if let Some(hit) = self.lock().map.get(host) {
            return Ok(hit.clone());
        }
        let leaf = Arc::new(self.mint(host)?);
        let mut cache = self.lock();
        if cache.map.insert(host.to_string(), leaf.clone()).is_none() {
            cache.order.push_back(host.to_string());
        }
        while cache.order.len() > LEAF_CACHE_CAP {
            if let Some(old) = cache.order.pop_front() {
                cache.map.remove(&old);
            }
        }
        Ok(leaf)
    }

    /// Number of cached leaves.
    pub fn cached_leaves(&self) -> usize {
        self.lock().map.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeafCache> {
        // A poisoned cache only holds finished leaves; keep using it.
        self.leaves.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mint(&self, host: &str) -> Result<CertifiedKey, ProxyError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(ProxyError::Ca)?;
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(ProxyError::Ca)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(7);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(ProxyError::Ca)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing =
            rustls::crypto::ring::sign::any_ecdsa_type(&der).map_err(ProxyError::LeafKey)?;
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), self.cert.der().clone()];
        Ok(CertifiedKey::new(chain, signing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_exports_pem_and_a_colon_separated_fingerprint() {
        let ca = BottleCa::generate("agent-abcde").unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let fp = ca.fingerprint_sha256();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert_eq!(fp.split(':').count(), 32);
        assert_ne!(
            fp,
            BottleCa::generate("agent-abcde")
                .unwrap()
                .fingerprint_sha256()
        );
    }

    #[test]
    fn leaves_are_cached_per_host() {
        let ca = BottleCa::generate("t").unwrap();
        let a = ca.leaf("a.example").unwrap();
        let again = ca.leaf("a.example").unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        ca.leaf("127.0.0.1").unwrap();
        assert_eq!(ca.cached_leaves(), 2);
        assert_eq!(a.cert.len(), 2);
    }

    #[test]
    fn leaf_cache_is_bounded() {
        let ca = BottleCa::generate("t").unwrap();
        for i in 0..LEAF_CACHE_CAP + 5 {
            ca.leaf(&format!("h{i}.example")).unwrap();
        }
        assert_eq!(ca.cached_leaves(), LEAF_CACHE_CAP);
    }
}
