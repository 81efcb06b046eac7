//! The rewriter the gateway used before its own scanner ([`super::super::scan`]): lol_html
//! with one handler for every element. Kept only for the tests, as the reference the
//! scanner is compared with on pages where the two could part (comments, scripts, foreign
//! content, odd spellings, every chunking).

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};

use lol_html::send::{Element, ElementContentHandlers, HtmlRewriter, Settings};
use lol_html::{AsciiCompatibleEncoding, HandlerResult, MemorySettings, OutputSink, Selector};

use super::super::headers::HtmlPlan;
use super::super::hosts::HostMap;
use super::{ATTRIBUTES, Kind, REWRITER_MEMORY, rewrite_css_urls, rewrite_srcset};

struct Sink(Arc<Mutex<Vec<u8>>>);

impl OutputSink for Sink {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(chunk);
    }
}

/// A whole decoded body through lol_html, chunk by chunk.
pub(crate) fn rewrite_decoded(
    plan: &HtmlPlan,
    hosts: &Arc<HostMap>,
    service: &str,
    chunks: &[&[u8]],
) -> Result<Vec<u8>, String> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut r = HtmlRewriter::new(settings(plan, hosts, service), Sink(Arc::clone(&out)));
    for c in chunks {
        r.write(c).map_err(|e| e.to_string())?;
    }
    r.end().map_err(|e| e.to_string())?;
    let v = std::mem::take(&mut *out.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(v)
}

fn settings(plan: &HtmlPlan, hosts: &Arc<HostMap>, service: &str) -> Settings<'static, 'static> {
    let s = base_settings(plan);
    let Some(all) = all_elements() else {
        tracing::error!("the rewriter's selector does not parse");
        return s;
    };
    let (hosts, service) = (Arc::clone(hosts), service.to_owned());
    s.append_element_content_handler((
        Cow::Borrowed(all),
        ElementContentHandlers::default()
            .element(move |el: &mut Element<'_, '_>| rewrite_element(&hosts, &service, el)),
    ))
}

fn base_settings(plan: &HtmlPlan) -> Settings<'static, 'static> {
    let s = Settings::new_send()
        // Non-strict: on markup lol_html finds ambiguous it carries on rather than failing
        // the page; at worst a link there stays unrewritten.
        .with_strict(false)
        .with_memory_settings(
            MemorySettings::new()
                .with_max_allowed_memory_usage(REWRITER_MEMORY)
                .with_graceful_bail_out_on_memory_limit_exceeded(true),
        );
    match plan.charset.and_then(AsciiCompatibleEncoding::new) {
        Some(e) => s.with_encoding(e),
        None => s.with_adjust_charset_on_meta_tag(true),
    }
}

/// `*`, parsed once per process. One handler for every element, looking at its attributes
/// by name, costs far less than one `[attr]` selector per rewritten attribute: lol_html
/// matches each selector on every start tag and calls each matching handler separately.
/// Leaked once on purpose to give lol_html the `'static` borrow it wants.
fn all_elements() -> Option<&'static Selector> {
    use std::sync::OnceLock;
    static ALL: OnceLock<Option<&'static Selector>> = OnceLock::new();
    *ALL.get_or_init(|| {
        "*".parse::<Selector>()
            .ok()
            .map(|s| &*Box::leak(Box::new(s)))
    })
}

fn rewrite_element(hosts: &HostMap, service: &str, el: &mut Element<'_, '_>) -> HandlerResult {
    let attributes = el.attributes();
    if attributes.is_empty() {
        return Ok(());
    }
    let mut seen = 0u16;
    let mut refresh = false;
    let mut content = None;
    // Rarely more than one per element; a Vec allocates only when something changes.
    let mut changes: Vec<(&'static str, String)> = Vec::new();
    for attr in attributes {
        let name = attr.name();
        let Some(i) = ATTRIBUTES.iter().position(|(n, _)| *n == name) else {
            continue;
        };
        if seen & (1 << i) != 0 {
            continue;
        }
        seen |= 1 << i;
        let (name, kind) = ATTRIBUTES[i];
        let value = attr.value();
        let new = match kind {
            Kind::Link => hosts.rewrite_link(service, &value),
            Kind::Srcset => rewrite_srcset(hosts, service, &value),
            Kind::Css => rewrite_css_urls(hosts, service, &value),
            Kind::HttpEquiv => {
                refresh = value.trim().eq_ignore_ascii_case("refresh");
                None
            }
            Kind::Content => {
                content = Some(value);
                None
            }
        };
        if let Some(new) = new {
            changes.push((name, new));
        }
    }
    if refresh
        && let Some(new) = content
            .and_then(|v| super::super::headers::rewrite_refresh(hosts, service, &v))
            .filter(|_| el.tag_name() == "meta")
    {
        changes.push(("content", new));
    }
    for (name, value) in changes {
        el.set_attribute(name, &value)?;
    }
    Ok(())
}
