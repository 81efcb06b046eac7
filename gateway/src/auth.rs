//! Login methods: each checks what a person presents and ends in facts for one `Subject`.
//! Library cards go through [`library_card`], guarded by the failed-login [`throttle`];
//! Feide will sit beside them.

pub mod library_card;
pub mod throttle;
