//! Byte searches for the short texts of every request: a page's next `<`, a cookie's `;`,
//! a session cookie's `.`, a path's `?`. `str::split(';')` and friends go through a
//! general character searcher, and `memchr::memchr` first picks an implementation at run
//! time; both cost more than these searches.

/// The first `needle` in `hay`. On x86-64 memchr's SSE2 search, which every x86-64 has,
/// is called directly and inlined; elsewhere `memchr::memchr`.
#[inline]
pub fn find_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(one) = memchr::arch::x86_64::sse2::memchr::One::new(needle) {
        return one.find(hay);
    }
    memchr::memchr(needle, hay)
}

/// `s.split_once(c)` for an ASCII `c`, through [`find_byte`]. An ASCII byte is never
/// inside a multi-byte character, so both sides are on character boundaries.
#[inline]
pub fn split_once_ascii(s: &str, c: u8) -> Option<(&str, &str)> {
    debug_assert!(c.is_ascii());
    let i = find_byte(c, s.as_bytes())?;
    Some((&s[..i], &s[i + 1..]))
}

/// `s.split(c)` for an ASCII `c`, through [`find_byte`]: the same items, empty ones
/// included.
#[inline]
pub fn split_ascii(s: &str, c: u8) -> SplitAscii<'_> {
    debug_assert!(c.is_ascii());
    SplitAscii { rest: Some(s), c }
}

/// The iterator of [`split_ascii`].
#[derive(Clone, Debug)]
pub struct SplitAscii<'a> {
    rest: Option<&'a str>,
    c: u8,
}

impl<'a> Iterator for SplitAscii<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match split_once_ascii(rest, self.c) {
            Some((item, after)) => {
                self.rest = Some(after);
                Some(item)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_the_first_byte_at_any_distance() {
        for len in 0..100 {
            let mut hay = vec![b'a'; len];
            assert_eq!(find_byte(b';', &hay), None);
            for at in (0..len).rev() {
                hay[at] = b';';
                assert_eq!(find_byte(b';', &hay), Some(at), "len {len}");
            }
        }
    }

    #[test]
    fn splits_like_str_split() {
        for s in ["", ";", "a", "a;b", ";a;;b;", "å=ø; æ=1", "id.mac.more"] {
            for c in [b';', b'.', b'='] {
                let ours: Vec<&str> = split_ascii(s, c).collect();
                let std: Vec<&str> = s.split(char::from(c)).collect();
                assert_eq!(ours, std, "{s:?} by {}", char::from(c));
                assert_eq!(split_once_ascii(s, c), s.split_once(char::from(c)));
            }
        }
    }

    proptest! {
        #[test]
        fn splits_any_text_like_str_split(s in "[a-c;=. æ]{0,80}", c in prop::sample::select(vec![b';', b'=', b'.'])) {
            let ours: Vec<&str> = split_ascii(&s, c).collect();
            let std: Vec<&str> = s.split(char::from(c)).collect();
            prop_assert_eq!(ours, std);
            prop_assert_eq!(split_once_ascii(&s, c), s.split_once(char::from(c)));
        }
    }
}
