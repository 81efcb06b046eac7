//! Login methods: each checks what a person presents and ends in facts for one `Subject`.
//! Library cards go through [`library_card`], guarded by the failed-login [`throttle`].
//! Feide logins go through [`feide`] (OpenID Connect).

pub mod feide;
pub mod library_card;
pub mod throttle;
