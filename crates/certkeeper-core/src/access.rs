//! Who may do what: the permissions of API tokens and the team a token acts for.
//! Pure decisions; the server looks tokens up and asks these functions.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One thing a scoped API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Listings, certificates, endpoints, requests, CAs, export without the key.
    Read,
    /// Import certificates (and their keys).
    Import,
    /// Server-kept requests (key and CSR made by the server), ACME orders, renewals.
    Request,
    /// Issuance by an internal CA.
    Issue,
    /// Export with the private key.
    ExportKey,
    /// Deploy managed certificates through agents, and see those deployments.
    Deploy,
    /// Everything, including settings, tokens, CAs and agents.
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 7] = [
        Permission::Read,
        Permission::Import,
        Permission::Request,
        Permission::Issue,
        Permission::ExportKey,
        Permission::Deploy,
        Permission::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Import => "import",
            Permission::Request => "request",
            Permission::Issue => "issue",
            Permission::ExportKey => "export_key",
            Permission::Deploy => "deploy",
            Permission::Admin => "admin",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// Not one of the permission names.
    #[error(
        "unknown permission {0:?} (known: read, import, request, issue, export_key, deploy, admin)"
    )]
    UnknownPermission(String),
    /// A token must be able to do something.
    #[error("a token needs at least one permission")]
    NoPermissions,
    /// `admin` reaches tokens and settings server-wide; it cannot be limited to a team.
    #[error("admin is server-wide; a team token cannot hold it")]
    AdminInTeam,
    /// Team and token names are short and plain.
    #[error("{0}")]
    BadName(String),
}

impl FromStr for Permission {
    type Err = AccessError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == t)
            .ok_or_else(|| AccessError::UnknownPermission(t.to_string()))
    }
}

/// A set of permissions; `admin` implies every other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions(BTreeSet<Permission>);

impl Permissions {
    /// Everything (the bootstrap administrator token).
    pub fn admin() -> Self {
        Permissions([Permission::Admin].into())
    }

    /// Nothing (agents: they enroll and report, which no permission grants).
    pub fn none() -> Self {
        Permissions::default()
    }

    /// Whether the set grants `p`.
    pub fn allows(&self, p: Permission) -> bool {
        self.0.contains(&Permission::Admin) || self.0.contains(&p)
    }

    /// The permissions as given, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = Permission> + '_ {
        self.0.iter().copied()
    }

    /// Comma-separated, in a fixed order (how the store keeps them).
    pub fn to_list(&self) -> String {
        self.iter()
            .map(Permission::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parse `read,import`; blanks between commas are ignored, duplicates merged.
    pub fn parse_list(s: &str) -> Result<Self, AccessError> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Permissions)
    }
}

impl FromIterator<Permission> for Permissions {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        Permissions(iter.into_iter().collect())
    }
}

/// A token or team name: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn check_name(what: &str, name: &str) -> Result<(), AccessError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(AccessError::BadName(format!(
            "a {what} name is 1 to 64 letters, digits, -, _ or ."
        )));
    }
    Ok(())
}

/// Check what a new token would hold: at least one permission, `admin` only server-wide.
pub fn check_token(
    name: &str,
    team: Option<&str>,
    permissions: &Permissions,
) -> Result<(), AccessError> {
    check_name("token", name)?;
    if let Some(t) = team {
        check_name("team", t)?;
    }
    if permissions.0.is_empty() {
        return Err(AccessError::NoPermissions);
    }
    if team.is_some() && permissions.0.contains(&Permission::Admin) {
        return Err(AccessError::AdminInTeam);
    }
    Ok(())
}

/// Whether a caller acting for `caller_team` may act on a record owned by
/// `owner_team`: server-wide callers (no team) act on everything; a team's token only
/// on that team's records, never on records of another team or of no team.
pub fn may_act_on(caller_team: Option<&str>, owner_team: Option<&str>) -> bool {
    match caller_team {
        None => true,
        Some(t) => owner_team == Some(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_everything_and_others_only_themselves() {
        let admin = Permissions::admin();
        for p in Permission::ALL {
            assert!(admin.allows(p), "{p}");
        }
        let some = Permissions::parse_list("read, export_key,read").unwrap();
        assert_eq!(some.to_list(), "read,export_key");
        assert!(some.allows(Permission::Read) && some.allows(Permission::ExportKey));
        assert!(!some.allows(Permission::Import) && !some.allows(Permission::Admin));
        assert!(!Permissions::none().allows(Permission::Read));
        assert!(admin.allows(Permission::Deploy));
        assert!(!some.allows(Permission::Deploy));
    }

    #[test]
    fn deploy_is_a_stable_name() {
        assert_eq!(Permission::Deploy.as_str(), "deploy");
        assert_eq!("deploy".parse::<Permission>(), Ok(Permission::Deploy));
        let p = Permissions::parse_list("read,deploy").unwrap();
        assert!(p.allows(Permission::Deploy) && !p.allows(Permission::Admin));
        assert!(check_token("deployer", Some("web"), &p).is_ok());
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(p));
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::json!(p.as_str())
            );
        }
        assert_eq!(
            Permissions::parse_list("read,write"),
            Err(AccessError::UnknownPermission("write".into()))
        );
    }

    #[test]
    fn tokens_are_checked() {
        let p = |s| Permissions::parse_list(s).unwrap();
        assert!(check_token("ci", Some("web"), &p("read,import")).is_ok());
        assert!(check_token("root", None, &p("admin")).is_ok());
        assert_eq!(
            check_token("x", Some("web"), &p("admin")),
            Err(AccessError::AdminInTeam)
        );
        assert_eq!(
            check_token("x", None, &p("")),
            Err(AccessError::NoPermissions)
        );
        assert!(check_token("has space", None, &p("read")).is_err());
        assert!(check_token("ok", Some("web/../x"), &p("read")).is_err());
        assert!(check_token(&"a".repeat(65), None, &p("read")).is_err());
    }

    #[test]
    fn teams_act_on_their_own_records_only() {
        assert!(may_act_on(None, None));
        assert!(may_act_on(None, Some("web")));
        assert!(may_act_on(Some("web"), Some("web")));
        assert!(!may_act_on(Some("web"), Some("db")));
        assert!(!may_act_on(Some("web"), None));
    }
}
