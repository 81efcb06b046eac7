//! The subject: all the decision ever sees of a person.
//!
//! Every login method (library card, Feide, walk-in) ends in one [`Subject`]. Ages are kept
//! as the login gave them (an exact birth date, a birth year, or nothing) and turned into
//! whole years only against a given day, so a birthday is honoured on the day itself.

use std::fmt;

use jiff::civil::Date;

use crate::ids::{InstitutionId, SubjectKey};

/// How the person relates to their institution. Also the `affiliation` release attribute
/// and a statistics dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Affiliation {
    /// Logged in with a library card.
    Patron,
    /// Feide, eduPersonAffiliation has `student`.
    Student,
    /// Feide, eduPersonAffiliation has `employee`, `faculty` or `staff` (and not `student`).
    Staff,
    /// Not logged in, on an on-site network of a walk-in institution.
    WalkIn,
}

impl Affiliation {
    pub const ALL: [Affiliation; 4] = [Self::Patron, Self::Student, Self::Staff, Self::WalkIn];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patron => "patron",
            Self::Student => "student",
            Self::Staff => "staff",
            Self::WalkIn => "walk_in",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Bit for [`crate::Audience`] sets.
    pub(crate) fn bit(self) -> u8 {
        match self {
            Self::Patron => 1,
            Self::Student => 2,
            Self::Staff => 4,
            Self::WalkIn => 8,
        }
    }
}

impl fmt::Display for Affiliation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known of a person's age. `Debug` hides the birth date: it is personal data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Age {
    BirthDate(Date),
    BirthYear(i16),
    Unknown,
}

impl fmt::Debug for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BirthDate(_) => f.write_str("BirthDate(<redacted>)"),
            Self::BirthYear(_) => f.write_str("BirthYear(<redacted>)"),
            Self::Unknown => f.write_str("Unknown"),
        }
    }
}

/// An age as an inclusive range of whole years, on a given day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgeRange {
    pub low: i32,
    pub high: i32,
}

impl Age {
    /// Whole years on `today`. A person born on 29 February has their birthday on 1 March in
    /// other years: comparing (month, day) pairs gives exactly that, since (2, 28) < (2, 29)
    /// < (3, 1). With a birth year only, the age is `today.year − year − 1 ..= today.year −
    /// year`. A birth date or year after today is garbage from the library system and gives
    /// `None`, as an unknown age does.
    pub fn range_on(self, today: Date) -> Option<AgeRange> {
        let range = match self {
            Age::Unknown => return None,
            Age::BirthDate(born) => {
                let mut years = i32::from(today.year()) - i32::from(born.year());
                if (today.month(), today.day()) < (born.month(), born.day()) {
                    years -= 1;
                }
                AgeRange {
                    low: years,
                    high: years,
                }
            }
            Age::BirthYear(year) => {
                let high = i32::from(today.year()) - i32::from(year);
                AgeRange {
                    low: (high - 1).max(0),
                    high,
                }
            }
        };
        (range.high >= 0 && range.low >= 0).then_some(range)
    }
}

/// A logged-in person, or a walk-in visitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub key: SubjectKey,
    pub affiliation: Affiliation,
    /// Home institution first. Ids, the bare library number and aliases all resolve.
    pub institutions: Vec<InstitutionId>,
    pub age: Age,
}

impl Subject {
    /// The anonymous on-site visitor; the decision gives it only the on-site institution.
    pub fn walk_in() -> Self {
        Self {
            key: SubjectKey::new("walk-in"),
            affiliation: Affiliation::WalkIn,
            institutions: Vec::new(),
            age: Age::Unknown,
        }
    }
}

/// Card numbers are compared without surrounding spaces and with letters in upper case.
pub fn normalize_card(card: &str) -> String {
    card.trim().to_uppercase()
}

/// `N` followed by nine digits: the national library card (Bibliotekkortet), valid at every
/// library.
pub fn is_national_card(normalized: &str) -> bool {
    let b = normalized.as_bytes();
    b.len() == 10 && b[0] == b'N' && b[1..].iter().all(u8::is_ascii_digit)
}

/// The subject key of a library card checked against `institution`'s library system.
pub fn card_subject_key(institution: &InstitutionId, card: &str) -> SubjectKey {
    let card = normalize_card(card);
    if is_national_card(&card) {
        SubjectKey::new(format!("card:NO:{card}"))
    } else {
        SubjectKey::new(format!("card:{institution}:{card}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn age_counts_whole_years_and_birthday_is_the_day_itself() {
        let a = Age::BirthDate(date(2008, 11, 23));
        assert_eq!(a.range_on(date(2026, 11, 22)).map(|r| r.low), Some(17));
        assert_eq!(a.range_on(date(2026, 11, 23)).map(|r| r.low), Some(18));
    }

    #[test]
    fn leap_day_birthday_is_first_of_march_in_other_years() {
        let a = Age::BirthDate(date(2008, 2, 29));
        assert_eq!(a.range_on(date(2026, 2, 28)).map(|r| r.low), Some(17));
        assert_eq!(a.range_on(date(2026, 3, 1)).map(|r| r.low), Some(18));
        // In a leap year the birthday is 29 February itself.
        assert_eq!(a.range_on(date(2028, 2, 28)).map(|r| r.low), Some(19));
        assert_eq!(a.range_on(date(2028, 2, 29)).map(|r| r.low), Some(20));
    }

    #[test]
    fn birth_year_gives_a_two_year_range() {
        let a = Age::BirthYear(2008);
        assert_eq!(
            a.range_on(date(2026, 6, 1)),
            Some(AgeRange { low: 17, high: 18 })
        );
    }

    #[test]
    fn future_birth_dates_are_unknown() {
        assert_eq!(
            Age::BirthDate(date(2030, 1, 1)).range_on(date(2026, 1, 1)),
            None
        );
        assert_eq!(Age::BirthYear(2027).range_on(date(2026, 1, 1)), None);
        assert_eq!(Age::Unknown.range_on(date(2026, 1, 1)), None);
    }

    #[test]
    fn national_card_keys_are_national() {
        let inst = InstitutionId::from("NO-2390700");
        assert_eq!(
            card_subject_key(&inst, " n123456789 ").expose(),
            "card:NO:N123456789"
        );
        assert_eq!(
            card_subject_key(&inst, " ab12 ").expose(),
            "card:NO-2390700:AB12"
        );
        assert!(!is_national_card("N12345678"));
        assert!(!is_national_card("N1234567890"));
    }

    #[test]
    fn age_debug_is_redacted() {
        assert!(!format!("{:?}", Age::BirthDate(date(2001, 5, 17))).contains("2001"));
    }
}
