//! Reading the archive: sum the per-day tables over a date range into days, months or one
//! total, keep only what the caller may see and asked for, break down by affiliation and
//! age band on request, and apply k-anonymity to breakdowns.
//!
//! A scan touches each stored entry of the range once and adds it into a hash map of the
//! period's groups, which the next period starts afresh; a national year (800 institutions
//! × 150 services × 365 days) sums in well under the 2 s budget (`benches/usage.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::civil::Date;
use rustc_hash::FxHashMap;

use super::UsageError;
use super::counters::{self, ALL, Archive, Metric, NO_REASON, Names, Table};
use policy::DenyReason;

/// How counts are grouped in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
    /// One row per cell for the whole range.
    Total,
}

impl Period {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            "total" => Some(Self::Total),
            _ => None,
        }
    }
}

/// A checked query. Institution and service lists are ids; `None` means every one.
#[derive(Clone, Debug)]
pub struct Query {
    pub from: Date,
    pub to: Date,
    pub period: Period,
    pub by_affiliation: bool,
    pub by_age_band: bool,
    pub institutions: Option<Vec<String>>,
    pub services: Option<Vec<String>>,
    /// Metrics asked for, a denial reason narrowing `denials`; `None` means all.
    pub metrics: Option<Vec<(Metric, Option<DenyReason>)>>,
    /// Counts from 1 to k−1 in a breakdown are hidden. 1 hides nothing.
    pub k_anonymity: u32,
}

/// One output cell. `aff` and `band` are [`counters::ALL`] when not broken down by them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// Index into [`Rows::periods`].
    pub period: u32,
    pub inst: u16,
    pub svc: u16,
    pub metric: Metric,
    pub reason: Option<DenyReason>,
    pub aff: u8,
    pub band: u8,
    /// `None`: hidden by k-anonymity.
    pub value: Option<u64>,
}

/// A query's answer, with the names its indexes refer to.
#[derive(Clone, Debug, Default)]
pub struct Rows {
    /// `2026-05-01`, `2026-05` or `2026-05-01/2026-05-31`.
    pub periods: Vec<String>,
    pub institutions: Vec<Arc<str>>,
    pub services: Vec<Arc<str>>,
    pub rows: Vec<Row>,
}

impl Rows {
    pub fn institution(&self, r: &Row) -> &str {
        self.institutions.get(usize::from(r.inst)).map_or("", |s| s)
    }
    pub fn service(&self, r: &Row) -> &str {
        self.services.get(usize::from(r.svc)).map_or("", |s| s)
    }
    pub fn period(&self, r: &Row) -> &str {
        self.periods.get(r.period as usize).map_or("", |s| s)
    }
}

impl Row {
    /// `denials:<reason>` for a denial, else the metric's name.
    pub fn metric_name(&self) -> String {
        match self.reason {
            Some(r) => format!("{}:{}", self.metric.as_str(), r.as_str()),
            None => self.metric.as_str().to_owned(),
        }
    }
}

const AFF_MASK: u64 = 0xFF << 8;
const BAND_MASK: u64 = 0xFF;

fn month_label(d: Date) -> String {
    format!("{:04}-{:02}", d.year(), d.month())
}

/// Which periods' tables give `unique_users` for this query, by label; `Err` when the
/// range does not line up with days or whole months (distinct counts cannot be summed).
fn distinct_sources<'a>(
    q: &Query,
    archive: &'a Archive,
) -> Result<Vec<(String, Option<&'a Table>)>, String> {
    let whole_month = |first: Date, last: Date| first.day() == 1 && last == first.last_of_month();
    match q.period {
        Period::Day => Ok(archive
            .days
            .range(q.from..=q.to)
            .map(|(d, t)| (d.to_string(), Some(t)))
            .collect()),
        Period::Month => {
            let mut out = Vec::new();
            let mut m = q.from.first_of_month();
            while m <= q.to {
                let (first, last) = (m.max(q.from), m.last_of_month().min(q.to));
                if !whole_month(first, last) {
                    return Err(format!(
                        "unique_users is counted per day and per whole month; {} is not a whole month of the range: use period=day, or from= and to= on month boundaries",
                        month_label(m)
                    ));
                }
                out.push((month_label(m), archive.months.get(&m)));
                m = match m.last_of_month().tomorrow() {
                    Ok(n) => n,
                    Err(_) => break,
                };
            }
            Ok(out)
        }
        Period::Total => {
            if q.from == q.to {
                Ok(vec![(total_label(q), archive.days.get(&q.from))])
            } else if q.from.first_of_month() == q.to.first_of_month() && whole_month(q.from, q.to)
            {
                Ok(vec![(total_label(q), archive.months.get(&q.from))])
            } else {
                Err("unique_users cannot be summed across periods: with period=total the range must be one day or one whole month".into())
            }
        }
    }
}

fn total_label(q: &Query) -> String {
    format!("{}/{}", q.from, q.to)
}

/// Runs a query.
pub fn run(q: &Query, names: &Names, archive: &Archive) -> Result<Rows, UsageError> {
    if q.from > q.to {
        return Err(UsageError::bad_request("from is after to"));
    }
    let allowed_inst = allow_list(q.institutions.as_deref(), names.institutions.len(), |id| {
        names.institution(id)
    });
    let allowed_svc = allow_list(q.services.as_deref(), names.services.len(), |id| {
        names.service(id)
    });
    let mut metric_ok = [false; 10];
    let mut reason_ok: Option<Vec<u8>> = None;
    match &q.metrics {
        None => metric_ok = [true; 10],
        Some(list) => {
            for (m, r) in list {
                metric_ok[*m as usize] = true;
                if *m == Metric::Denials {
                    match r {
                        Some(r) => reason_ok
                            .get_or_insert_with(Vec::new)
                            .push(counters::reason_code(*r)),
                        // Plain `denials` asks for every reason.
                        None => reason_ok = Some((0..=u8::MAX).collect()),
                    }
                }
            }
        }
    }
    let reason_allowed = |code: u8| reason_ok.as_ref().is_none_or(|v| v.contains(&code));
    let keep_mask = !((if q.by_affiliation { 0 } else { AFF_MASK })
        | (if q.by_age_band { 0 } else { BAND_MASK }));
    let all_mask = !keep_mask;

    let mut out = Rows {
        institutions: names.institutions.clone(),
        services: names.services.clone(),
        ..Rows::default()
    };
    let mut labels: BTreeMap<String, u32> = BTreeMap::new();
    let mut label = |out: &mut Rows, s: String| -> u32 {
        *labels.entry(s).or_insert_with_key(|k| {
            out.periods.push(k.clone());
            (out.periods.len() - 1) as u32
        })
    };

    // Summable metrics.
    let mut acc: FxHashMap<u64, u64> = FxHashMap::default();
    let mut current: Option<String> = None;
    let flush = |out: &mut Rows, acc: &mut FxHashMap<u64, u64>, p: u32| {
        for (k, v) in acc.drain() {
            push_row(out, p, k, Some(v));
        }
    };
    let any_summable = metric_ok
        .iter()
        .enumerate()
        .any(|(i, ok)| *ok && i != Metric::UniqueUsers as usize);
    if any_summable {
        for (day, table) in archive.days.range(q.from..=q.to) {
            let l = match q.period {
                Period::Day => day.to_string(),
                Period::Month => month_label(*day),
                Period::Total => total_label(q),
            };
            if current.as_ref() != Some(&l) {
                if let Some(prev) = current.take() {
                    let p = label(&mut out, prev);
                    flush(&mut out, &mut acc, p);
                }
                current = Some(l);
            }
            for &(k, v) in &table.0 {
                let inst = (k >> 48) as usize;
                let svc = ((k >> 32) & 0xFFFF) as usize;
                let metric = ((k >> 24) & 0xFF) as usize;
                if !allowed_inst.get(inst).copied().unwrap_or(false)
                    || !allowed_svc.get(svc).copied().unwrap_or(false)
                    || !metric_ok.get(metric).copied().unwrap_or(false)
                    || metric == Metric::UniqueUsers as usize
                    || (metric == Metric::Denials as usize
                        && !reason_allowed(((k >> 16) & 0xFF) as u8))
                {
                    continue;
                }
                let e = acc.entry((k & keep_mask) | all_mask).or_insert(0);
                *e = e.saturating_add(v);
            }
        }
        if let Some(prev) = current.take() {
            let p = label(&mut out, prev);
            flush(&mut out, &mut acc, p);
        }
    }

    // Distinct persons: per day or per whole month, never summed over time.
    if metric_ok[Metric::UniqueUsers as usize] {
        let explicit = q.metrics.is_some();
        match distinct_sources(q, archive) {
            Err(message) if explicit => return Err(UsageError::bad_request(message)),
            // Asked for every metric: leave out what cannot be known rather than refuse.
            Err(_) => {}
            Ok(sources) => {
                let breakdown = q.by_affiliation || q.by_age_band;
                for (l, table) in sources {
                    let Some(table) = table else { continue };
                    for &(k, v) in &table.0 {
                        let u = counters::unpack(k);
                        if u.metric != Metric::UniqueUsers as u8
                            || !allowed_inst.get(usize::from(u.inst)).copied().unwrap_or(false)
                            || !allowed_svc.get(usize::from(u.svc)).copied().unwrap_or(false)
                            // The all-bands cell answers the plain question; the per-band
                            // cells, summed, answer breakdowns.
                            || (u.aff == ALL) == breakdown
                        {
                            continue;
                        }
                        let e = acc.entry((k & keep_mask) | all_mask).or_insert(0);
                        *e = e.saturating_add(v);
                    }
                    let p = label(&mut out, l);
                    flush(&mut out, &mut acc, p);
                }
            }
        }
    }

    // Sort by period label, then cell.
    let order: Vec<u32> = {
        let mut idx: Vec<u32> = (0..out.periods.len() as u32).collect();
        idx.sort_by(|a, b| out.periods[*a as usize].cmp(&out.periods[*b as usize]));
        let mut rank = vec![0u32; idx.len()];
        for (r, i) in idx.iter().enumerate() {
            rank[*i as usize] = r as u32;
        }
        rank
    };
    out.rows.sort_unstable_by_key(|r| {
        (
            order[r.period as usize],
            r.inst,
            r.svc,
            r.metric,
            r.reason.map_or(NO_REASON, counters::reason_code),
            r.aff,
            r.band,
        )
    });
    if q.by_affiliation || q.by_age_band {
        suppress(&mut out.rows, q.k_anonymity);
    }
    Ok(out)
}

fn allow_list(
    ids: Option<&[String]>,
    len: usize,
    index: impl Fn(&str) -> Option<u16>,
) -> Vec<bool> {
    match ids {
        None => vec![true; len],
        Some(ids) => {
            let mut v = vec![false; len];
            for id in ids {
                if let Some(i) = index(id) {
                    v[usize::from(i)] = true;
                }
            }
            v
        }
    }
}

fn push_row(out: &mut Rows, period: u32, k: u64, value: Option<u64>) {
    let u = counters::unpack(k);
    let Some(metric) = Metric::from_code(u.metric) else {
        return;
    };
    out.rows.push(Row {
        period,
        inst: u.inst,
        svc: u.svc,
        metric,
        reason: if metric == Metric::Denials {
            counters::reason_of(u.reason)
        } else {
            None
        },
        aff: u.aff,
        band: u.band,
        value,
    });
}

/// k-anonymity over sorted rows: within each breakdown (same period, institution, service
/// and metric), counts 1..k−1 are hidden; if that hides exactly one cell, the smallest
/// other non-zero cell is hidden too, so the breakdown's total cannot give it away.
pub fn suppress(rows: &mut [Row], k: u32) {
    let k = u64::from(k);
    let same = |a: &Row, b: &Row| {
        (a.period, a.inst, a.svc, a.metric, a.reason)
            == (b.period, b.inst, b.svc, b.metric, b.reason)
    };
    let mut start = 0;
    while start < rows.len() {
        let mut end = start + 1;
        while end < rows.len() && same(&rows[start], &rows[end]) {
            end += 1;
        }
        let group = &mut rows[start..end];
        let mut hidden = 0;
        for r in group.iter_mut() {
            if let Some(v) = r.value
                && v > 0
                && v < k
            {
                r.value = None;
                hidden += 1;
            }
        }
        if hidden == 1
            && let Some(r) = group
                .iter_mut()
                .filter(|r| r.value.is_some_and(|v| v > 0))
                .min_by_key(|r| r.value)
        {
            r.value = None;
        }
        start = end;
    }
}
