//! Login methods: each checks what a person presents and ends in facts for one `Subject`.
//! Library cards go through [`library_card`]; Feide will sit beside it.

pub mod library_card;
