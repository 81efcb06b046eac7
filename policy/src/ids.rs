//! Identifier newtypes shared by every module.
//!
//! Ids of institutions and services are public and print as themselves. The ones about a
//! person ([`SubjectKey`], [`Pseudonym`]) have a redacting `Debug`, so a `{:?}` in a log line
//! or an error cannot leak them by accident; their value is reachable only on purpose,
//! through `expose()`.

use std::fmt;
use std::sync::Arc;

/// An institution's ISIL, such as `NO-2390700`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstitutionId(Arc<str>);

/// A service's slug, such as `pressreader`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(Arc<str>);

macro_rules! public_id {
    ($t:ident) => {
        impl $t {
            pub fn new(s: impl Into<Arc<str>>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}
public_id!(InstitutionId);
public_id!(ServiceId);

/// A person's stable internal key (`card:NO-2390700:12345`, `card:NO:N123456789`,
/// `feide:ola@vgs.example.no`). Never shown to a vendor, never logged.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SubjectKey(String);

/// A pairwise pseudonym as released to one sector of vendors (see `pseudonym.rs`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pseudonym(String);

macro_rules! personal_id {
    ($t:ident) => {
        impl $t {
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            /// The real value, for the few places that must have it (hashing, release).
            pub fn expose(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }
    };
}
personal_id!(SubjectKey);
personal_id!(Pseudonym);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_ids_do_not_debug_print_their_value() {
        let k = SubjectKey::new("card:NO-2390700:98765");
        assert_eq!(format!("{k:?}"), "SubjectKey(<redacted>)");
        let p = Pseudonym::new("abcdefgh");
        assert!(!format!("{p:?}").contains("abcdefgh"));
        assert_eq!(k.expose(), "card:NO-2390700:98765");
    }

    #[test]
    fn public_ids_print_themselves() {
        let i = InstitutionId::from("NO-2390700");
        assert_eq!(i.to_string(), "NO-2390700");
        assert_eq!(format!("{i:?}"), "\"NO-2390700\"");
    }
}
