//! COUNTER Release 5.1 SUSHI (`/sushi/r51/…`): status, members, the report list and the
//! PR, DR, DR_D1 and DR_D2 reports. The gateway is the platform and each service a
//! database. Only metrics that map faithfully are served: searches become
//! `Searches_Platform` (PR) or `Searches_Regular` (DR); every counted item request is a
//! `Total_Item_Request` and so also a `Total_Item_Investigation`, the per-session unique
//! ones likewise; denials become `No_License` or `Limit_Exceeded` by their reason.
//! Searches and denials have the Data_Type `Database_Full`, items `Database_Full_Item`.
//!
//! Errors are COUNTER exceptions: 1030 for a missing customer_id or date, 2020 (401) for
//! a missing or unknown api_key, 2010 (403) for a customer outside the key's scope, 3020
//! for bad or reversed dates or a begin in the current month; in a report's header, 3030
//! when there is no usage, 3031 when the end was cut to the last complete month, 3050 for
//! parameters not supported, 3060 and 3062 for filter and attribute values not supported.
//! `granularity=Total` (or `Totals`, as the Code of Practice spells it) gives one count per
//! metric for the whole period, keyed by its first month as the schema's `Counts` wants.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jiff::civil::Date;
use serde_json::{Map, Value, json};

use super::counters::Metric;
use super::query::{Period, Query};
use super::state::ApiState;
use policy::Policy;

/// The platform's name in reports.
pub const PLATFORM: &str = "Portvakt";
/// The namespace of proprietary ids (`portvakt:NO-2390700`).
const NAMESPACE: &str = "portvakt";

pub(crate) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/sushi/r51/status", get(status))
        .route("/sushi/r51/members", get(members))
        .route("/sushi/r51/reports", get(reports))
        .route("/sushi/r51/reports/pr", get(|s, p| report(s, p, Kind::Pr)))
        .route("/sushi/r51/reports/dr", get(|s, p| report(s, p, Kind::Dr)))
        .route(
            "/sushi/r51/reports/dr_d1",
            get(|s, p| report(s, p, Kind::DrD1)),
        )
        .route(
            "/sushi/r51/reports/dr_d2",
            get(|s, p| report(s, p, Kind::DrD2)),
        )
}

fn message(code: u16) -> &'static str {
    match code {
        1000 => "Service Not Available",
        1030 => "Insufficient Information to Process Request",
        2000 => "Requestor Not Authorized to Access Service",
        2010 => "Requestor is Not Authorized to Access Usage for Institution",
        2020 => "APIKey Invalid",
        3020 => "Invalid Date Arguments",
        3030 => "No Usage Available for Requested Dates",
        3031 => "Usage Not Ready for Requested Dates",
        3050 => "Parameter Not Recognized in this Context",
        3060 => "Invalid ReportFilter Value",
        3062 => "Invalid ReportAttribute Value",
        _ => "Info",
    }
}

fn exception(code: u16, data: Option<String>) -> Value {
    let mut e = json!({"Code": code, "Message": message(code)});
    if let Some(d) = data {
        e["Data"] = Value::String(d);
    }
    e
}

/// An exception as the whole answer.
fn fail(code: u16, data: impl Into<String>) -> Response {
    let status = match code {
        2000 | 2020 => StatusCode::UNAUTHORIZED,
        2010 | 2011 => StatusCode::FORBIDDEN,
        1000 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    (status, axum::Json(exception(code, Some(data.into())))).into_response()
}

type Params = Vec<(String, String)>;

fn param<'a>(p: &'a Params, name: &str) -> Option<&'a str> {
    p.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn proprietary(id: &str) -> Value {
    json!({"Proprietary": [format!("{NAMESPACE}:{id}")]})
}

/// Schema strings have a minimum length of 2.
fn name_or_id(name: &str, id: &str) -> String {
    if name.chars().count() >= 2 {
        name.to_owned()
    } else {
        id.to_owned()
    }
}

/// An exception code and its Data, before it becomes a response.
struct Refusal(u16, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        fail(self.0, self.1)
    }
}

/// The customer a request is for: its display name and member institution ids.
struct Customer {
    id: String,
    name: String,
    members: Vec<(String, String)>,
}

/// customer_id and api_key checked: the customer, or the exception to answer with.
fn customer(state: &ApiState, p: &Params, policy: &Policy) -> Result<Customer, Refusal> {
    let Some(customer_id) = param(p, "customer_id") else {
        return Err(Refusal(1030, "customer_id is required".into()));
    };
    let Some(key) = param(p, "api_key") else {
        return Err(Refusal(2020, "api_key is required".into()));
    };
    let Some(who) = state.statisticians.authenticate(key) else {
        return Err(Refusal(2020, "unknown api_key".into()));
    };
    let scope = who.scope(policy);
    let inst_name = |id: &str| {
        policy
            .institution(id)
            .map_or_else(|| id.to_owned(), |i| name_or_id(&i.name, id))
    };
    if let Some(g) = policy.groups().iter().find(|g| g.id == customer_id) {
        let members: Vec<(String, String)> = g
            .members
            .iter()
            .map(|m| (m.to_string(), inst_name(m.as_str())))
            .collect();
        if !who.has_group(&g.id) && !members.iter().all(|(m, _)| scope.contains(m)) {
            return Err(Refusal(2010, format!("customer_id {customer_id}")));
        }
        return Ok(Customer {
            id: g.id.clone(),
            name: name_or_id(&g.name, &g.id),
            members,
        });
    }
    let canonical = policy
        .institution(customer_id)
        .map_or_else(|| customer_id.to_owned(), |i| i.id.to_string());
    if !scope.contains(&canonical) {
        return Err(Refusal(2010, format!("customer_id {customer_id}")));
    }
    let name = inst_name(&canonical);
    Ok(Customer {
        id: canonical.clone(),
        name: name.clone(),
        members: vec![(canonical, name)],
    })
}

async fn status(State(state): State<Arc<ApiState>>) -> Response {
    let _ = &state;
    axum::Json(json!([{
        "Description": "Portvakt COUNTER_SUSHI R5.1: PR, DR, DR_D1, DR_D2",
        "Service_Active": true,
    }]))
    .into_response()
}

async fn members(
    State(state): State<Arc<ApiState>>,
    QueryParams(p): QueryParams<Params>,
) -> Response {
    let policy = (state.policy)();
    let c = match customer(&state, &p, &policy) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let list: Vec<Value> = c
        .members
        .iter()
        .map(|(id, name)| {
            json!({
                "Customer_ID": id,
                "Institution_Name": name,
                "Institution_ID": proprietary(id),
            })
        })
        .collect();
    axum::Json(Value::Array(list)).into_response()
}

fn month_label(d: Date) -> String {
    format!("{:04}-{:02}", d.year(), d.month())
}

async fn reports(
    State(state): State<Arc<ApiState>>,
    QueryParams(p): QueryParams<Params>,
) -> Response {
    let policy = (state.policy)();
    if let Err(r) = customer(&state, &p, &policy) {
        return r.into_response();
    }
    let today = policy::oslo_today(state.usage.clock().now());
    let last = today
        .first_of_month()
        .yesterday()
        .map_or(today, |d| d.first_of_month());
    let span = match state.usage.days_with_data_async().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("SUSHI report list failed: {e}");
            return fail(1000, "usage data cannot be read just now");
        }
    };
    let first = span.map_or(last, |(f, _)| f.first_of_month()).min(last);
    let list: Vec<Value> = [Kind::Pr, Kind::Dr, Kind::DrD1, Kind::DrD2]
        .into_iter()
        .map(|k| {
            json!({
                "Report_Name": k.name(),
                "Report_ID": k.id(),
                "Release": "5.1",
                "Report_Description": k.description(),
                "Path": format!("/reports/{}", k.id().to_ascii_lowercase()),
                "First_Month_Available": month_label(first),
                "Last_Month_Available": month_label(last),
            })
        })
        .collect();
    axum::Json(Value::Array(list)).into_response()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pr,
    Dr,
    DrD1,
    DrD2,
}

const ITEM_METRICS: [&str; 4] = [
    "Total_Item_Investigations",
    "Total_Item_Requests",
    "Unique_Item_Investigations",
    "Unique_Item_Requests",
];

impl Kind {
    fn id(self) -> &'static str {
        match self {
            Self::Pr => "PR",
            Self::Dr => "DR",
            Self::DrD1 => "DR_D1",
            Self::DrD2 => "DR_D2",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Pr => "Platform Report",
            Self::Dr => "Database Report",
            Self::DrD1 => "Database Search and Item Usage",
            Self::DrD2 => "Database Access Denied",
        }
    }
    fn description(self) -> &'static str {
        match self {
            Self::Pr => "Usage of the Portvakt platform: searches and item requests.",
            Self::Dr => "Usage and denials per service (database).",
            Self::DrD1 => "Searches and item usage per service (database).",
            Self::DrD2 => "Access denied per service (database).",
        }
    }
    /// Every Metric_Type the schema allows in the filter.
    fn metrics(self) -> &'static [&'static str] {
        match self {
            Self::Pr => &[
                "Searches_Platform",
                "Total_Item_Investigations",
                "Total_Item_Requests",
                "Unique_Item_Investigations",
                "Unique_Item_Requests",
                "Unique_Title_Investigations",
                "Unique_Title_Requests",
            ],
            Self::Dr => &[
                "Searches_Automated",
                "Searches_Federated",
                "Searches_Regular",
                "Total_Item_Investigations",
                "Total_Item_Requests",
                "Unique_Item_Investigations",
                "Unique_Item_Requests",
                "Unique_Title_Investigations",
                "Unique_Title_Requests",
                "Limit_Exceeded",
                "No_License",
            ],
            Self::DrD1 => &[
                "Searches_Automated",
                "Searches_Federated",
                "Searches_Regular",
                "Total_Item_Investigations",
                "Total_Item_Requests",
                "Unique_Item_Investigations",
                "Unique_Item_Requests",
            ],
            Self::DrD2 => &["Limit_Exceeded", "No_License"],
        }
    }
    fn data_types(self) -> &'static [&'static str] {
        match self {
            Self::Pr => &[
                "Article",
                "Audiovisual",
                "Book",
                "Book_Segment",
                "Conference",
                "Conference_Item",
                "Database_Full_Item",
                "Dataset",
                "Image",
                "Interactive_Resource",
                "Journal",
                "Multimedia",
                "News_Item",
                "Newspaper_or_Newsletter",
                "Other",
                "Patent",
                "Platform",
                "Reference_Item",
                "Reference_Work",
                "Report",
                "Software",
                "Sound",
                "Standard",
                "Thesis_or_Dissertation",
                "Unspecified",
            ],
            _ => &[
                "Audiovisual",
                "Book",
                "Conference",
                "Database_Aggregated",
                "Database_AI",
                "Database_Full",
                "Database_Full_Item",
                "Image",
                "Interactive_Resource",
                "Journal",
                "Multimedia",
                "Newspaper_or_Newsletter",
                "Other",
                "Patent",
                "Reference_Work",
                "Report",
                "Sound",
                "Standard",
                "Thesis_or_Dissertation",
                "Unspecified",
            ],
        }
    }
    fn master(self) -> bool {
        matches!(self, Self::Pr | Self::Dr)
    }
}

/// `YYYY-MM` or `YYYY-MM-DD`; a begin date is taken to its month's first day, an end date
/// to its last (COUNTER reports whole months).
fn parse_month(v: &str, end: bool) -> Option<Date> {
    let d: Date = match v.len() {
        7 => format!("{v}-01").parse().ok()?,
        10 => v.parse().ok()?,
        _ => return None,
    };
    Some(if end {
        d.last_of_month()
    } else {
        d.first_of_month()
    })
}

/// Sums by (member, service, metric, month).
type Usage = BTreeMap<(String, String, &'static str, String), u64>;

async fn report(state: State<Arc<ApiState>>, p: QueryParams<Params>, kind: Kind) -> Response {
    let (State(state), QueryParams(p)) = (state, p);
    let policy = (state.policy)();
    let c = match customer(&state, &p, &policy) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let (Some(b), Some(e)) = (param(&p, "begin_date"), param(&p, "end_date")) else {
        return fail(1030, "begin_date and end_date are required");
    };
    let (Some(begin), Some(mut end)) = (parse_month(b, false), parse_month(e, true)) else {
        return fail(3020, "dates are yyyy-mm or yyyy-mm-dd");
    };
    if begin > end {
        return fail(3020, "end_date is before begin_date");
    }
    let today = policy::oslo_today(state.usage.clock().now());
    let this_month = today.first_of_month();
    if begin >= this_month {
        return fail(
            3020,
            "begin_date is in the current month or later: no complete month to report",
        );
    }
    let mut exceptions: Vec<Value> = Vec::new();
    if end >= this_month {
        let last = this_month.yesterday().unwrap_or(end);
        exceptions.push(exception(
            3031,
            Some(format!(
                "{} to {} not ready: End_Date set to {last}",
                month_label(this_month),
                month_label(end)
            )),
        ));
        end = last;
    }

    // Parameters.
    let mut base = vec![
        "customer_id",
        "requestor_id",
        "api_key",
        "platform",
        "begin_date",
        "end_date",
    ];
    if kind.master() {
        base.extend([
            "metric_type",
            "data_type",
            "access_method",
            "attributes_to_show",
            "granularity",
        ]);
    }
    if kind == Kind::Dr {
        base.push("database");
    }
    let unsupported_extensions = ["attributed", "country_code", "subdivision_code"];
    let not_recognized: BTreeSet<&str> = p
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !base.contains(k) || unsupported_extensions.contains(k))
        .collect();
    if !not_recognized.is_empty() {
        exceptions.push(exception(
            3050,
            Some(not_recognized.into_iter().collect::<Vec<_>>().join(", ")),
        ));
    }
    let pipe = |name: &str| -> Option<Vec<String>> {
        if !kind.master() {
            return None;
        }
        param(&p, name).map(|v| {
            v.split('|')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
    };
    let mut bad_filters: Vec<String> = Vec::new();
    let mut filters = Map::new();
    filters.insert("Begin_Date".into(), Value::String(begin.to_string()));
    filters.insert("End_Date".into(), Value::String(end.to_string()));
    if let Some(pf) = param(&p, "platform") {
        if pf.eq_ignore_ascii_case(PLATFORM) {
            filters.insert("Platform".into(), Value::String(PLATFORM.into()));
        } else {
            bad_filters.push(format!("platform={pf}"));
        }
    }
    let mut metric_filter: Option<BTreeSet<String>> = pipe("metric_type").map(|list| {
        let mut ok = BTreeSet::new();
        for m in list {
            if kind.metrics().contains(&m.as_str()) {
                ok.insert(m);
            } else {
                bad_filters.push(format!("metric_type={m}"));
            }
        }
        ok
    });
    if let Some(f) = metric_filter.as_mut() {
        // The schema wants item metrics in pairs; a request and its investigation are
        // the same count here, so the twin comes along.
        for (a, b) in [(1, 0), (0, 1), (3, 2), (2, 3)] {
            if f.contains(ITEM_METRICS[a]) && !f.contains(ITEM_METRICS[b]) {
                f.insert(ITEM_METRICS[b].to_owned());
                bad_filters.push(format!(
                    "metric_type={} (reported with {})",
                    ITEM_METRICS[a], ITEM_METRICS[b]
                ));
            }
        }
    }
    let data_filter: Option<BTreeSet<String>> = pipe("data_type").map(|list| {
        let mut ok = BTreeSet::new();
        for d in list {
            if kind.data_types().contains(&d.as_str()) {
                ok.insert(d);
            } else {
                bad_filters.push(format!("data_type={d}"));
            }
        }
        ok
    });
    let access_filter: Option<BTreeSet<String>> = pipe("access_method").map(|list| {
        let mut ok = BTreeSet::new();
        for a in list {
            if a == "Regular" || a == "TDM" {
                ok.insert(a);
            } else {
                bad_filters.push(format!("access_method={a}"));
            }
        }
        ok
    });
    let database = if kind == Kind::Dr {
        param(&p, "database")
    } else {
        None
    };
    let mut bad_attributes: Vec<String> = Vec::new();
    let mut shown: BTreeSet<&'static str> = BTreeSet::new();
    if let Some(list) = pipe("attributes_to_show") {
        for a in list {
            match a.as_str() {
                "Access_Method" => {
                    shown.insert("Access_Method");
                }
                "Institution_Name" => {
                    shown.insert("Institution_Name");
                }
                "Customer_ID" => {
                    shown.insert("Customer_ID");
                }
                _ => bad_attributes.push(format!("attributes_to_show={a}")),
            }
        }
    }
    let total = match pipe("granularity").as_deref() {
        None => false,
        Some([g]) if g == "Month" => false,
        Some([g]) if g == "Total" || g == "Totals" => true,
        Some(other) => {
            bad_attributes.push(format!("granularity={}", other.join("|")));
            false
        }
    };
    if !bad_filters.is_empty() {
        exceptions.push(exception(3060, Some(bad_filters.join(", "))));
    }
    if !bad_attributes.is_empty() {
        exceptions.push(exception(3062, Some(bad_attributes.join(", "))));
    }
    if let Some(f) = metric_filter.as_ref().filter(|f| !f.is_empty()) {
        filters.insert("Metric_Type".into(), json!(f));
    }
    if let Some(f) = data_filter.as_ref().filter(|f| !f.is_empty()) {
        filters.insert("Data_Type".into(), json!(f));
    }
    if let Some(f) = access_filter.as_ref().filter(|f| !f.is_empty()) {
        filters.insert("Access_Method".into(), json!(f));
    }
    if let Some(d) = database {
        filters.insert("Database".into(), Value::String(d.to_owned()));
    }
    if matches!(kind, Kind::DrD1 | Kind::DrD2) {
        filters.insert("Access_Method".into(), json!(["Regular"]));
        filters.insert("Metric_Type".into(), json!(kind.metrics()));
    }

    // The counts.
    let services = database.map(|d| {
        policy
            .services()
            .iter()
            .filter(|s| s.id.as_str() == d || s.name == d)
            .map(|s| s.id.to_string())
            .collect::<Vec<_>>()
    });
    let q = Query {
        from: begin,
        to: end,
        period: Period::Month,
        by_affiliation: false,
        by_age_band: false,
        institutions: Some(c.members.iter().map(|(id, _)| id.clone()).collect()),
        services: services.clone(),
        metrics: Some(vec![
            (Metric::Searches, None),
            (Metric::ItemRequests, None),
            (Metric::UniqueItemRequests, None),
            (Metric::Denials, None),
        ]),
        k_anonymity: 1,
    };
    let rows = match state.usage.query_async(q).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("SUSHI report failed: {e}");
            return fail(1000, "usage data cannot be read just now");
        }
    };
    let per_member = shown.contains("Customer_ID") || shown.contains("Institution_Name");
    let regular = access_filter
        .as_ref()
        .is_none_or(|f| f.is_empty() || f.contains("Regular"));
    let begin_label = month_label(begin);
    let mut counts: Usage = BTreeMap::new();
    if regular && services.as_ref().is_none_or(|s| !s.is_empty()) {
        for r in &rows.rows {
            let svc = rows.service(r);
            if svc == "-" {
                continue;
            }
            let Some(v) = r.value.filter(|v| *v > 0) else {
                continue;
            };
            let names: &[&'static str] = match (r.metric, r.reason) {
                (Metric::Searches, _) if kind == Kind::Pr => &["Searches_Platform"],
                (Metric::Searches, _) => &["Searches_Regular"],
                (Metric::ItemRequests, _) => &ITEM_METRICS[..2],
                (Metric::UniqueItemRequests, _) => &ITEM_METRICS[2..],
                (Metric::Denials, Some(reason)) => match reason.counter_metric() {
                    Some("Limit_Exceeded") => &["Limit_Exceeded"],
                    Some("No_License") => &["No_License"],
                    _ => &[],
                },
                _ => &[],
            };
            let member = if per_member {
                rows.institution(r).to_owned()
            } else {
                String::new()
            };
            let month = if total {
                begin_label.clone()
            } else {
                rows.period(r).to_owned()
            };
            let service = if kind == Kind::Pr {
                String::new()
            } else {
                svc.to_owned()
            };
            for name in names {
                if !kind.metrics().contains(name)
                    || metric_filter
                        .as_ref()
                        .is_some_and(|f| !f.is_empty() && !f.contains(*name))
                {
                    continue;
                }
                *counts
                    .entry((member.clone(), service.clone(), name, month.clone()))
                    .or_insert(0) += v;
            }
        }
    }
    let data_ok = |dt: &str| {
        data_filter
            .as_ref()
            .is_none_or(|f| f.is_empty() || f.contains(dt))
    };
    let items = build_items(kind, &counts, &c, &policy, &shown, &data_ok);
    if items.is_empty() {
        exceptions.push(exception(3030, Some(format!("{begin} to {end}"))));
    }

    let mut header = Map::new();
    header.insert("Release".into(), json!("5.1"));
    header.insert("Report_ID".into(), json!(kind.id()));
    header.insert("Report_Name".into(), json!(kind.name()));
    let created = state
        .usage
        .clock()
        .now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    header.insert("Created".into(), json!(created));
    header.insert("Created_By".into(), json!(PLATFORM));
    header.insert("Institution_ID".into(), proprietary(&c.id));
    header.insert("Institution_Name".into(), json!(c.name));
    header.insert("Registry_Record".into(), json!(""));
    header.insert("Report_Filters".into(), Value::Object(filters));
    if kind.master() {
        let mut attrs = Map::new();
        if !shown.is_empty() {
            attrs.insert("Attributes_To_Show".into(), json!(shown));
        }
        if total {
            attrs.insert("Granularity".into(), json!("Total"));
        }
        if !attrs.is_empty() {
            header.insert("Report_Attributes".into(), Value::Object(attrs));
        }
    }
    if !exceptions.is_empty() {
        header.insert("Exceptions".into(), Value::Array(exceptions));
    }
    axum::Json(json!({"Report_Header": header, "Report_Items": items})).into_response()
}

/// Metric → its Counts object.
type ByMetric<'a> = BTreeMap<&'a str, Map<String, Value>>;

/// The Report_Items: one per service (DR…) or one for the platform (PR), each with one
/// Attribute_Performance per shown attribute combination and Data_Type.
fn build_items(
    kind: Kind,
    counts: &Usage,
    c: &Customer,
    policy: &Policy,
    shown: &BTreeSet<&'static str>,
    data_ok: &dyn Fn(&str) -> bool,
) -> Vec<Value> {
    // service → member → metric → month → n
    let mut tree: BTreeMap<&str, BTreeMap<&str, ByMetric<'_>>> = BTreeMap::new();
    for ((member, service, metric, month), n) in counts {
        tree.entry(service)
            .or_default()
            .entry(member)
            .or_default()
            .entry(metric)
            .or_default()
            .insert(month.clone(), json!(n));
    }
    let member_name = |id: &str| {
        c.members
            .iter()
            .find(|(m, _)| m == id)
            .map_or_else(|| id.to_owned(), |(_, n)| n.clone())
    };
    let mut items = Vec::new();
    for (service, members) in tree {
        let mut aps = Vec::new();
        for (member, metrics) in members {
            let perf = |names: &[&str]| -> Map<String, Value> {
                names
                    .iter()
                    .filter_map(|n| {
                        metrics
                            .get(n)
                            .map(|m| ((*n).to_owned(), Value::Object(m.clone())))
                    })
                    .collect()
            };
            let mut with_attrs = |mut ap: Map<String, Value>| {
                if shown.contains("Access_Method") && kind.master() {
                    ap.insert("Access_Method".into(), json!("Regular"));
                }
                if !member.is_empty() && kind.master() {
                    if shown.contains("Customer_ID") {
                        ap.insert("Customer_ID".into(), json!(member));
                    }
                    if shown.contains("Institution_Name") {
                        ap.insert(
                            "Institution_Name".into(),
                            json!(name_or_id(&member_name(member), member)),
                        );
                    }
                }
                aps.push(Value::Object(ap));
            };
            match kind {
                Kind::Pr | Kind::Dr => {
                    let (search_type, searches): (&str, &[&str]) = if kind == Kind::Pr {
                        ("Platform", &["Searches_Platform"])
                    } else {
                        (
                            "Database_Full",
                            &["Searches_Regular", "Limit_Exceeded", "No_License"],
                        )
                    };
                    let s = perf(searches);
                    if !s.is_empty() && data_ok(search_type) {
                        let mut ap = Map::new();
                        ap.insert("Data_Type".into(), json!(search_type));
                        ap.insert("Performance".into(), Value::Object(s));
                        with_attrs(ap);
                    }
                    let i = perf(&ITEM_METRICS);
                    if i.len() >= 2 && data_ok("Database_Full_Item") {
                        let mut ap = Map::new();
                        ap.insert("Data_Type".into(), json!("Database_Full_Item"));
                        ap.insert("Performance".into(), Value::Object(i));
                        with_attrs(ap);
                    }
                }
                Kind::DrD1 | Kind::DrD2 => {
                    let s = perf(kind.metrics());
                    if !s.is_empty() {
                        let mut ap = Map::new();
                        ap.insert("Performance".into(), Value::Object(s));
                        aps.push(Value::Object(ap));
                    }
                }
            }
        }
        if aps.is_empty() {
            continue;
        }
        let mut item = Map::new();
        if kind == Kind::Pr {
            item.insert("Platform".into(), json!(PLATFORM));
        } else {
            let svc = policy.service(service);
            item.insert(
                "Database".into(),
                json!(svc.map_or_else(|| service.to_owned(), |s| name_or_id(&s.name, service))),
            );
            item.insert(
                "Publisher".into(),
                json!(svc.and_then(|s| s.vendor.clone()).unwrap_or_default()),
            );
            item.insert("Platform".into(), json!(PLATFORM));
        }
        item.insert("Attribute_Performance".into(), Value::Array(aps));
        items.push(Value::Object(item));
    }
    items
}
