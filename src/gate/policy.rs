//! Who may call the ML backend: the identity Label Studio reported for a credential
//! (`GET /api/current-user/whoami`), judged against the configured organizations and users.

use std::{fmt, str::FromStr};

use serde::Deserialize;

/// The user a credential belongs to, as Label Studio's whoami answer names them.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct Identity {
    /// The user's id.
    pub id: u64,
    /// The user's email (Label Studio's login name).
    #[serde(default)]
    pub email: String,
    /// The user's username.
    #[serde(default)]
    pub username: String,
    /// The organization the user is working in (`active_organization`).
    #[serde(default, rename = "active_organization")]
    pub organization: Option<u64>,
}

/// Names only the user id: emails are personal data and stay out of logs.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("organization", &self.organization)
            .finish_non_exhaustive()
    }
}

/// A user admitted by `--gate-allow-user`: a user id, or an email (compared case-insensitively,
/// as Label Studio's login does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A user id.
    Id(u64),
    /// An email, lowercased.
    Email(String),
}

impl FromStr for Subject {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Subject::Id)
                .map_err(|_| format!("user id {s:?} is too large"));
        }
        let at = s.find('@');
        let ok = at.is_some_and(|i| i > 0 && i + 1 < s.len())
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(Subject::Email(s.to_lowercase()))
        } else {
            Err(format!(
                "{s:?} is neither a user id (digits) nor an email address"
            ))
        }
    }
}

/// Whom the gate admits: users of the given organizations, and the given users (the union).
#[derive(Debug, Clone)]
pub struct Policy {
    organizations: Vec<u64>,
    users: Vec<Subject>,
}

/// No policy was configured.
#[derive(Debug, thiserror::Error)]
#[error("the gate admits nobody: set --gate-allow-org (LS_GATE_ALLOW_ORGS) and/or --gate-allow-user (LS_GATE_ALLOW_USERS)")]
pub struct EmptyPolicy;

impl Policy {
    /// A policy; empty is refused (there is no "any valid Label Studio user" default: a gate
    /// in front of a model is for one organization's users, and saying which is required).
    pub fn new(organizations: Vec<u64>, users: Vec<Subject>) -> Result<Self, EmptyPolicy> {
        if organizations.is_empty() && users.is_empty() {
            return Err(EmptyPolicy);
        }
        Ok(Policy {
            organizations,
            users,
        })
    }

    /// Whether `who` may call the backend.
    pub fn admits(&self, who: &Identity) -> bool {
        if who
            .organization
            .is_some_and(|o| self.organizations.contains(&o))
        {
            return true;
        }
        self.users.iter().any(|s| match s {
            Subject::Id(id) => *id == who.id,
            Subject::Email(e) => !who.email.is_empty() && who.email.to_lowercase() == *e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(id: u64, email: &str, org: Option<u64>) -> Identity {
        Identity {
            id,
            email: email.into(),
            username: String::new(),
            organization: org,
        }
    }

    #[test]
    fn subjects_parse_strictly() {
        assert_eq!("42".parse::<Subject>(), Ok(Subject::Id(42)));
        assert_eq!(
            "Ann@Example.org".parse::<Subject>(),
            Ok(Subject::Email("ann@example.org".into()))
        );
        for bad in [
            "",
            "ann",
            "@example.org",
            "ann@",
            "a nn@x.org",
            "-1",
            "99999999999999999999999",
        ] {
            assert!(bad.parse::<Subject>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn organizations_and_users_are_a_union() {
        let p = Policy::new(
            vec![1],
            vec![Subject::Id(7), Subject::Email("bo@x.org".into())],
        )
        .unwrap();
        assert!(p.admits(&who(3, "c@x.org", Some(1))));
        assert!(p.admits(&who(7, "", Some(2))));
        assert!(p.admits(&who(9, "BO@x.org", None)));
        assert!(!p.admits(&who(9, "c@x.org", Some(2))));
        assert!(!p.admits(&who(9, "", None)));
    }

    #[test]
    fn an_empty_policy_is_refused() {
        assert!(Policy::new(vec![], vec![]).is_err());
    }

    #[test]
    fn whoami_answers_parse_and_debug_hides_the_email() {
        let w: Identity = serde_json::from_str(
            r#"{"id":5,"email":"a@b.c","username":"a","active_organization":3,"permissions":[]}"#,
        )
        .unwrap();
        assert_eq!(
            w,
            Identity {
                username: "a".into(),
                ..who(5, "a@b.c", Some(3))
            }
        );
        assert!(!format!("{w:?}").contains("a@b.c"));
        let w: Identity = serde_json::from_str(r#"{"id":5,"active_organization":null}"#).unwrap();
        assert_eq!(w.organization, None);
    }
}
