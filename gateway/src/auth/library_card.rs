//! Library card + PIN checks against a library system; [`sip2`] speaks SIP2 to the ACS.
//! The `http` and `file` backends and the common `PatronVerifier` trait will join it here.

pub mod sip2;
