//! The admin listener: health, readiness, metrics and policy reload. It is bound to its
//! own address (loopback by default) and never answers on the public listener.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::telemetry;

/// `GET /healthz`: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when a policy is loaded (always, once running) and the store answers. A Redis
/// store that went away makes this 503 until it is back; the connection is made again by
/// itself, and this check is one of the things that make it try.
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let result = app.store.ping().await;
    app.metrics.set(
        telemetry::STORE_UP,
        &[],
        if result.is_ok() { 1.0 } else { 0.0 },
    );
    match result {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store is not answering: {e}\n"),
        )
            .into_response(),
    }
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    if let Some(c) = app.store.counters() {
        app.metrics
            .set(telemetry::STORE_ERRORS, &[], c.errors() as f64);
        app.metrics.set(
            telemetry::STORE_STALE_SESSIONS,
            &[],
            c.stale_sessions() as f64,
        );
    }
    if let Some(u) = app.usage.shared_stats() {
        app.metrics
            .set(telemetry::USAGE_BUFFERED, &[], u.buffered_cells as f64);
        app.metrics.set(
            telemetry::USAGE_DROPPED,
            &[("what", "cells")],
            u.dropped_cells as f64,
        );
        app.metrics.set(
            telemetry::USAGE_DROPPED,
            &[("what", "persons")],
            u.dropped_persons as f64,
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// `POST /reload`: 200 and the summary (and warnings), or 422 with every error while
/// the previous policy stays in force.
pub async fn reload(State(app): State<Arc<App>>) -> Response {
    let result = tokio::task::spawn_blocking({
        let app = app.clone();
        move || app.reload()
    })
    .await;
    match result {
        Ok(Ok(warnings)) => {
            let mut body = format!("ok: {}\n", app.policy().summary());
            for w in warnings {
                body.push_str(&format!("{w}\n"));
            }
            (StatusCode::OK, body).into_response()
        }
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{e}\nthe previous policy stays in force\n"),
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "reload failed\n").into_response(),
    }
}
