//! The plain answers: an HTML page, a message page, a `303 See Other`.

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

use super::pages::{self, MessagePage, Texts};

/// An HTML page, never cached (pages name the patron's session state).
pub fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A page with a heading, one message and at most one action (href, label). A success
/// status shows the message as a note, any other as an alert.
pub fn message(
    t: &'static Texts,
    status: StatusCode,
    heading: &str,
    text: &str,
    action: Option<(&str, &str)>,
) -> Response {
    let page = MessagePage {
        t,
        other_lang_href: pages::other_lang_href(t, ""),
        heading,
        message: text,
        class: if status.is_success() { "note" } else { "alert" },
        action_href: action.map(|a| a.0),
        action_label: action.map_or("", |a| a.1),
    };
    html(status, pages::render(&page))
}

/// `303 See Other` to `location`.
pub fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_owned())],
    )
        .into_response()
}
