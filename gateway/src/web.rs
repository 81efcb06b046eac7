//! What every handler answers with, from plain values (never the whole `App`): the pages
//! and their texts ([`pages`]), refusals that render a page or JSON with their status
//! ([`Refusal`]), redirects and checked request values ([`redirect`], [`request`]), and the
//! gateway's own cookies ([`cookies`]).

pub mod cookies;
pub mod pages;
pub mod redirect;
pub mod refusal;
pub mod request;
pub mod response;

pub use cookies::{Cookie, Cookies};
pub use pages::Texts;
pub use refusal::Refusal;
pub use request::Peer;
pub use response::{html, message, see_other};
