//! A streaming scanner that finds the start tags of an HTML page, and nothing more: the
//! proxy's HTML rewriting only ever changes attribute values of start tags, so the
//! scanner follows the WHATWG tokenizer exactly as far as that needs (where a tag begins
//! and ends, where each attribute's value lies, which text is not markup) and skips
//! everything else with `memchr`.
//!
//! Followed from the tokenizer: tags and their attributes (quoted, unquoted, missing
//! values, `/>`), comments with their odd endings (`<!-->`, `<!--->`, `--!>`), bogus
//! comments and doctypes, the text of `script` (with its `<!--` escapes and `<script>`
//! double escapes), `style`, `xmp`, `iframe`, `noembed`, `noframes` (RAWTEXT), `title`,
//! `textarea` (RCDATA) and `plaintext`, and `<![CDATA[` in SVG and MathML. From the tree
//! builder, only what changes the tokenizer's state: a stack of namespaces (`svg`, `math`,
//! the elements that break out of them, and the HTML integration points) like lol_html's
//! simulator, except that a self-closing `<svg/>` or `<math/>` opens nothing, as in
//! browsers.
//!
//! One deliberate difference from a browser with scripting on: `<noscript>` content is
//! scanned as markup, so its links are rewritten too (a browser without scripting shows
//! them; one with scripting ignores them either way).
//!
//! Character references are not decoded (a link spelt with them is left alone), and bytes
//! are bytes: every encoding lol_html accepts (ASCII-compatible ones) spells markup in
//! ASCII, so the scanner needs no decoding. Memory: a construct cut by a chunk boundary is
//! kept until its end arrives, up to a limit; past it the rest of the page passes through
//! unscanned.

use std::ops::Range;

use memchr::memchr2;

use crate::text::find_byte;

/// HTML whitespace as the tokenizer sees it (CR included: the input stream turns it to LF).
fn is_ws(b: u8) -> bool {
    CLASS[usize::from(b)] & WS != 0
}

const WS: u8 = 1;
const DELIM: u8 = 2;
/// Ends an attribute name: a delimiter or `=`.
const NAME_END: u8 = 4;
/// Ends an unquoted attribute value: whitespace or `>`.
const VALUE_END: u8 = 8;

/// Each byte's classes, looked up rather than compared in the scanner's byte loops.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let ws = [b'\t', b'\n', b'\x0C', b'\r', b' '];
    let mut i = 0;
    while i < ws.len() {
        t[ws[i] as usize] = WS | DELIM | NAME_END | VALUE_END;
        i += 1;
    }
    t[b'/' as usize] = DELIM | NAME_END;
    t[b'>' as usize] = DELIM | NAME_END | VALUE_END;
    t[b'=' as usize] = NAME_END;
    t
};

/// What ends a tag name in text states: `</script` must be followed by one of these.
/// The first index from `i` whose byte has a class in `mask`, or the buffer's end.
fn find_class(buf: &[u8], i: usize, mask: u8) -> usize {
    buf.get(i..)
        .and_then(|rest| rest.iter().position(|&b| CLASS[usize::from(b)] & mask != 0))
        .map_or(buf.len(), |k| i + k)
}

fn is_delim(b: u8) -> bool {
    CLASS[usize::from(b)] & DELIM != 0
}

/// One attribute of a tag, as positions in the buffer the tag was found in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Attr {
    pub name: Range<usize>,
    /// Without quotes; `None` for an attribute written without `=`.
    pub value: Option<Range<usize>>,
    /// Where the attribute's source ends (after a closing quote): `name.start..end` is it whole.
    pub end: usize,
}

/// A start tag, handed to the rewriter.
#[derive(Debug)]
pub(super) struct StartTag<'a> {
    pub buf: &'a [u8],
    pub name: Range<usize>,
    pub attrs: &'a [Attr],
    pub self_closing: bool,
}

impl StartTag<'_> {
    pub fn bytes(&self, r: &Range<usize>) -> &[u8] {
        &self.buf[r.clone()]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ns {
    Html,
    Svg,
    MathMl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Data,
    /// RAWTEXT, RCDATA or script text: up to `</name` and a delimiter.
    Text(&'static [u8]),
    /// A script's `<!--` escape, and a `<script` inside it; `dash`: the first index the
    /// `--` of a closing `-->` may start at.
    ScriptEscaped {
        dash: usize,
    },
    ScriptDoubleEscaped {
        dash: usize,
    },
    /// After `<!--`: the comment ends at a `>` preceded by `--` starting at `dash` or later,
    /// or by `--!` starting at `bang` or later.
    Comment {
        dash: usize,
        bang: usize,
    },
    /// Bogus comments and doctypes: up to the next `>`.
    Bogus,
    /// `<![CDATA[` in foreign content: up to `]]>`.
    Cdata,
    Plaintext,
}

impl Mode {
    /// The same state, for a buffer that now starts at `at` of the old one.
    fn shifted(self, at: usize) -> Self {
        let s = |i: usize| i.saturating_sub(at);
        match self {
            Self::ScriptEscaped { dash } => Self::ScriptEscaped { dash: s(dash) },
            Self::ScriptDoubleEscaped { dash } => Self::ScriptDoubleEscaped { dash: s(dash) },
            Self::Comment { dash, bang } => Self::Comment {
                dash: s(dash),
                bang: s(bang),
            },
            m => m,
        }
    }
}

/// What one step of the scan did.
enum Step {
    /// Scanned up to here; go on.
    At(usize),
    /// The construct starting here is cut off by the end of the buffer.
    NeedMore(usize),
}

/// Deeper nesting of `svg`/`math` than this is counted, not stored.
const MAX_NS_DEPTH: usize = 1024;

/// The scanner's state between chunks of one page.
#[derive(Debug)]
pub(super) struct Scanner {
    mode: Mode,
    /// The namespaces opened above the page's own (HTML, not stored: most pages open
    /// none, and a scanner per page then allocates nothing for it).
    ns: Vec<Ns>,
    /// Namespace pushes beyond [`MAX_NS_DEPTH`], popped before the stack is.
    ns_overflow: usize,
    /// The unscanned end of the last chunk: a construct waiting for its end.
    carry: Vec<u8>,
    attrs: Vec<Attr>,
    /// How far a tag cut off at the end of the last chunk was read (it is at 0 of `carry`).
    resume: Option<Resume>,
    limit: usize,
    passthrough: bool,
}

impl Scanner {
    /// `limit`: the longest construct (a tag, say) kept waiting for its end.
    pub fn new(limit: usize) -> Self {
        Self {
            mode: Mode::Data,
            ns: Vec::new(),
            ns_overflow: 0,
            carry: Vec::new(),
            attrs: Vec::new(),
            resume: None,
            limit,
            passthrough: false,
        }
    }

    /// Whether the limit was hit and the rest of the page passes through unscanned.
    pub fn gave_up(&self) -> bool {
        self.passthrough
    }

    /// Scans `chunk`, appending to `out` what can be sent now: the input, with each start
    /// tag for which `rewrite` wrote a replacement (appending it to the `Vec` it is given,
    /// `out` itself, and returning `true`) replaced. `rewrite` sees only start tags with
    /// attributes: one without has nothing to rewrite.
    pub fn push(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<u8>,
        rewrite: &mut impl FnMut(&StartTag<'_>, &mut Vec<u8>) -> bool,
    ) {
        if self.passthrough {
            out.extend_from_slice(chunk);
            return;
        }
        if self.carry.is_empty() {
            let used = self.scan(chunk, out, rewrite);
            self.carry.extend_from_slice(&chunk[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(chunk);
            let used = self.scan(&buf, out, rewrite);
            buf.drain(..used);
            self.carry = buf;
        }
        if self.carry.len() > self.limit {
            out.append(&mut self.carry);
            self.resume = None;
            self.passthrough = true;
        }
    }

    /// The end of the page: whatever is still waiting goes out as it is (a browser drops
    /// a tag cut off by the end; it is not ours to change).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.carry);
        self.resume = None;
    }

    /// Scans `buf` from the start, writing to `out`; returns how much of it was used (the
    /// rest is a cut-off construct, to be scanned again with more bytes).
    fn scan(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
        rewrite: &mut impl FnMut(&StartTag<'_>, &mut Vec<u8>) -> bool,
    ) -> usize {
        let mut pos = 0;
        let mut emitted = 0;
        while pos < buf.len() {
            let step = match self.mode {
                Mode::Data => self.data(buf, pos, &mut emitted, out, rewrite),
                Mode::Text(name) => self.text(buf, pos, name),
                Mode::ScriptEscaped { dash } => self.script_escaped(buf, pos, dash, false),
                Mode::ScriptDoubleEscaped { dash } => self.script_escaped(buf, pos, dash, true),
                Mode::Comment { dash, bang } => self.comment(buf, pos, dash, bang),
                Mode::Bogus => match find_byte(b'>', &buf[pos..]) {
                    Some(k) => {
                        self.mode = Mode::Data;
                        Step::At(pos + k + 1)
                    }
                    None => Step::At(buf.len()),
                },
                Mode::Cdata => match memchr::memmem::find(&buf[pos..], b"]]>") {
                    Some(k) => {
                        self.mode = Mode::Data;
                        Step::At(pos + k + 3)
                    }
                    None => Step::NeedMore(pos.max(buf.len().saturating_sub(2))),
                },
                Mode::Plaintext => Step::At(buf.len()),
            };
            match step {
                Step::At(p) => pos = p,
                Step::NeedMore(at) => {
                    pos = at;
                    break;
                }
            }
        }
        if pos == buf.len() {
            // The bytes a `-->` or `--!>` in the next chunk looks back at stay for it.
            let len = buf.len();
            pos = match self.mode {
                Mode::Comment { dash, .. } => dash.max(len.saturating_sub(3)),
                Mode::ScriptEscaped { dash } | Mode::ScriptDoubleEscaped { dash } => {
                    dash.max(len.saturating_sub(2))
                }
                _ => len,
            }
            .min(len);
        }
        self.mode = self.mode.shifted(pos);
        out.extend_from_slice(&buf[emitted..pos]);
        pos
    }

    fn data(
        &mut self,
        buf: &[u8],
        pos: usize,
        emitted: &mut usize,
        out: &mut Vec<u8>,
        rewrite: &mut impl FnMut(&StartTag<'_>, &mut Vec<u8>) -> bool,
    ) -> Step {
        let mut pos = pos;
        let lt = loop {
            let Some(k) = find_byte(b'<', &buf[pos..]) else {
                return Step::At(buf.len());
            };
            let lt = pos + k;
            // Most tags of a page (`<p>`, `</p>`, `<li>`, `</a>`) have no attributes and
            // change no state: they are passed over here, without the general path.
            match self.inert_tag(buf, lt) {
                Some(end) => pos = end,
                None => break lt,
            }
        };
        let Some(&next) = buf.get(lt + 1) else {
            return Step::NeedMore(lt);
        };
        match next {
            b'!' => {
                let rest = &buf[lt + 2..];
                if rest.starts_with(b"--") {
                    self.mode = Mode::Comment {
                        dash: lt + 2,
                        bang: lt + 4,
                    };
                    return Step::At(lt + 4);
                }
                let cdata = self.current_ns() != Ns::Html;
                if b"--".starts_with(rest) || (cdata && b"[CDATA[".starts_with(rest)) {
                    return Step::NeedMore(lt);
                }
                if cdata && rest.starts_with(b"[CDATA[") {
                    self.mode = Mode::Cdata;
                    return Step::At(lt + 9);
                }
                self.mode = Mode::Bogus;
                Step::At(lt + 2)
            }
            b'?' => {
                self.mode = Mode::Bogus;
                Step::At(lt + 1)
            }
            b'/' => {
                let Some(&c) = buf.get(lt + 2) else {
                    return Step::NeedMore(lt);
                };
                if c == b'>' {
                    return Step::At(lt + 3);
                }
                if !c.is_ascii_alphabetic() {
                    self.mode = Mode::Bogus;
                    return Step::At(lt + 2);
                }
                let mut attrs = std::mem::take(&mut self.attrs);
                let resume = self.resume.take().filter(|_| lt == 0);
                let step = match parse_tag(buf, lt + 2, &mut attrs, resume) {
                    Ok(t) => {
                        self.end_tag(&buf[t.name]);
                        Step::At(t.end)
                    }
                    Err(r) => self.cut_tag(lt, r, &mut attrs),
                };
                self.attrs = attrs;
                step
            }
            c if c.is_ascii_alphabetic() => {
                let mut attrs = std::mem::take(&mut self.attrs);
                let resume = self.resume.take().filter(|_| lt == 0);
                let step = match parse_tag(buf, lt + 1, &mut attrs, resume) {
                    Ok(t) => {
                        let tag = StartTag {
                            buf,
                            name: t.name.clone(),
                            attrs: &attrs,
                            self_closing: t.self_closing,
                        };
                        if !attrs.is_empty() && attrs.len() <= MAX_ATTRS {
                            // What comes before the tag goes out first, so that a
                            // replacement can be written straight after it; anything a
                            // rewriter wrote without returning `true` is taken back.
                            out.extend_from_slice(&buf[*emitted..lt]);
                            *emitted = lt;
                            let mark = out.len();
                            if rewrite(&tag, out) {
                                *emitted = t.end;
                            } else {
                                out.truncate(mark);
                            }
                        }
                        self.start_tag(buf, &buf[t.name], &attrs, t.self_closing);
                        Step::At(t.end)
                    }
                    Err(r) => self.cut_tag(lt, r, &mut attrs),
                };
                self.attrs = attrs;
                step
            }
            _ => Step::At(lt + 1),
        }
    }

    /// Where a tag at `lt` ends if it is a start or end tag without attributes that
    /// changes nothing in the scanner's state (in HTML content: the start tags
    /// [`inert_in_html`] tells, and every end tag); `None` for anything else, left to the
    /// general path, as is a tag cut off by the end of the buffer.
    #[inline]
    fn inert_tag(&self, buf: &[u8], lt: usize) -> Option<usize> {
        if !self.ns.is_empty() || self.ns_overflow > 0 || (lt == 0 && self.resume.is_some()) {
            return None;
        }
        let rest = buf.get(lt + 1..)?;
        let (end_tag, name_at) = match rest.first()? {
            b'/' => (true, 1),
            _ => (false, 0),
        };
        if !rest.get(name_at)?.is_ascii_alphabetic() {
            return None;
        }
        let name_len = rest[name_at..]
            .iter()
            .position(|&b| CLASS[usize::from(b)] & DELIM != 0)?;
        let close = name_at + name_len;
        if rest[close] != b'>' || !(end_tag || inert_in_html(&rest[name_at..close])) {
            return None;
        }
        Some(lt + close + 2)
    }

    /// A tag at `lt` runs past the end of the buffer: it is kept (from `lt`, which becomes
    /// 0) with what was read of it.
    fn cut_tag(&mut self, lt: usize, resume: Resume, attrs: &mut [Attr]) -> Step {
        for a in attrs.iter_mut() {
            a.name = a.name.start - lt..a.name.end - lt;
            a.value = a.value.take().map(|v| v.start - lt..v.end - lt);
            a.end -= lt;
        }
        self.resume = Some(resume.shifted(lt));
        Step::NeedMore(lt)
    }

    /// RAWTEXT, RCDATA and script text: up to `</name` and a delimiter; in a script, `<!--`
    /// also begins an escape ([`Self::script_escaped`]).
    fn text(&mut self, buf: &[u8], mut pos: usize, name: &'static [u8]) -> Step {
        let script = name == b"script";
        while let Some(k) = find_byte(b'<', &buf[pos..]) {
            let lt = pos + k;
            if script {
                let rest = &buf[lt + 1..];
                if rest.starts_with(b"!--") {
                    self.mode = Mode::ScriptEscaped { dash: lt + 2 };
                    return Step::At(lt + 4);
                }
                if b"!--".starts_with(rest) {
                    return Step::NeedMore(lt);
                }
            }
            match end_tag_at(buf, lt, name) {
                Some(true) => {
                    self.mode = Mode::Data;
                    return Step::At(lt);
                }
                Some(false) => pos = lt + 1,
                None => return Step::NeedMore(lt),
            }
        }
        Step::At(buf.len())
    }

    /// The escaped and double-escaped script states: both end at `-->`; `</script` ends
    /// the script in the first and the double escape in the second; `<script` in the
    /// first begins a double escape.
    fn script_escaped(&mut self, buf: &[u8], mut pos: usize, dash: usize, double: bool) -> Step {
        while let Some(k) = memchr2(b'<', b'>', &buf[pos..]) {
            let at = pos + k;
            if buf[at] == b'>' {
                if at >= dash + 2 && &buf[at - 2..at] == b"--" {
                    self.mode = Mode::Text(b"script");
                    return Step::At(at + 1);
                }
                pos = at + 1;
                continue;
            }
            match end_tag_at(buf, at, b"script") {
                Some(true) if double => {
                    // `</script` and its delimiter are text; the escape goes on.
                    let after = at + 9;
                    self.mode = Mode::ScriptEscaped { dash: after };
                    return Step::At(after);
                }
                Some(true) => {
                    self.mode = Mode::Data;
                    return Step::At(at);
                }
                None => return Step::NeedMore(at),
                Some(false) => {}
            }
            if !double {
                match name_at(buf, at + 1, b"script") {
                    Some(true) => {
                        let after = at + 8;
                        self.mode = Mode::ScriptDoubleEscaped { dash: after };
                        return Step::At(after);
                    }
                    None => return Step::NeedMore(at),
                    Some(false) => {}
                }
            }
            pos = at + 1;
        }
        Step::NeedMore(dash.max(buf.len().saturating_sub(2)))
    }

    fn comment(&mut self, buf: &[u8], mut pos: usize, dash: usize, bang: usize) -> Step {
        while let Some(k) = find_byte(b'>', &buf[pos..]) {
            let gt = pos + k;
            let closes = (gt >= dash + 2 && &buf[gt - 2..gt] == b"--")
                || (gt >= bang + 3 && &buf[gt - 3..gt] == b"--!");
            if closes {
                self.mode = Mode::Data;
                return Step::At(gt + 1);
            }
            pos = gt + 1;
        }
        Step::NeedMore(dash.max(buf.len().saturating_sub(3)))
    }

    fn current_ns(&self) -> Ns {
        if self.ns_overflow > 0 {
            // Only svg and math are ever pushed past the limit.
            return Ns::Svg;
        }
        self.ns.last().copied().unwrap_or(Ns::Html)
    }

    fn push_ns(&mut self, ns: Ns) {
        if self.ns.len() < MAX_NS_DEPTH {
            self.ns.push(ns);
        } else {
            self.ns_overflow += 1;
        }
    }

    fn pop_ns(&mut self) {
        if self.ns_overflow > 0 {
            self.ns_overflow -= 1;
        } else {
            self.ns.pop();
        }
    }

    fn start_tag(&mut self, buf: &[u8], name: &[u8], attrs: &[Attr], self_closing: bool) {
        if self.ns.is_empty() && self.ns_overflow == 0 && inert_in_html(name) {
            return;
        }
        let mut lower = [0u8; 16];
        let name = lowercase(name, &mut lower);
        let ns = self.current_ns();
        if name == b"svg" || name == b"math" {
            if !self_closing {
                self.push_ns(if name == b"svg" { Ns::Svg } else { Ns::MathMl });
            }
            return;
        }
        if ns != Ns::Html {
            let has = |want: &[u8]| {
                attrs
                    .iter()
                    .find(|a| buf[a.name.clone()].eq_ignore_ascii_case(want))
                    .map(|a| a.value.clone().map_or(&[][..], |v| &buf[v]))
            };
            let font_breaks = name == b"font"
                && ["color", "face", "size"]
                    .iter()
                    .any(|a| has(a.as_bytes()).is_some());
            if breaks_out_of_foreign(name) || font_breaks {
                self.pop_ns();
                return;
            }
            if self_closing {
                return;
            }
            let integration = match ns {
                Ns::Svg => matches!(name, b"desc" | b"title" | b"foreignobject"),
                _ => {
                    matches!(name, b"mi" | b"mo" | b"mn" | b"ms" | b"mtext")
                        || (name == b"annotation-xml"
                            && has(b"encoding").is_some_and(|v| {
                                v.eq_ignore_ascii_case(b"text/html")
                                    || v.eq_ignore_ascii_case(b"application/xhtml+xml")
                            }))
                }
            };
            if integration {
                self.push_ns(Ns::Html);
            }
            return;
        }
        self.mode = match name {
            b"script" => Mode::Text(b"script"),
            b"style" => Mode::Text(b"style"),
            b"xmp" => Mode::Text(b"xmp"),
            b"iframe" => Mode::Text(b"iframe"),
            b"noembed" => Mode::Text(b"noembed"),
            b"noframes" => Mode::Text(b"noframes"),
            b"title" => Mode::Text(b"title"),
            b"textarea" => Mode::Text(b"textarea"),
            b"plaintext" => Mode::Plaintext,
            _ => Mode::Data,
        };
    }

    fn end_tag(&mut self, name: &[u8]) {
        if self.ns.is_empty() && self.ns_overflow == 0 {
            // Not in foreign content nor an integration point: nothing to leave.
            return;
        }
        let mut lower = [0u8; 16];
        let name = lowercase(name, &mut lower);
        let ns = self.current_ns();
        match ns {
            Ns::Html => {
                let prev = if self.ns_overflow > 0 {
                    None
                } else {
                    // Below the top, or the page's own HTML.
                    Some(
                        self.ns
                            .len()
                            .checked_sub(2)
                            .map_or(Ns::Html, |i| self.ns[i]),
                    )
                };
                let leaves = match prev {
                    Some(Ns::Svg) => matches!(name, b"desc" | b"title" | b"foreignobject"),
                    Some(Ns::MathMl) => {
                        matches!(
                            name,
                            b"mi" | b"mo" | b"mn" | b"ms" | b"mtext" | b"annotation-xml"
                        )
                    }
                    _ => false,
                };
                if leaves {
                    self.pop_ns();
                }
            }
            Ns::Svg | Ns::MathMl => {
                if (ns == Ns::Svg && name == b"svg")
                    || (ns == Ns::MathMl && name == b"math")
                    || matches!(name, b"p" | b"br")
                {
                    self.pop_ns();
                }
            }
        }
    }
}

/// Whether a start tag of this name, in HTML content, changes nothing in the scanner's
/// state: only svg, style, script, xmp, iframe, noembed, noframes, title, textarea,
/// plaintext and math do, and first letter and length tell the rest (`p`, `span`, `td`,
/// …) apart at once (a few, like `sup` or `mark`, go the long way and are found inert
/// there).
#[inline]
fn inert_in_html(name: &[u8]) -> bool {
    !matches!(
        (name.first().map(u8::to_ascii_lowercase), name.len()),
        (Some(b's'), 3 | 5 | 6)
            | (Some(b'x'), 3)
            | (Some(b'i'), 6)
            | (Some(b'n'), 7 | 8)
            | (Some(b't'), 5 | 8)
            | (Some(b'p'), 9)
            | (Some(b'm'), 4)
    )
}

/// `name` in ASCII lowercase, in `buf` if it fits (longer names are none we look for).
fn lowercase<'b>(name: &[u8], buf: &'b mut [u8; 16]) -> &'b [u8] {
    if name.len() > buf.len() {
        return &[];
    }
    let out = &mut buf[..name.len()];
    for (o, b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    out
}

fn breaks_out_of_foreign(name: &[u8]) -> bool {
    matches!(
        name,
        b"b" | b"big"
            | b"blockquote"
            | b"body"
            | b"br"
            | b"center"
            | b"code"
            | b"dd"
            | b"div"
            | b"dl"
            | b"dt"
            | b"em"
            | b"embed"
            | b"h1"
            | b"h2"
            | b"h3"
            | b"h4"
            | b"h5"
            | b"h6"
            | b"head"
            | b"hr"
            | b"i"
            | b"img"
            | b"li"
            | b"listing"
            | b"menu"
            | b"meta"
            | b"nobr"
            | b"ol"
            | b"p"
            | b"pre"
            | b"ruby"
            | b"s"
            | b"small"
            | b"span"
            | b"strong"
            | b"strike"
            | b"sub"
            | b"sup"
            | b"table"
            | b"tt"
            | b"u"
            | b"ul"
            | b"var"
    )
}

/// Whether `buf[at..]` is `name` (any case) and a delimiter; `None`: cut off too soon to say.
fn name_at(buf: &[u8], at: usize, name: &[u8]) -> Option<bool> {
    let rest = buf.get(at..).unwrap_or_default();
    let n = name.len().min(rest.len());
    if !rest[..n].eq_ignore_ascii_case(&name[..n]) {
        return Some(false);
    }
    Some(is_delim(*rest.get(name.len())?))
}

/// Whether the `<` at `lt` begins `</name` and a delimiter (an end tag that ends a text
/// state); `None`: cut off too soon to say.
fn end_tag_at(buf: &[u8], lt: usize, name: &[u8]) -> Option<bool> {
    match buf.get(lt + 1) {
        None => None,
        Some(b'/') => name_at(buf, lt + 2, name),
        Some(_) => Some(false),
    }
}

struct TagEnd {
    name: Range<usize>,
    end: usize,
    self_closing: bool,
}

/// More attributes than this in one tag are not recorded (the tag is then left as it is):
/// no real page comes near, and it bounds the memory a hostile tag takes.
const MAX_ATTRS: usize = 1024;

/// Where the reading of a tag cut off by the end of a chunk stopped, relative to its `<`:
/// it goes on from there when the rest arrives, so that a long tag is read once rather
/// than once per chunk.
#[derive(Clone, Debug)]
enum Resume {
    /// In the tag name, read up to `at`.
    Name { at: usize },
    /// Before an attribute at `at`; the attributes before it are read.
    Attrs { name: Range<usize>, at: usize },
}

impl Resume {
    fn shifted(self, by: usize) -> Self {
        match self {
            Self::Name { at } => Self::Name { at: at - by },
            Self::Attrs { name, at } => Self::Attrs {
                name: name.start - by..name.end - by,
                at: at - by,
            },
        }
    }
}

/// A tag whose name begins at `name_at`, following the tokenizer from the tag name state
/// to the `>` that ends it, or from where `resume` says an earlier try stopped. `Err`: the
/// buffer ends before the tag does; where to go on from.
fn parse_tag(
    buf: &[u8],
    name_at: usize,
    attrs: &mut Vec<Attr>,
    resume: Option<Resume>,
) -> Result<TagEnd, Resume> {
    let n = buf.len();
    let (name, mut i) = match resume {
        Some(Resume::Attrs { name, at }) => (name, at),
        resume => {
            attrs.clear();
            let from = match resume {
                Some(Resume::Name { at }) => at,
                _ => name_at,
            };
            let i = find_class(buf, from, DELIM);
            if i == n {
                return Err(Resume::Name { at: i });
            }
            (name_at..i, i)
        }
    };
    let skip = |i: usize| {
        buf.get(i..)
            .and_then(|rest| rest.iter().position(|&b| !is_ws(b)))
            .map_or(n, |k| i + k)
    };
    let push = |attrs: &mut Vec<Attr>, a: Attr| {
        // Room for a usual tag's attributes at the page's first one (a page without any
        // allocates nothing), rather than growing step by step.
        if attrs.capacity() == 0 {
            attrs.reserve(8);
        }
        if attrs.len() <= MAX_ATTRS {
            attrs.push(a);
        }
    };
    loop {
        i = skip(i);
        let top = i;
        let cut = || {
            Err(Resume::Attrs {
                name: name.clone(),
                at: top,
            })
        };
        let Some(&c) = buf.get(i) else {
            return cut();
        };
        match c {
            b'>' => {
                return Ok(TagEnd {
                    name,
                    end: i + 1,
                    self_closing: false,
                });
            }
            b'/' => {
                let Some(&next) = buf.get(i + 1) else {
                    return cut();
                };
                if next == b'>' {
                    return Ok(TagEnd {
                        name,
                        end: i + 2,
                        self_closing: true,
                    });
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        // Attribute name; a leading `=` is part of it.
        let start = i;
        i += 1;
        i = find_class(buf, i, NAME_END);
        let name_end = i;
        let j = skip(i);
        let Some(&c) = buf.get(j) else {
            return cut();
        };
        if c != b'=' {
            push(
                attrs,
                Attr {
                    name: start..name_end,
                    value: None,
                    end: name_end,
                },
            );
            i = j;
            continue;
        }
        let k = skip(j + 1);
        let Some(&c) = buf.get(k) else {
            return cut();
        };
        match c {
            q @ (b'"' | b'\'') => {
                let Some(close) = find_byte(q, &buf[k + 1..]).map(|c| k + 1 + c) else {
                    return cut();
                };
                push(
                    attrs,
                    Attr {
                        name: start..name_end,
                        value: Some(k + 1..close),
                        end: close + 1,
                    },
                );
                i = close + 1;
            }
            b'>' => {
                push(
                    attrs,
                    Attr {
                        name: start..name_end,
                        value: Some(k..k),
                        end: k,
                    },
                );
                return Ok(TagEnd {
                    name,
                    end: k + 1,
                    self_closing: false,
                });
            }
            _ => {
                let e = find_class(buf, k, VALUE_END);
                if e == n {
                    return cut();
                }
                push(
                    attrs,
                    Attr {
                        name: start..name_end,
                        value: Some(k..e),
                        end: e,
                    },
                );
                i = e;
            }
        }
    }
}
