//! What a careful SAML service provider checks in a response from the gateway: the XML
//! signature of the whole `Response` against the gateway's certificate (RSA-SHA256 only,
//! and only the signed part is read on), an assertion meant for this provider (audience),
//! and its validity period. The demo vendor of `portvakt demo` uses it to show a patron
//! exactly what arrived, and the tests use it as a vendor would.

use data_encoding::BASE64;
use samael::crypto::{
    AllowedSignatureAlgorithm, CertificateDer, Crypto, CryptoProvider, ReduceMode,
};

/// What a verified SAML response carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamlSeen {
    pub issuer: Option<String>,
    pub name_id: Option<String>,
    pub name_id_format: Option<String>,
    /// Every attribute value, as (attribute name, value).
    pub attributes: Vec<(String, String)>,
}

/// Verifies a base64 `SAMLResponse` the way the demo vendor does: the XML signature of
/// the Response against `cert_pem` (RSA-SHA256 only; only the signed part is read on),
/// an assertion whose audience includes `audience`, and `NotOnOrAfter` after `now`.
/// The error is a sentence in bokmål saying why not.
pub fn verify_saml_response(
    saml_response: &str,
    cert_pem: &str,
    audience: &str,
    now: jiff::Timestamp,
) -> Result<SamlSeen, String> {
    let compact: String = saml_response.split_whitespace().collect();
    let bytes = BASE64
        .decode(compact.as_bytes())
        .map_err(|e| format!("SAMLResponse er ikke gyldig base64: {e}"))?;
    let xml = String::from_utf8(bytes).map_err(|_| "SAMLResponse er ikke UTF-8".to_owned())?;
    let cert = openssl::x509::X509::from_pem(cert_pem.as_bytes())
        .and_then(|c| c.to_der())
        .map(CertificateDer::from)
        .map_err(|e| format!("sertifikatet til Portvakt kan ikke leses: {e}"))?;
    let signed = Crypto::reduce_xml_to_signed_with_allowed_algorithms(
        &xml,
        &[cert],
        ReduceMode::ValidateAndMarkNoAncestors,
        Some(&[AllowedSignatureAlgorithm::RsaSha256]),
    )
    .map_err(|e| format!("signaturen er ikke gyldig: {e}"))?;
    let response: samael::schema::Response = signed
        .parse()
        .map_err(|e| format!("svaret er ikke signert som helhet, eller kan ikke leses: {e}"))?;
    let assertion = response
        .assertion
        .ok_or_else(|| "svaret har ingen (ukryptert) assertion".to_owned())?;
    let conditions = assertion
        .conditions
        .ok_or_else(|| "assertion mangler Conditions".to_owned())?;
    let audiences: Vec<String> = conditions
        .audience_restrictions
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.audience)
        .collect();
    if !audiences.iter().any(|a| a == audience) {
        return Err(format!(
            "assertion er ikke ment for oss: publikum {audiences:?}, vi er {audience}"
        ));
    }
    let expires = conditions
        .not_on_or_after
        .ok_or_else(|| "assertion mangler NotOnOrAfter".to_owned())?;
    if expires.timestamp() <= now.as_second() {
        return Err(format!("assertion er utløpt (NotOnOrAfter {expires})"));
    }
    if let Some(nb) = conditions.not_before
        && nb.timestamp() > now.as_second() + 60
    {
        return Err(format!("assertion gjelder ennå ikke (NotBefore {nb})"));
    }
    let name_id = assertion.subject.and_then(|s| s.name_id);
    let attributes = assertion
        .attribute_statements
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| s.attributes)
        .flat_map(|a| {
            let name = a.name.or(a.friendly_name).unwrap_or_default();
            a.values
                .into_iter()
                .map(move |v| (name.clone(), v.value.unwrap_or_default()))
        })
        .collect();
    Ok(SamlSeen {
        issuer: assertion.issuer.value,
        name_id_format: name_id.as_ref().and_then(|n| n.format.clone()),
        name_id: name_id.map(|n| n.value),
        attributes,
    })
}
