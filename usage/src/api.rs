//! The native usage API, `GET /api/v1/usage` (`docs/statistics.md`), and the
//! router that also carries SUSHI. Every request is checked whole before anything is read:
//! a bad date, a reversed range, an unknown institution, service or metric is a 400, a
//! missing or wrong key a 401, an institution outside the key's scope a 403, each as
//! `{"error":…, "message":…}`, and never a partial report.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jiff::civil::Date;

use super::counters::{self, ALL, Metric};
use super::query::{Period, Query, Rows};
use super::state::ApiState;
use super::{Statistician, Statisticians, Usage, UsageError};
use policy::{DenyReason, Policy};

/// The statistics endpoints for the public host: `/api/v1/usage` and `/sushi/r51/…`.
/// `policy` gives the policy in force (`move || app.policy()`).
pub fn router(
    usage: Arc<Usage>,
    policy: impl Fn() -> Arc<Policy> + Send + Sync + 'static,
    statisticians: Arc<Statisticians>,
    k_anonymity: u32,
) -> Router {
    let state = Arc::new(ApiState {
        usage,
        policy: Box::new(policy),
        statisticians,
        k_anonymity,
    });
    Router::new()
        .route("/api/v1/usage", get(native))
        .merge(super::sushi::routes())
        .with_state(state)
}

/// A refusal of the native API: its status and JSON body.
fn refuse(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": error, "message": message.into()});
    let mut r = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

fn from_error(e: UsageError) -> Response {
    match e {
        UsageError::Request {
            status: 403,
            message,
        } => refuse(StatusCode::FORBIDDEN, "forbidden", message),
        UsageError::Request { message, .. } => {
            refuse(StatusCode::BAD_REQUEST, "bad_request", message)
        }
        UsageError::Unavailable { message } => {
            tracing::warn!("usage export refused, shared counts unavailable: {message}");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the usage counts are shared between the gateway's replicas in Redis, which is not answering just now; no counts are lost: try again in a moment",
            )
        }
        other => {
            tracing::error!("usage export failed: {other}");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the usage data cannot be read just now",
            )
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

async fn native(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the statistician's API key as Authorization: Bearer <key>",
        );
    };
    let Some(who) = state.statisticians.authenticate(key) else {
        return refuse(StatusCode::UNAUTHORIZED, "unauthorized", "unknown API key");
    };
    let policy = (state.policy)();
    let (q, format) = match parse(&params, who, &policy, &state.usage, state.k_anonymity) {
        Ok(x) => x,
        Err(e) => return from_error(e),
    };
    let rows = match state.usage.query_async(q.clone()).await {
        Ok(r) => r,
        Err(e) => return from_error(e),
    };
    if state.usage.is_shared()
        && let Some(id) = q.services.iter().flatten().find(|id| {
            *id != "-"
                && policy.service(id).is_none()
                && !rows.services.iter().any(|s| &**s == id.as_str())
        })
    {
        return from_error(UsageError::bad_request(format!(
            "service: unknown service \"{id}\" (not in the policy, and no counts in this range)"
        )));
    }
    match format {
        Format::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            render_csv(&rows, &policy),
        )
            .into_response(),
        Format::Json => (
            [(header::CONTENT_TYPE, "application/json")],
            render_json(&rows, &policy, &q),
        )
            .into_response(),
    }
}

const PARAMS: [&str; 9] = [
    "from",
    "to",
    "period",
    "by",
    "institution",
    "service",
    "metric",
    "format",
    "k",
];

fn parse_date(name: &str, v: &str) -> Result<Date, UsageError> {
    if v.len() != 10 {
        return Err(UsageError::bad_request(format!(
            "{name}: \"{v}\" is not a date (YYYY-MM-DD)"
        )));
    }
    v.parse()
        .map_err(|_| UsageError::bad_request(format!("{name}: \"{v}\" is not a date (YYYY-MM-DD)")))
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Checks every parameter; the query the statistician may run, or why not.
fn parse(
    params: &[(String, String)],
    who: &Statistician,
    policy: &Policy,
    usage: &Usage,
    k_anonymity: u32,
) -> Result<(Query, Format), UsageError> {
    let mut seen = BTreeSet::new();
    for (k, _) in params {
        // `k` is reserved: the threshold is the operator's, not the caller's.
        if !PARAMS.contains(&k.as_str()) || k == "k" {
            return Err(UsageError::bad_request(format!(
                "unknown parameter \"{k}\" (known: from, to, period, by, institution, service, metric, format)"
            )));
        }
        if !seen.insert(k.as_str()) {
            return Err(UsageError::bad_request(format!("{k} is given twice")));
        }
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let from = parse_date(
        "from",
        get("from").ok_or_else(|| UsageError::bad_request("from is required (YYYY-MM-DD)"))?,
    )?;
    let to = parse_date(
        "to",
        get("to").ok_or_else(|| UsageError::bad_request("to is required (YYYY-MM-DD)"))?,
    )?;
    if from > to {
        return Err(UsageError::bad_request(format!(
            "the range is reversed: from {from} is after to {to}"
        )));
    }
    let period = match get("period") {
        None => Period::Day,
        Some(p) => Period::parse(p).ok_or_else(|| {
            UsageError::bad_request(format!("period must be day, month or total, not \"{p}\""))
        })?,
    };
    let (mut by_affiliation, mut by_age_band) = (false, false);
    let by: Vec<&str> = list(get("by").unwrap_or("institution,service")).collect();
    for b in &by {
        match *b {
            "institution" | "service" => {}
            "affiliation" => by_affiliation = true,
            "age_band" => by_age_band = true,
            other => {
                return Err(UsageError::bad_request(format!(
                    "by: unknown dimension \"{other}\" (known: institution, service, affiliation, age_band)"
                )));
            }
        }
    }
    if !by.contains(&"institution") || !by.contains(&"service") {
        return Err(UsageError::bad_request(
            "by must include institution and service (and may add affiliation, age_band)",
        ));
    }
    let scope = who.scope(policy);
    let institutions = match get("institution") {
        None => scope.iter().cloned().collect(),
        Some(v) => {
            let mut out = BTreeSet::new();
            for id in list(v) {
                if let Some(group) = policy.groups().iter().find(|g| g.id == id) {
                    let members: Vec<String> =
                        group.members.iter().map(|m| m.to_string()).collect();
                    if !who.has_group(id) && !members.iter().all(|m| scope.contains(m)) {
                        return Err(UsageError::forbidden(format!(
                            "this key may not see group \"{id}\""
                        )));
                    }
                    out.extend(members);
                    continue;
                }
                let canonical = match policy.institution(id) {
                    Some(i) => i.id.to_string(),
                    None if scope.contains(id) => id.to_owned(),
                    None => {
                        return Err(UsageError::bad_request(format!(
                            "institution: unknown institution or group \"{id}\""
                        )));
                    }
                };
                if !scope.contains(&canonical) {
                    return Err(UsageError::forbidden(format!(
                        "this key may not see institution \"{canonical}\""
                    )));
                }
                out.insert(canonical);
            }
            if out.is_empty() {
                return Err(UsageError::bad_request("institution is empty"));
            }
            out.into_iter().collect()
        }
    };
    let services = match get("service") {
        None => None,
        Some(v) => {
            let mut out = Vec::new();
            for id in list(v) {
                let known = id == "-"
                    || policy.service(id).is_some()
                    || super::read(&usage.names).service(id).is_some();
                // Shared counts: another replica may have counted it; checked against
                // what Redis holds once read (see `native`).
                if !known && !usage.is_shared() {
                    return Err(UsageError::bad_request(format!(
                        "service: unknown service \"{id}\""
                    )));
                }
                out.push(id.to_owned());
            }
            if out.is_empty() {
                return Err(UsageError::bad_request("service is empty"));
            }
            Some(out)
        }
    };
    let metrics = match get("metric") {
        None => None,
        Some(v) => {
            let mut out = Vec::new();
            for m in list(v) {
                out.push(parse_metric(m)?);
            }
            if out.is_empty() {
                return Err(UsageError::bad_request("metric is empty"));
            }
            Some(out)
        }
    };
    let format = match get("format") {
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some(f) => {
            return Err(UsageError::bad_request(format!(
                "format must be json or csv, not \"{f}\""
            )));
        }
    };
    Ok((
        Query {
            from,
            to,
            period,
            by_affiliation,
            by_age_band,
            institutions: Some(institutions),
            services,
            metrics,
            k_anonymity,
        },
        format,
    ))
}

fn parse_metric(m: &str) -> Result<(Metric, Option<DenyReason>), UsageError> {
    let unknown = || {
        let names: Vec<&str> = Metric::ALL.iter().map(|m| m.as_str()).collect();
        UsageError::bad_request(format!(
            "metric: unknown metric \"{m}\" (known: {}, and denials:<reason>)",
            names.join(", ")
        ))
    };
    if let Some(reason) = m.strip_prefix("denials:") {
        let r = DenyReason::ALL
            .into_iter()
            .find(|r| r.as_str() == reason)
            .ok_or_else(unknown)?;
        return Ok((Metric::Denials, Some(r)));
    }
    Metric::parse(m).map(|x| (x, None)).ok_or_else(unknown)
}

/// Display names by index, looked up once per export rather than once per row.
struct NameTable<'a> {
    institutions: Vec<&'a str>,
    services: Vec<&'a str>,
}

impl<'a> NameTable<'a> {
    fn new(rows: &Rows, policy: &'a Policy) -> Self {
        NameTable {
            institutions: rows
                .institutions
                .iter()
                .map(|id| policy.institution(id).map_or("", |i| i.name.as_str()))
                .collect(),
            services: rows
                .services
                .iter()
                .map(|id| policy.service(id).map_or("", |s| s.name.as_str()))
                .collect(),
        }
    }
}

fn dims(aff: u8, band: u8) -> (Option<&'static str>, Option<&'static str>) {
    (
        (aff != ALL).then(|| counters::affiliation_of(aff).map_or("", |a| a.as_str())),
        (band != ALL).then(|| counters::band_of(band).map_or("", |b| b.as_str())),
    )
}

fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// CSV with the documented columns; hidden cells are empty.
pub fn render_csv(rows: &Rows, policy: &Policy) -> String {
    let names = NameTable::new(rows, policy);
    let mut out = String::with_capacity(64 + rows.rows.len() * 80);
    out.push_str("period,institution,institution_name,service,service_name,metric,affiliation,age_band,value\n");
    for r in &rows.rows {
        let (aff, band) = dims(r.aff, r.band);
        out.push_str(rows.period(r));
        out.push(',');
        csv_field(&mut out, rows.institution(r));
        out.push(',');
        csv_field(
            &mut out,
            names
                .institutions
                .get(usize::from(r.inst))
                .copied()
                .unwrap_or(""),
        );
        out.push(',');
        csv_field(&mut out, rows.service(r));
        out.push(',');
        csv_field(
            &mut out,
            names
                .services
                .get(usize::from(r.svc))
                .copied()
                .unwrap_or(""),
        );
        out.push(',');
        out.push_str(r.metric.as_str());
        if let Some(reason) = r.reason {
            out.push(':');
            out.push_str(reason.as_str());
        }
        out.push(',');
        out.push_str(aff.unwrap_or(""));
        out.push(',');
        out.push_str(band.unwrap_or(""));
        out.push(',');
        if let Some(v) = r.value {
            let _ = write!(out, "{v}");
        }
        out.push('\n');
    }
    out
}

/// A JSON string literal, escaped.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// JSON: the query echoed, then one object per cell; hidden cells have `"value": null`.
/// Written by hand from pre-escaped names: a national year by month is over a million
/// rows, and building a `serde_json::Value` of them would take seconds.
pub fn render_json(rows: &Rows, policy: &Policy, q: &Query) -> String {
    let names = NameTable::new(rows, policy);
    let mut by = vec!["institution", "service"];
    if q.by_affiliation {
        by.push("affiliation");
    }
    if q.by_age_band {
        by.push("age_band");
    }
    let period = match q.period {
        Period::Day => "day",
        Period::Month => "month",
        Period::Total => "total",
    };
    let head = serde_json::json!({
        "from": q.from.to_string(),
        "to": q.to.to_string(),
        "period": period,
        "by": by,
        "k_anonymity": q.k_anonymity,
    })
    .to_string();
    // `{"from":…,"k_anonymity":5}` → `{"from":…,"k_anonymity":5,"rows":[…]}`
    let mut out = String::with_capacity(head.len() + 16 + rows.rows.len() * 200);
    out.push_str(head.strip_suffix('}').unwrap_or(&head));
    out.push_str(",\"rows\":[");
    let esc = |v: &[Arc<str>]| v.iter().map(|s| json_str(s)).collect::<Vec<_>>();
    let (inst_ids, svc_ids) = (esc(&rows.institutions), esc(&rows.services));
    let inst_names: Vec<String> = names.institutions.iter().map(|s| json_str(s)).collect();
    let svc_names: Vec<String> = names.services.iter().map(|s| json_str(s)).collect();
    let periods: Vec<String> = rows.periods.iter().map(|s| json_str(s)).collect();
    for (n, r) in rows.rows.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let (affiliation, age_band) = dims(r.aff, r.band);
        out.push_str("{\"period\":");
        out.push_str(periods.get(r.period as usize).map_or("\"\"", |s| s));
        out.push_str(",\"institution\":");
        out.push_str(inst_ids.get(usize::from(r.inst)).map_or("\"\"", |s| s));
        out.push_str(",\"institution_name\":");
        out.push_str(inst_names.get(usize::from(r.inst)).map_or("\"\"", |s| s));
        out.push_str(",\"service\":");
        out.push_str(svc_ids.get(usize::from(r.svc)).map_or("\"\"", |s| s));
        out.push_str(",\"service_name\":");
        out.push_str(svc_names.get(usize::from(r.svc)).map_or("\"\"", |s| s));
        out.push_str(",\"metric\":\"");
        out.push_str(r.metric.as_str());
        if let Some(reason) = r.reason {
            out.push(':');
            out.push_str(reason.as_str());
        }
        out.push('"');
        if let Some(a) = affiliation {
            let _ = write!(out, ",\"affiliation\":\"{a}\"");
        }
        if let Some(b) = age_band {
            let _ = write!(out, ",\"age_band\":\"{b}\"");
        }
        match r.value {
            Some(v) => {
                let _ = write!(out, ",\"value\":{v}}}");
            }
            None => out.push_str(",\"value\":null}"),
        }
    }
    out.push_str("]}");
    out
}
