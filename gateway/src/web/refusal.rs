//! One type for every "no" a handler gives a patron: the status, the page (heading, one
//! message in the patron's language, at most one way on), and for a denial the JSON a
//! client asked for with `Accept: application/json` (`{"reason", "message"}`, the reason
//! codes of the policy). Handlers return `Result<Response, Refusal>`, and axum renders it
//! through [`IntoResponse`].

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use policy::DenyReason;

use super::pages::{self, Texts};
use super::response::message;

/// A refusal, ready to render. Counting it (metrics, usage) is the caller's business.
#[derive(Debug)]
#[must_use]
pub struct Refusal {
    t: &'static Texts,
    status: StatusCode,
    heading: &'static str,
    text: &'static str,
    /// Where the patron can go on (href, label); every page also links to the start page.
    action: Option<(String, &'static str)>,
    /// A denial for a client that asked for JSON: answered as JSON with this reason.
    json_reason: Option<DenyReason>,
}

impl Refusal {
    pub fn new(
        t: &'static Texts,
        status: StatusCode,
        heading: &'static str,
        text: &'static str,
    ) -> Self {
        Self {
            t,
            status,
            heading,
            text,
            action: None,
            json_reason: None,
        }
    }

    /// "Something went wrong" with `text`.
    pub fn error(t: &'static Texts, status: StatusCode, text: &'static str) -> Self {
        Self::new(t, status, t.error_title, text)
    }

    /// A way on from the page.
    pub fn with_action(mut self, href: impl Into<String>, label: &'static str) -> Self {
        self.action = Some((href.into(), label));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// 404: no such page (or service host).
    pub fn not_found(t: &'static Texts) -> Self {
        Self::new(t, StatusCode::NOT_FOUND, t.not_found_title, t.not_found)
    }

    /// 503: our own store is not answering, so logins and new entries cannot be made.
    pub fn store_down(t: &'static Texts) -> Self {
        Self::error(t, StatusCode::SERVICE_UNAVAILABLE, t.store_down)
    }

    /// The decision said no: the status of the reason, the reason in plain words, and JSON
    /// when the client asked for it.
    pub fn denied(t: &'static Texts, reason: DenyReason, headers: &HeaderMap) -> Self {
        let status = StatusCode::from_u16(reason.http_status()).unwrap_or(StatusCode::FORBIDDEN);
        let heading = if reason == DenyReason::UnknownService {
            t.not_found_title
        } else {
            t.denied_title
        };
        let mut r = Self::new(t, status, heading, pages::deny_message(t, reason));
        if pages::wants_json(headers) {
            r.json_reason = Some(reason);
        }
        r
    }

    /// A vendor's SAML or OIDC request that cannot be answered.
    pub fn sso_refused(t: &'static Texts, status: StatusCode) -> Self {
        Self::error(t, status, t.sso_refused)
    }

    /// A login method this installation has not set up (no signing key for SAML or OIDC).
    pub fn not_configured(t: &'static Texts) -> Self {
        Self::new(t, StatusCode::NOT_FOUND, t.not_yet_title, t.not_yet)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        if let Some(reason) = self.json_reason {
            let body = serde_json::json!({ "reason": reason.as_str(), "message": self.text });
            return (
                self.status,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response();
        }
        let action = self
            .action
            .as_ref()
            .map(|(href, label)| (href.as_str(), *label));
        message(self.t, self.status, self.heading, self.text, action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::pages::{EN, NB};

    async fn body(r: Response) -> String {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_denial_is_a_page_with_its_status_or_json_when_asked() {
        let page = Refusal::denied(&NB, DenyReason::AgeBelowMin, &HeaderMap::new()).into_response();
        assert_eq!(page.status(), StatusCode::FORBIDDEN);
        let html = body(page).await;
        assert!(html.contains(NB.denied_title), "{html}");
        assert!(html.contains("role=\"alert\""), "{html}");

        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        let json = Refusal::denied(&EN, DenyReason::RateLimited, &h).into_response();
        assert_eq!(json.status(), StatusCode::TOO_MANY_REQUESTS);
        let v: serde_json::Value = serde_json::from_str(&body(json).await).unwrap();
        assert_eq!(v["reason"], "rate_limited");
        assert_eq!(v["message"], DenyReason::RateLimited.message_en());

        let unknown = Refusal::denied(&NB, DenyReason::UnknownService, &HeaderMap::new());
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        assert!(
            body(unknown.into_response())
                .await
                .contains(NB.not_found_title)
        );
    }

    #[tokio::test]
    async fn other_refusals_are_pages_with_a_way_on() {
        let r = Refusal::store_down(&EN).with_action("/go/avis", EN.try_again);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let html = body(r.into_response()).await;
        assert!(html.contains(EN.store_down), "{html}");
        assert!(html.contains("href=\"/go/avis\""), "{html}");
        let html = body(Refusal::not_found(&NB).into_response()).await;
        assert!(html.starts_with("<!doctype html>"), "{html}");
        assert!(html.contains(NB.not_found), "{html}");
    }
}
