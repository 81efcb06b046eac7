//! A minimal fast origin standing in for a vendor's site: every GET (any path) gets the same
//! ~2 KiB HTML page with a few links back to the origin's own absolute URL, so a proxy in
//! front has links to rewrite. HTTP/1.1 with keep-alive, loopback only; it stops by itself
//! after `lifetime` in case the script that started it dies without cleaning up.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::BoxError;

/// The page, about 2 KiB, with absolute links to `base` (`http://127.0.0.1:PORT`).
pub fn page(base: &str) -> String {
    let mut body = format!(
        "<!DOCTYPE html>\n<html lang=\"nb\"><head><meta charset=\"utf-8\">\
         <title>Avisarkivet – testside</title>\
         <link rel=\"stylesheet\" href=\"{base}/static/site.css\"></head>\n<body>\n\
         <header><a href=\"{base}/\">Forsiden</a> · <a href=\"{base}/sok?q=vestfold\">Søk</a> · \
         <a href=\"/artikkel/2\">Forrige artikkel</a></header>\n<main>\n\
         <h1>Lokalhistorie fra Vestfold</h1>\n"
    );
    let paragraph = "<p>Dette er en fast testside for lasttesten. Teksten gjentas for at \
                     siden skal bli omtrent to kilobyte stor, slik en enkel artikkelside \
                     hos en leverandør kan være før bilder og skript.</p>\n";
    while body.len() < 1900 {
        body.push_str(paragraph);
    }
    body.push_str(&format!(
        "<p><a href=\"{base}/artikkel/1\">Les hele artikkelen</a></p>\n</main>\n</body></html>\n"
    ));
    body
}

pub async fn run(port: u16, lifetime: Duration) -> Result<(), BoxError> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(page(&format!("http://{addr}")));
    println!("{}", addr.port());
    let stop = tokio::time::sleep(lifetime);
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, do not spin.
                    eprintln!("origin: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut stop => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<Incoming>| {
                let mut resp = Response::new(Full::new(body.clone()));
                let h = resp.headers_mut();
                h.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                async move { Ok::<_, Infallible>(resp) }
            });
            // A client closing its connection is normal at the end of a run.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_is_about_two_kib_with_absolute_links() {
        let p = super::page("http://127.0.0.1:1234");
        assert!((1900..2400).contains(&p.len()), "{}", p.len());
        assert!(p.contains("href=\"http://127.0.0.1:1234/artikkel/1\""));
    }
}
