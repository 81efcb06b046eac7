//! The SAML 2.0 identity provider for vendors (`access = "saml"`).
//!
//! Two ways in, one way out. An entry link makes an unsolicited response
//! ([`Idp::unsolicited_response`]); a vendor's AuthnRequest arrives at `/saml/sso` by the
//! HTTP-Redirect binding ([`Idp::parse_redirect`]) or the HTTP-POST binding
//! ([`Idp::parse_post`]), is checked against the policy's `[service.saml]` and becomes an
//! [`SpRequest`]; after the decision, [`Idp::response_to`] answers it. Either way the result
//! is a [`PostBinding`]: a Response, signed, with a signed Assertion inside, and the
//! auto-submitting form ([`PostBinding::html`]) that carries it to the vendor's ACS.
//!
//! What the assertion holds is exactly the [`Release`] it is given, spelled for SAML:
//! `pseudonym` becomes the persistent NameID and
//! `urn:oasis:names:tc:SAML:attribute:pairwise-id` (`<pseudonym>@<scope>`), `affiliation`
//! becomes eduPersonScopedAffiliation (`urn:oid:1.3.6.1.4.1.5923.1.1.1.9`), and every other
//! released attribute is `urn:portvakt:attribute:<name>`.
//!
//! # How samael is used, and where it is not
//!
//! samael (with xmlsec) signs the documents ([`CryptoProvider::sign_xml`]), makes the
//! `ds:Signature` templates, parses AuthnRequests and verifies HTTP-POST signatures
//! ([`CryptoProvider::reduce_xml_to_signed_with_allowed_algorithms`], which keeps only the
//! signed element, so a wrapped request cannot slip past). The documents themselves are
//! written here, because samael's writers put text content into the XML unescaped (an
//! institution named "Bok & Blad" would break the document), have no NameQualifier or
//! SPNameQualifier on NameID, default the digest to SHA-1, read the clock themselves, and
//! put NameIDFormat after SingleSignOnService in IdP metadata, against the schema. The
//! HTTP-Redirect signature is checked here too (with openssl, which samael already brings):
//! samael's `UrlVerifier` re-encodes the query parameters instead of using the bytes the SP
//! signed, and panics on a missing or unknown `SigAlg`.
//!
//! # Choices the standards leave open
//!
//! - Both signatures use RSA-SHA256 with SHA-256 digests, exclusive c14n. The assertion is
//!   signed first, on its own, then placed in the response, which is signed last; exclusive
//!   c14n makes the assertion's signature independent of where it sits.
//! - `Conditions` `NotBefore` = now, `NotOnOrAfter` = now + 5 minutes; the bearer
//!   confirmation's `NotOnOrAfter` is the same instant. `AuthnInstant` is the login time.
//!   The AuthnContextClassRef is `unspecified` (a card and PIN, or Feide: neither maps
//!   cleanly onto SAML's classes).
//! - When `pseudonym` is not released, the NameID is `transient`, a fresh random value for
//!   every response, and no pairwise-id is sent: the vendor learns nothing stable.
//! - An AuthnRequest's `NameIDPolicy` is not negotiated: the answer is always as above.
//!   `ForceAuthn` and `IsPassive` are not honoured (the gateway's session decides).
//! - An AuthnRequest is refused when its `Destination` (if present) is not our SSO URL,
//!   its `ProtocolBinding` (if present) is not HTTP-POST, or its ACS URL (if present) is not
//!   the configured `acs_url`. `AssertionConsumerServiceIndex` is ignored: there is one ACS.
//! - With `certificate` configured, a signature is required; only RSA-SHA256 is accepted.
//!   Without one, signatures are not checked (the response still only goes to the
//!   configured ACS, so an unsigned request cannot redirect it).
//! - Documents with a DOCTYPE are refused before any parsing, and inflated
//!   HTTP-Redirect requests are capped at [`MAX_REQUEST_BYTES`].

pub mod sp;

use std::fmt::Write as _;
use std::io::Read as _;

use data_encoding::BASE64;
use http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use samael::crypto::{
    AllowedSignatureAlgorithm, CertificateDer, Crypto, CryptoProvider, ReduceMode,
};
use samael::schema::AuthnRequest;
use samael::signature::{DigestAlgorithm, Signature};
use sha2::{Digest, Sha256};
use url::Url;

use super::{SigningKey, random_id};
use policy::ids::ServiceId;
use policy::release::Value;
use policy::{Access, Attribute, Policy, Release, SamlSettings};

/// How long an assertion is good for: the upper bound `docs/vendors.md` promises.
pub const ASSERTION_LIFETIME: SignedDuration = SignedDuration::from_secs(300);

/// The largest AuthnRequest accepted, before and after inflating: real ones are a few KiB.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

pub const BINDING_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
pub const BINDING_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
pub const NAMEID_PERSISTENT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent";
pub const NAMEID_TRANSIENT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient";
pub const ATTR_PAIRWISE_ID: &str = "urn:oasis:names:tc:SAML:attribute:pairwise-id";
pub const ATTR_SCOPED_AFFILIATION: &str = "urn:oid:1.3.6.1.4.1.5923.1.1.1.9";
/// Prefix of every other released attribute's name.
pub const ATTR_PORTVAKT_PREFIX: &str = "urn:portvakt:attribute:";
const ATTRNAME_URI: &str = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri";
const SIG_RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
const NS_PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const NS_ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const NS_METADATA: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
const NS_DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";

#[derive(Debug, thiserror::Error)]
pub enum SamlError {
    #[error("no SAMLRequest in the request")]
    MissingRequest,
    #[error("the SAMLRequest parameter {0} appears twice")]
    DuplicateParameter(&'static str),
    #[error("the SAMLRequest is not valid {0}")]
    Encoding(&'static str),
    #[error("the SAMLRequest is larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("the SAMLRequest is not an AuthnRequest: {0}")]
    Malformed(String),
    #[error("the AuthnRequest has no Issuer")]
    MissingIssuer,
    #[error("the AuthnRequest's issuer {0:?} is not a configured service provider")]
    UnknownSp(String),
    #[error("the AuthnRequest's AssertionConsumerServiceURL is not the configured acs_url")]
    AcsMismatch,
    #[error("the AuthnRequest's Destination is not this identity provider's SSO URL")]
    DestinationMismatch,
    #[error("the AuthnRequest asks for the binding {0:?}; only HTTP-POST is supported")]
    UnsupportedBinding(String),
    #[error("the AuthnRequest must be signed (the service provider has a certificate)")]
    MissingSignature,
    #[error("the AuthnRequest's signature is not valid for the configured certificate")]
    BadSignature,
    #[error("the signature algorithm {0:?} is not accepted; use RSA-SHA256")]
    UnsupportedSigAlg(String),
    #[error("the service {0} is not a SAML service")]
    NotSaml(String),
    #[error("the response is for {expected:?} but the request came from {got:?}")]
    WrongSp { expected: String, got: String },
    #[error("the service provider's certificate cannot be read: {0}")]
    SpCertificate(String),
    #[error("cannot sign the SAML document: {0}")]
    Sign(String),
    #[error("the operating system's random number generator failed: {0}")]
    Random(#[from] getrandom::Error),
}

impl SamlError {
    /// Who caused it: `true` for the vendor (its request), `false` for us.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            Self::NotSaml(_)
                | Self::WrongSp { .. }
                | Self::SpCertificate(_)
                | Self::Sign(_)
                | Self::Random(_)
        )
    }

    /// The HTTP status the SSO endpoint answers with.
    pub fn status(&self) -> StatusCode {
        if self.is_client_error() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The identity provider's own settings: `[saml] entity_id` and `scope`, the SSO URL
/// (`<scheme>://<public_host>/saml/sso`) and the signing key.
#[derive(Clone, Debug)]
pub struct Idp {
    pub entity_id: String,
    pub sso_url: String,
    /// The scope of scoped attributes, e.g. `bib.example.no`.
    pub scope: String,
    pub key: SigningKey,
}

/// A checked AuthnRequest: from a configured SP, to its configured ACS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpRequest {
    /// The request's `ID`, answered as `InResponseTo`.
    pub id: String,
    /// The SP's entity id (the request's Issuer).
    pub issuer: String,
    /// The service the SP is configured as: what the gateway decides on.
    pub service: ServiceId,
    pub relay_state: Option<String>,
}

/// A signed response on its way to the ACS by the HTTP-POST binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostBinding {
    pub acs_url: String,
    /// The signed `samlp:Response`, as XML.
    pub xml: String,
    pub relay_state: Option<String>,
}

impl PostBinding {
    /// The `SAMLResponse` form value: base64 of the XML.
    pub fn saml_response(&self) -> String {
        BASE64.encode(self.xml.as_bytes())
    }

    /// The auto-submitting page; serve it with [`post_form_csp`] as its CSP.
    pub fn html(&self) -> String {
        post_form(
            &self.acs_url,
            &self.saml_response(),
            self.relay_state.as_deref(),
        )
    }
}

/// The IdP metadata: an EntityDescriptor with one IDPSSODescriptor holding the signing
/// certificate, persistent NameIDs, and SSO by HTTP-Redirect and HTTP-POST at `sso_url`.
pub fn metadata(entity_id: &str, sso_url: &str, cert_pem: &str) -> Result<String, SamlError> {
    let cert = openssl::x509::X509::from_pem(cert_pem.as_bytes())
        .and_then(|c| c.to_der())
        .map_err(|e| SamlError::Sign(format!("the signing certificate: {e}")))?;
    let mut x = Xml::default();
    x.raw(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    x.open(
        "md:EntityDescriptor",
        &[
            ("xmlns:md", NS_METADATA),
            ("xmlns:ds", NS_DSIG),
            ("entityID", entity_id),
        ],
    );
    x.open(
        "md:IDPSSODescriptor",
        &[
            ("protocolSupportEnumeration", NS_PROTOCOL),
            ("WantAuthnRequestsSigned", "false"),
        ],
    );
    x.open("md:KeyDescriptor", &[("use", "signing")]);
    x.open("ds:KeyInfo", &[]);
    x.open("ds:X509Data", &[]);
    x.leaf("ds:X509Certificate", &[], &BASE64.encode(&cert));
    x.close("ds:X509Data");
    x.close("ds:KeyInfo");
    x.close("md:KeyDescriptor");
    x.leaf("md:NameIDFormat", &[], NAMEID_PERSISTENT);
    x.leaf("md:NameIDFormat", &[], NAMEID_TRANSIENT);
    for binding in [BINDING_REDIRECT, BINDING_POST] {
        x.empty(
            "md:SingleSignOnService",
            &[("Binding", binding), ("Location", sso_url)],
        );
    }
    x.close("md:IDPSSODescriptor");
    x.close("md:EntityDescriptor");
    Ok(x.0)
}

impl Idp {
    /// This IdP's metadata document (see [`metadata`]).
    pub fn metadata(&self) -> Result<String, SamlError> {
        metadata(&self.entity_id, &self.sso_url, self.key.cert_pem())
    }

    /// The response of an entry link: no `InResponseTo`, RelayState = `start_url`.
    pub fn unsolicited_response(
        &self,
        sp: &SamlSettings,
        release: &Release,
        authn_instant: Timestamp,
        now: Timestamp,
    ) -> Result<PostBinding, SamlError> {
        let xml = self.signed_response(sp, None, release, authn_instant, now)?;
        Ok(PostBinding {
            acs_url: sp.acs_url.to_string(),
            xml,
            relay_state: sp.start_url.clone(),
        })
    }

    /// The answer to a checked AuthnRequest of `sp` (the settings of `request.service`),
    /// with its RelayState passed back.
    pub fn response_to(
        &self,
        request: &SpRequest,
        sp: &SamlSettings,
        release: &Release,
        authn_instant: Timestamp,
        now: Timestamp,
    ) -> Result<PostBinding, SamlError> {
        if request.issuer != sp.entity_id {
            return Err(SamlError::WrongSp {
                expected: sp.entity_id.clone(),
                got: request.issuer.clone(),
            });
        }
        let xml = self.signed_response(sp, Some(&request.id), release, authn_instant, now)?;
        Ok(PostBinding {
            acs_url: sp.acs_url.to_string(),
            xml,
            relay_state: request.relay_state.clone(),
        })
    }

    /// An AuthnRequest by the HTTP-Redirect binding. `raw_query` is the query string exactly
    /// as received (still percent-encoded): the signature covers those bytes.
    pub fn parse_redirect(&self, policy: &Policy, raw_query: &str) -> Result<SpRequest, SamlError> {
        let mut saml_request = None;
        let mut relay_state = None;
        let mut sig_alg = None;
        let mut signature = None;
        for pair in raw_query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (slot, label) = match name {
                "SAMLRequest" => (&mut saml_request, "SAMLRequest"),
                "RelayState" => (&mut relay_state, "RelayState"),
                "SigAlg" => (&mut sig_alg, "SigAlg"),
                "Signature" => (&mut signature, "Signature"),
                _ => continue,
            };
            // Two values for one name leave it open which one was signed.
            if slot.replace(value).is_some() {
                return Err(SamlError::DuplicateParameter(label));
            }
        }
        let raw_request = saml_request.ok_or(SamlError::MissingRequest)?;
        if raw_request.len() > MAX_REQUEST_BYTES {
            return Err(SamlError::TooLarge);
        }
        let deflated = decode_base64(&percent_decode(raw_request))?;
        let xml = inflate(&deflated)?;
        let request = parse_authn_request(&xml)?;
        let (service, sp) = find_sp(policy, &request)?;
        if let Some(cert_pem) = &sp.certificate {
            let (Some(sig_alg), Some(signature)) = (sig_alg, signature) else {
                return Err(SamlError::MissingSignature);
            };
            let alg = percent_decode(sig_alg);
            if alg != SIG_RSA_SHA256 {
                return Err(SamlError::UnsupportedSigAlg(alg));
            }
            // SAML bindings §3.4.4.1: the parameters as received, in this order.
            let mut signed = format!("SAMLRequest={raw_request}");
            if let Some(rs) = relay_state {
                let _ = write!(signed, "&RelayState={rs}");
            }
            let _ = write!(signed, "&SigAlg={sig_alg}");
            let signature =
                decode_base64(&percent_decode(signature)).map_err(|_| SamlError::BadSignature)?;
            verify_rsa_sha256(cert_pem, signed.as_bytes(), &signature)?;
        }
        self.check_request(&request, sp)?;
        Ok(SpRequest {
            id: request.id,
            issuer: sp.entity_id.clone(),
            service,
            relay_state: relay_state.map(percent_decode),
        })
    }

    /// An AuthnRequest by the HTTP-POST binding: the `SAMLRequest` and `RelayState` form
    /// fields, already form-decoded.
    pub fn parse_post(
        &self,
        policy: &Policy,
        saml_request: &str,
        relay_state: Option<&str>,
    ) -> Result<SpRequest, SamlError> {
        if saml_request.len() > MAX_REQUEST_BYTES * 2 {
            return Err(SamlError::TooLarge);
        }
        let bytes = decode_base64(saml_request)?;
        let xml = String::from_utf8(bytes).map_err(|_| SamlError::Encoding("UTF-8"))?;
        let unverified = parse_authn_request(&xml)?;
        let (service, sp) = find_sp(policy, &unverified)?;
        let request = match &sp.certificate {
            None => unverified,
            Some(cert_pem) => {
                if unverified.signature.is_none() {
                    return Err(SamlError::MissingSignature);
                }
                let cert = cert_der(cert_pem)?;
                // Only what the signature covers survives the reduction, so the request
                // read next is the signed one, not a look-alike planted beside it.
                let signed = Crypto::reduce_xml_to_signed_with_allowed_algorithms(
                    &xml,
                    &[cert],
                    ReduceMode::ValidateAndMarkNoAncestors,
                    Some(&[AllowedSignatureAlgorithm::RsaSha256]),
                )
                .map_err(|_| SamlError::BadSignature)?;
                let request = parse_authn_request(&signed)?;
                if request.id != unverified.id || issuer_of(&request) != issuer_of(&unverified) {
                    return Err(SamlError::BadSignature);
                }
                request
            }
        };
        self.check_request(&request, sp)?;
        Ok(SpRequest {
            id: request.id,
            issuer: sp.entity_id.clone(),
            service,
            relay_state: relay_state.map(str::to_owned),
        })
    }

    fn check_request(&self, request: &AuthnRequest, sp: &SamlSettings) -> Result<(), SamlError> {
        if let Some(acs) = &request.assertion_consumer_service_url
            && Url::parse(acs).ok().as_ref() != Some(&sp.acs_url)
        {
            return Err(SamlError::AcsMismatch);
        }
        if let Some(dest) = &request.destination
            && dest != &self.sso_url
        {
            return Err(SamlError::DestinationMismatch);
        }
        if let Some(binding) = &request.protocol_binding
            && binding != BINDING_POST
        {
            return Err(SamlError::UnsupportedBinding(binding.clone()));
        }
        // The ID comes back as InResponseTo; anything huge or odd is not a real SP's.
        if request.id.is_empty() || request.id.len() > 256 {
            return Err(SamlError::Malformed("the ID is empty or too long".into()));
        }
        Ok(())
    }

    fn signed_response(
        &self,
        sp: &SamlSettings,
        in_response_to: Option<&str>,
        release: &Release,
        authn_instant: Timestamp,
        now: Timestamp,
    ) -> Result<String, SamlError> {
        let response_id = random_id("_r")?;
        let assertion_id = random_id("_a")?;
        let acs = sp.acs_url.as_str();
        let issue = instant(now);
        let until = instant(now.saturating_add(ASSERTION_LIFETIME).unwrap_or(now));
        let template = |id: &str| signature_template(id, self.key.cert_der());

        // The assertion, signed on its own first.
        let mut a = Xml::default();
        a.open(
            "saml:Assertion",
            &[
                ("xmlns:saml", NS_ASSERTION),
                ("ID", &assertion_id),
                ("Version", "2.0"),
                ("IssueInstant", &issue),
            ],
        );
        a.leaf("saml:Issuer", &[], &self.entity_id);
        a.raw(&template(&assertion_id)?);
        a.open("saml:Subject", &[]);
        match release.get(Attribute::Pseudonym) {
            Some(p) => a.leaf(
                "saml:NameID",
                &[
                    ("Format", NAMEID_PERSISTENT),
                    ("NameQualifier", &self.entity_id),
                    ("SPNameQualifier", &sp.entity_id),
                ],
                &p.as_text(),
            ),
            None => a.leaf(
                "saml:NameID",
                &[("Format", NAMEID_TRANSIENT)],
                &random_id("_t")?,
            ),
        }
        a.open(
            "saml:SubjectConfirmation",
            &[("Method", "urn:oasis:names:tc:SAML:2.0:cm:bearer")],
        );
        let mut data = vec![("NotOnOrAfter", until.as_str()), ("Recipient", acs)];
        if let Some(irt) = in_response_to {
            data.push(("InResponseTo", irt));
        }
        a.empty("saml:SubjectConfirmationData", &data);
        a.close("saml:SubjectConfirmation");
        a.close("saml:Subject");
        a.open(
            "saml:Conditions",
            &[("NotBefore", &issue), ("NotOnOrAfter", &until)],
        );
        a.open("saml:AudienceRestriction", &[]);
        a.leaf("saml:Audience", &[], &sp.entity_id);
        a.close("saml:AudienceRestriction");
        a.close("saml:Conditions");
        a.open(
            "saml:AuthnStatement",
            &[("AuthnInstant", &instant(authn_instant))],
        );
        a.open("saml:AuthnContext", &[]);
        a.leaf(
            "saml:AuthnContextClassRef",
            &[],
            "urn:oasis:names:tc:SAML:2.0:ac:classes:unspecified",
        );
        a.close("saml:AuthnContext");
        a.close("saml:AuthnStatement");
        let attributes = saml_attributes(release, &self.scope);
        if !attributes.is_empty() {
            a.open("saml:AttributeStatement", &[]);
            for (name, friendly, value) in &attributes {
                a.open(
                    "saml:Attribute",
                    &[
                        ("Name", name),
                        ("NameFormat", ATTRNAME_URI),
                        ("FriendlyName", friendly),
                    ],
                );
                a.leaf(
                    "saml:AttributeValue",
                    &[
                        ("xmlns:xs", "http://www.w3.org/2001/XMLSchema"),
                        ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
                        ("xsi:type", "xs:string"),
                    ],
                    value,
                );
                a.close("saml:Attribute");
            }
            a.close("saml:AttributeStatement");
        }
        a.close("saml:Assertion");
        let signed_assertion = sign(&a.0, &self.key)?;

        // Then the response around it, signed last so its signature covers the assertion's.
        let mut r = Xml::default();
        let mut attrs = vec![
            ("xmlns:samlp", NS_PROTOCOL),
            ("xmlns:saml", NS_ASSERTION),
            ("ID", response_id.as_str()),
            ("Version", "2.0"),
            ("IssueInstant", issue.as_str()),
            ("Destination", acs),
        ];
        if let Some(irt) = in_response_to {
            attrs.push(("InResponseTo", irt));
        }
        r.open("samlp:Response", &attrs);
        r.leaf(
            "saml:Issuer",
            &[("Format", "urn:oasis:names:tc:SAML:2.0:nameid-format:entity")],
            &self.entity_id,
        );
        r.raw(&template(&response_id)?);
        r.open("samlp:Status", &[]);
        r.empty(
            "samlp:StatusCode",
            &[("Value", "urn:oasis:names:tc:SAML:2.0:status:Success")],
        );
        r.close("samlp:Status");
        r.raw(strip_declaration(&signed_assertion));
        r.close("samlp:Response");
        sign(&r.0, &self.key)
    }
}

/// The released attributes as SAML attributes `(Name, FriendlyName, value)`, in release
/// order. Only what is in `release` appears; `pseudonym` and `affiliation` take their
/// standard names, everything else the `urn:portvakt:attribute:` ones.
pub fn saml_attributes(release: &Release, scope: &str) -> Vec<(String, String, String)> {
    release
        .attributes
        .iter()
        .map(|(attr, value)| match attr {
            Attribute::Pseudonym => (
                ATTR_PAIRWISE_ID.to_owned(),
                "pairwise-id".to_owned(),
                format!("{}@{scope}", value.as_text()),
            ),
            Attribute::Affiliation => (
                ATTR_SCOPED_AFFILIATION.to_owned(),
                "eduPersonScopedAffiliation".to_owned(),
                format!("{}@{scope}", scoped_affiliation(value)),
            ),
            other => (
                format!("{ATTR_PORTVAKT_PREFIX}{}", other.name()),
                other.name(),
                value.as_text(),
            ),
        })
        .collect()
}

/// eduPersonScopedAffiliation's vocabulary: a library patron is a `member` of the library
/// like staff are; a walk-in gets a value of its own, so no vendor mistakes them for one.
fn scoped_affiliation(value: &Value) -> &'static str {
    match value.as_text().as_str() {
        "student" => "student",
        "walk_in" => "library-walk-in",
        _ => "member",
    }
}

/// The HTTP-POST binding's page: the form posts itself; without JavaScript, the patron
/// presses the button. Every value is HTML-escaped (RelayState comes from the vendor).
pub fn post_form(acs_url: &str, saml_response: &str, relay_state: Option<&str>) -> String {
    let mut html = String::with_capacity(saml_response.len() + 1024);
    html.push_str("<!doctype html>\n<html lang=\"nb\">\n<head>\n<meta charset=\"utf-8\">\n");
    html.push_str("<title>Sender deg videre …</title>\n</head>\n<body>\n");
    let _ = writeln!(
        html,
        "<form method=\"post\" action=\"{}\">",
        html_escape(acs_url)
    );
    let _ = writeln!(
        html,
        "<input type=\"hidden\" name=\"SAMLResponse\" value=\"{}\">",
        html_escape(saml_response)
    );
    if let Some(rs) = relay_state {
        let _ = writeln!(
            html,
            "<input type=\"hidden\" name=\"RelayState\" value=\"{}\">",
            html_escape(rs)
        );
    }
    html.push_str("<p>Du blir sendt videre til tjenesten.</p>\n");
    html.push_str(
        "<noscript><p>Nettleseren din kjører ikke JavaScript. Trykk på knappen for å fortsette.</p>\n\
         <button type=\"submit\">Fortsett</button></noscript>\n",
    );
    html.push_str("</form>\n<script>");
    html.push_str(POST_FORM_SCRIPT);
    html.push_str("</script>\n</body>\n</html>\n");
    html
}

/// The one script of [`post_form`], fixed so a CSP can allow exactly it by hash.
pub const POST_FORM_SCRIPT: &str = "document.forms[0].submit();";

/// A Content-Security-Policy for the [`post_form`] page: only its own script runs, and
/// the form may post only to `acs_url`'s origin.
pub fn post_form_csp(acs_url: &str) -> String {
    let hash = BASE64.encode(&Sha256::digest(POST_FORM_SCRIPT.as_bytes()));
    let origin = Url::parse(acs_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "'none'".into());
    format!("default-src 'none'; script-src 'sha256-{hash}'; form-action {origin}")
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The configured SP that issued `request`, and its service.
fn find_sp<'p>(
    policy: &'p Policy,
    request: &AuthnRequest,
) -> Result<(ServiceId, &'p SamlSettings), SamlError> {
    let issuer = issuer_of(request).ok_or(SamlError::MissingIssuer)?;
    policy
        .services()
        .iter()
        .find_map(|s| match &s.access {
            Access::Saml(saml) if saml.entity_id == issuer => Some((s.id.clone(), saml)),
            _ => None,
        })
        .ok_or_else(|| SamlError::UnknownSp(issuer.to_owned()))
}

fn issuer_of(request: &AuthnRequest) -> Option<&str> {
    request
        .issuer
        .as_ref()
        .and_then(|i| i.value.as_deref())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn parse_authn_request(xml: &str) -> Result<AuthnRequest, SamlError> {
    // SAML forbids DTDs; refusing them outright rules out entity tricks in any parser.
    if xml.contains("<!DOCTYPE") || xml.contains("<!ENTITY") {
        return Err(SamlError::Malformed("a DOCTYPE is not allowed".into()));
    }
    if root_local_name(xml).as_deref() != Some("AuthnRequest") {
        return Err(SamlError::Malformed(
            "the root element is not AuthnRequest".into(),
        ));
    }
    xml.parse::<AuthnRequest>()
        .map_err(|e| SamlError::Malformed(e.to_string()))
}

/// The local name of the first element, so another message (a LogoutRequest, say) cannot
/// pass as an AuthnRequest through a lenient deserializer.
fn root_local_name(xml: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event().ok()? {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                return Some(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
            }
            quick_xml::events::Event::Eof => return None,
            _ => {}
        }
    }
}

fn percent_decode(raw: &str) -> String {
    // Query values are form-encoded: `+` is a space, as in every SP's URL encoder.
    url::form_urlencoded::parse(format!("v={raw}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn decode_base64(s: &str) -> Result<Vec<u8>, SamlError> {
    // Some SPs wrap base64 at 76 columns.
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    BASE64
        .decode(compact.as_bytes())
        .map_err(|_| SamlError::Encoding("base64"))
}

fn inflate(deflated: &[u8]) -> Result<String, SamlError> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| SamlError::Encoding("DEFLATE"))?;
    if out.len() > MAX_REQUEST_BYTES {
        return Err(SamlError::TooLarge);
    }
    String::from_utf8(out).map_err(|_| SamlError::Encoding("UTF-8"))
}

fn cert_der(pem: &str) -> Result<CertificateDer, SamlError> {
    openssl::x509::X509::from_pem(pem.as_bytes())
        .and_then(|c| c.to_der())
        .map(CertificateDer::from)
        .map_err(|e| SamlError::SpCertificate(e.to_string()))
}

fn verify_rsa_sha256(cert_pem: &str, data: &[u8], signature: &[u8]) -> Result<(), SamlError> {
    let key = openssl::x509::X509::from_pem(cert_pem.as_bytes())
        .and_then(|c| c.public_key())
        .map_err(|e| SamlError::SpCertificate(e.to_string()))?;
    let ok = openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &key)
        .and_then(|mut v| v.verify_oneshot(signature, data))
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(SamlError::BadSignature)
    }
}

/// samael's enveloped-signature template (exclusive c14n, RSA-SHA256, our certificate in
/// KeyInfo), with the digest raised from its SHA-1 default to SHA-256.
fn signature_template(id: &str, cert_der: &[u8]) -> Result<String, SamlError> {
    let mut sig = Signature::template(id, &CertificateDer::from(cert_der.to_vec()));
    for reference in &mut sig.signed_info.reference {
        reference.digest_method.algorithm = DigestAlgorithm::Sha256;
    }
    let event =
        quick_xml::events::Event::try_from(&sig).map_err(|e| SamlError::Sign(e.to_string()))?;
    match event {
        quick_xml::events::Event::Text(t) => String::from_utf8(t.into_inner().into_owned())
            .map_err(|e| SamlError::Sign(e.to_string())),
        _ => Err(SamlError::Sign("unexpected signature template".into())),
    }
}

fn sign(xml: &str, key: &SigningKey) -> Result<String, SamlError> {
    Crypto::sign_xml(xml, key.pkcs8_der()).map_err(|e| SamlError::Sign(e.to_string()))
}

fn strip_declaration(xml: &str) -> &str {
    let xml = xml.trim();
    match xml.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map_or(xml, |(_, body)| body.trim()),
        None => xml,
    }
}

/// `xs:dateTime` in UTC, whole seconds.
fn instant(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A tiny XML writer: element and attribute values are always escaped, so no released
/// value can change the document's structure.
#[derive(Default)]
struct Xml(String);

impl Xml {
    fn tag(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.0.push('<');
        self.0.push_str(name);
        for (k, v) in attrs {
            let _ = write!(self.0, " {k}=\"{}\"", quick_xml::escape::escape(*v));
        }
    }
    fn open(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.tag(name, attrs);
        self.0.push('>');
    }
    fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.tag(name, attrs);
        self.0.push_str("/>");
    }
    fn close(&mut self, name: &str) {
        let _ = write!(self.0, "</{name}>");
    }
    fn leaf(&mut self, name: &str, attrs: &[(&str, &str)], text: &str) {
        self.open(name, attrs);
        self.0.push_str(&quick_xml::escape::escape(text));
        self.close(name);
    }
    fn raw(&mut self, xml: &str) {
        self.0.push_str(xml);
    }
}

/// `GET /saml/metadata`: mount with the IdP as state.
pub async fn metadata_handler(
    axum::extract::State(idp): axum::extract::State<std::sync::Arc<Idp>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match idp.metadata() {
        Ok(xml) => (
            [(http::header::CONTENT_TYPE, "application/samlmetadata+xml")],
            xml,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the SAML metadata");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

impl axum::response::IntoResponse for PostBinding {
    /// The auto-submitting page, with a CSP that lets only its own script run and the form
    /// go only to the ACS, and no caching (it holds a bearer assertion).
    fn into_response(self) -> axum::response::Response {
        let csp = post_form_csp(&self.acs_url);
        (
            [
                (
                    http::header::CONTENT_TYPE,
                    "text/html; charset=utf-8".to_owned(),
                ),
                (http::header::CACHE_CONTROL, "no-store".to_owned()),
                (http::header::CONTENT_SECURITY_POLICY, csp),
                (http::header::REFERRER_POLICY, "no-referrer".to_owned()),
            ],
            self.html(),
        )
            .into_response()
    }
}
