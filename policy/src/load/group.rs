//! `[[group]]`: id, name and member institutions.

use crate::ids::InstitutionId;
use crate::model::Group;

use super::raw::Raw;
use super::toolkit::{Checker, Table};

const GROUP_KEYS: &[&str] = &["id", "name", "members"];

impl Checker<'_> {
    pub(super) fn group(&mut self, t: &mut Table<'_, '_>, raw: &mut Raw) {
        let id = self.req_str(t, "id");
        if let Some((id, _)) = &id {
            t.what = format!("group \"{id}\"");
            raw.known_groups.insert(id.clone());
        }
        self.unknown_keys(t, GROUP_KEYS);
        if let Some((id, loc)) = &id
            && !is_group_slug(id)
        {
            self.error_at(
                *loc,
                format!(
                    "{}: a group id is a lower-case slug (a-z, 0-9 and -, not starting or \
                     ending with -)",
                    t.what
                ),
            );
        }
        let name = self.req_str(t, "name");
        let members = if t.get("members").is_none() {
            self.missing(t, "members");
            None
        } else {
            self.opt_str_array(t, "members")
        };
        if let Some(m) = &members
            && m.is_empty()
        {
            self.warn_at(t.loc(), format!("{}: the group has no members", t.what));
        }
        let (Some((id, _)), Some((name, _)), Some(members)) = (id, name, members) else {
            return;
        };
        let (names, locs): (Vec<_>, Vec<_>) = members.into_iter().unzip();
        raw.groups.push((
            t.loc(),
            Group {
                id,
                name,
                members: names.into_iter().map(InstitutionId::new).collect(),
            },
            locs,
        ));
    }
}

pub(super) fn is_group_slug(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}
