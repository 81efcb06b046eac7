//! The demo SAML and OIDC vendors of `portvakt demo`: the SAML vendor accepts what the
//! gateway's IdP signs and refuses it against another certificate or audience; the OIDC
//! vendor shows "Ingen tilgang" for an `access_denied` callback.

#![cfg(test)]

use crate::support::federation as federation_support;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use federation::saml::sp::verify_saml_response;
use federation::saml::{ATTR_PAIRWISE_ID, Idp};
use federation_support::{fixture, patron};
use gateway::demo::federated::{OidcVendor, SamlVendor, oidc_router, saml_router};
use http_body_util::BodyExt;
use jiff::Timestamp;
use policy::Access;
use policy::subject::Affiliation;
use tower::ServiceExt;

async fn body_text(resp: axum::response::Response) -> String {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

#[tokio::test]
async fn saml_vendor_verifies_the_gateways_signature() {
    let f = fixture();
    let idp = Idp {
        entity_id: "http://127.0.0.1:9/saml/metadata".into(),
        sso_url: "http://127.0.0.1:9/saml/sso".into(),
        scope: "bib.example.no".into(),
        key: f.idp_key.clone(),
    };
    let Access::Saml(ebok) = &f.policy.service("ebok").unwrap().access else {
        panic!("ebok is not SAML");
    };
    let now = Timestamp::now();
    let rel = f.release("ebok", &patron(Affiliation::Patron), now);
    let post = idp.unsolicited_response(ebok, &rel, now, now).unwrap();
    let b64 = post.saml_response();
    let cert = f.idp_key.cert_pem().to_owned();

    let seen = verify_saml_response(&b64, &cert, &ebok.entity_id, now).unwrap();
    assert!(seen.name_id.is_some());
    assert!(seen.attributes.iter().any(|(k, _)| k == ATTR_PAIRWISE_ID));

    // Another certificate, another audience, too late: each refused.
    let other = std::fs::read_to_string(&f.other_cert).unwrap();
    let err = verify_saml_response(&b64, &other, &ebok.entity_id, now).unwrap_err();
    assert!(err.contains("signaturen er ikke gyldig"), "{err}");
    let err = verify_saml_response(&b64, &cert, "https://someone.else/", now).unwrap_err();
    assert!(err.contains("ikke ment for oss"), "{err}");
    let later = now + jiff::SignedDuration::from_secs(3600);
    let err = verify_saml_response(&b64, &cert, &ebok.entity_id, later).unwrap_err();
    assert!(err.contains("utløpt"), "{err}");
    // A tampered document fails the signature.
    let tampered = post.xml.replacen("urn:oid:", "urn:oid:9", 1);
    let tampered = data_encoding::BASE64.encode(tampered.as_bytes());
    assert!(verify_saml_response(&tampered, &cert, &ebok.entity_id, now).is_err());

    // Through the ACS route: the page lists the attributes.
    let form = serde_urlencoded::to_string([("SAMLResponse", b64.as_str())]).unwrap();
    let acs = |cert: String| {
        saml_router(SamlVendor {
            gateway_url: "http://bib.localhost:8080".into(),
            cert_pem: cert,
            entity_id: ebok.entity_id.clone(),
        })
        .oneshot(
            Request::post("/saml/acs")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form.clone()))
                .unwrap(),
        )
    };
    let resp = acs(cert.clone()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = body_text(resp).await;
    assert!(html.contains("Signaturen er gyldig"), "{html}");
    assert!(html.contains(ATTR_PAIRWISE_ID));
    let resp = acs(other).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(body_text(resp).await.contains("signaturen er ikke gyldig"));
}

#[tokio::test]
async fn oidc_vendor_starts_with_pkce_and_shows_access_denied() {
    let app = oidc_router(OidcVendor {
        gateway_url: "http://bib.localhost:8080".into(),
        gateway_addr: "127.0.0.1:9".parse().unwrap(),
        client_id: "fagportalen-demo".into(),
        client_secret: "demo-oidc-secret".into(),
        redirect_uri: "http://127.0.0.1:8392/callback".into(),
    });
    let resp = app
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(resp.status().is_redirection());
    let location = resp.headers()[header::LOCATION].to_str().unwrap();
    assert!(location.starts_with("http://bib.localhost:8080/oidc/authorize?"));
    for p in [
        "code_challenge_method=S256",
        "client_id=fagportalen-demo",
        "nonce=",
        "scope=openid",
    ] {
        assert!(location.contains(p), "{location}");
    }
    let state = location
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("state="))
        .unwrap()
        .to_owned();

    let resp = app
        .oneshot(
            Request::get(format!(
                "/callback?error=access_denied&error_description=bare+elever&state={state}"
            ))
            .header(header::COOKIE, format!("fp_state={state}"))
            .body(Body::empty())
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let html = body_text(resp).await;
    assert!(html.contains("Ingen tilgang"), "{html}");
    assert!(html.contains("access_denied: bare elever"), "{html}");
}
