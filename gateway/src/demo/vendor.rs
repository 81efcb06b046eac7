//! Demo vendors for `portvakt demo`: one small site per proxied demo service, on the
//! loopback origin its policy names. Each page uses absolute links to its own origin and
//! its CDN (so the gateway's rewriting shows), sets a cookie, redirects, and `/headers`
//! shows exactly which headers and cookies arrived — the patron can see for themselves
//! that no card number, name or address reaches the vendor.

use std::fmt::Write;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
struct Site {
    name: String,
    origin: String,
    cdn: Option<String>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(site: &Site, title: &str, body: &str) -> Response {
    let logo = site.cdn.as_ref().map_or_else(String::new, |cdn| {
        format!("<img src=\"{cdn}/logo.svg\" alt=\"\" width=\"40\" height=\"40\"> ")
    });
    let o = &site.origin;
    let html = format!(
        "<!doctype html><html lang=\"nb\"><head><meta charset=\"utf-8\"><title>{title} – {name}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;line-height:1.5}}\
         td,th{{border:1px solid #999;padding:.2rem .4rem;text-align:left;vertical-align:top}}</style></head>\
         <body><header>{logo}<strong>{name}</strong> (demoleverandør / demo vendor)</header>\
         <nav><a href=\"{o}/\">Forside</a> · <a href=\"{o}/artikkel/1\">Artikkel 1</a> · \
         <a href=\"{o}/redirect\">Omdirigering</a> · <a href=\"{o}/set-cookie\">Sett informasjonskapsel</a> · \
         <a href=\"{o}/headers\">Hva leverandøren ser</a></nav>\
         <form action=\"{o}/sok\" method=\"get\"><label for=\"q\">Søk</label> <input id=\"q\" name=\"q\"> <button>Søk</button></form>\
         <main><h1>{title}</h1>{body}</main>\
         <footer><p><a href=\"https://www.example.org/\">En ekstern lenke (ikke via Portvakt)</a></p></footer></body></html>",
        name = escape(&site.name),
        title = escape(title),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn front(State(site): State<Site>) -> Response {
    page(
        &site,
        "Velkommen",
        "<p>Dette er en demo av en leverandør bak Portvakt. Lenkene peker til leverandørens egen adresse; \
         Portvakt skriver dem om til tjenestens adresse hos biblioteket.</p>",
    )
}

async fn article(State(site): State<Site>, Path(n): Path<u32>) -> Response {
    let next = n.saturating_add(1);
    page(
        &site,
        &format!("Artikkel {n}"),
        &format!(
            "<p>Tekst i artikkel {n}.</p><p><a href=\"{}/artikkel/{next}\">Neste artikkel</a></p>",
            site.origin
        ),
    )
}

#[derive(serde::Deserialize)]
struct SearchQuery {
    q: Option<String>,
}

async fn search(State(site): State<Site>, Query(q): Query<SearchQuery>) -> Response {
    let q = q.q.unwrap_or_default();
    page(
        &site,
        "Søkeresultat",
        &format!(
            "<p>Treff for «{}»:</p><ul><li><a href=\"{}/artikkel/7\">Artikkel 7</a></li></ul>",
            escape(&q),
            site.origin
        ),
    )
}

async fn redirect(State(site): State<Site>) -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("{}/headers", site.origin))],
    )
        .into_response()
}

async fn set_cookie(State(site): State<Site>) -> Response {
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, format!("{}/headers", site.origin)),
            (
                header::SET_COOKIE,
                "vendor_visit=demo-123; Domain=127.0.0.1; Path=/; HttpOnly".to_owned(),
            ),
        ],
    )
        .into_response()
}

/// Every header and cookie the vendor received, as a table.
async fn headers(State(site): State<Site>, headers: HeaderMap) -> Response {
    let mut rows = String::new();
    for (name, value) in &headers {
        let _ = write!(
            rows,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(name.as_str()),
            escape(value.to_str().unwrap_or("(not text)"))
        );
    }
    page(
        &site,
        "Hva leverandøren ser / What the vendor sees",
        &format!(
            "<p>Alle HTTP-hoder denne leverandøren fikk. Attributter fra Portvakt kommer som \
             <code>X-Portvakt-*</code>; ingen navn, lånekortnummer, fødselsdato eller IP-adresse.</p>\
             <table>{rows}</table>"
        ),
    )
}

async fn logo() -> Response {
    (
        [(header::CONTENT_TYPE, "image/svg+xml")],
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 40 40\"><circle cx=\"20\" cy=\"20\" r=\"18\" fill=\"#1a3d6d\"/></svg>",
    )
        .into_response()
}

/// Starts one demo vendor on `addr` (its origin) with an optional CDN origin. Returns
/// false, with a warning logged, when the port is taken: the demo goes on without it.
pub async fn spawn(name: &str, addr: SocketAddr, cdn: Option<SocketAddr>) -> bool {
    let site = Site {
        name: name.to_owned(),
        origin: format!("http://{addr}"),
        cdn: cdn.map(|c| format!("http://{c}")),
    };
    let app = Router::new()
        .route("/", get(front))
        .route("/artikkel/{n}", get(article))
        .route("/sok", get(search))
        .route("/redirect", get(redirect))
        .route("/set-cookie", get(set_cookie))
        .route("/headers", get(headers))
        .with_state(site.clone());
    if !serve(addr, app, name).await {
        return false;
    }
    if let Some(cdn) = cdn {
        let cdn_app = Router::new()
            .route("/logo.svg", get(logo))
            .route("/", get(logo));
        serve(cdn, cdn_app, name).await;
    }
    true
}

async fn serve(addr: SocketAddr, app: Router, name: &str) -> bool {
    match TcpListener::bind(addr).await {
        Ok(listener) => {
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            true
        }
        Err(e) => {
            tracing::warn!(vendor = name, %addr, error = %e, "demo vendor not started");
            false
        }
    }
}
