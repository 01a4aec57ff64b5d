//! User management by administrators (SPEC section 5, `/auth/admin/users[/{id}]`): listing
//! with filters and cursor pagination, reading, changing roles, name and the disabled flag,
//! and deleting.
//!
//! Owns: what an admin change does beyond the record: disabling ends every session and
//! revokes every API key of the user; any change evicts the user from the proxy path's cache
//! so the next request sees it (new roles in `X-User-Roles`, a disabled account refused);
//! and the last enabled admin cannot be demoted, disabled or deleted, so an installation
//! cannot lock itself out over HTTP. Who counts as an admin is [`Accounts::is_admin`];
//! callers check it. Must not touch: HTTP.

use super::validate::{self, FieldIssue};
use super::{AccountError, Accounts, valid_role};
use crate::store::{MAX_PAGE, StoreError, UnixMillis, User, UserPage, UserPatch, UserQuery};

/// Page size of `GET /auth/admin/users` without `limit`.
pub const DEFAULT_USERS_PAGE: usize = 50;
/// Largest `limit` of `GET /auth/admin/users`.
pub const MAX_USERS_PAGE: usize = 200;

/// `GET /auth/admin/users`'s query.
#[derive(Debug, Clone, Default)]
pub struct UserListing {
    /// Only users whose email contains this.
    pub email: Option<String>,
    /// Only users holding this role.
    pub role: Option<String>,
    /// Where to continue (a `next_cursor` of an earlier page).
    pub cursor: Option<String>,
    /// Page size, `1..=`[`MAX_USERS_PAGE`]; default [`DEFAULT_USERS_PAGE`].
    pub limit: Option<usize>,
}

/// `PATCH /auth/admin/users/{id}`'s input: `None` leaves a field alone; `name: Some(None)`
/// clears the name.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub roles: Option<Vec<String>>,
    pub disabled: Option<bool>,
    pub name: Option<Option<String>>,
}

impl UserChange {
    fn is_empty(&self) -> bool {
        self.roles.is_none() && self.disabled.is_none() && self.name.is_none()
    }
}

/// Whether `user` counts toward keeping the installation administrable.
fn is_enabled_admin(user: &User) -> bool {
    !user.disabled && user.roles.iter().any(|r| r == "admin")
}

/// The issues of a listing query, all at once.
fn listing_issues(listing: &UserListing) -> Vec<FieldIssue> {
    let mut issues = Vec::new();
    if listing
        .limit
        .is_some_and(|l| !(1..=MAX_USERS_PAGE).contains(&l))
    {
        issues.push(FieldIssue::invalid(
            "limit",
            format!("must be 1 to {MAX_USERS_PAGE}"),
        ));
    }
    if listing.role.as_deref().is_some_and(|r| !valid_role(r)) {
        issues.push(FieldIssue::invalid("role", "is not a valid role name"));
    }
    if listing
        .email
        .as_deref()
        .is_some_and(|e| e.len() > 254 || e.chars().any(char::is_control))
    {
        issues.push(FieldIssue::invalid(
            "email",
            "must be at most 254 characters without control characters",
        ));
    }
    issues
}

/// The issues of a change, all at once.
fn change_issues(change: &UserChange) -> Vec<FieldIssue> {
    let mut issues = Vec::new();
    if let Some(roles) = &change.roles {
        if roles.is_empty() {
            issues.push(FieldIssue::invalid("roles", "must name at least one role"));
        } else if let Some(bad) = roles.iter().find(|r| !valid_role(r)) {
            issues.push(FieldIssue::invalid(
                "roles",
                format!(
                    "{bad:?} is not a valid role name (1 to 64 of letters, digits, '_', '-', '.', ':')"
                ),
            ));
        }
    }
    if let Some(Some(name)) = &change.name {
        validate::name(name, &mut issues);
    }
    issues
}

impl Accounts {
    /// `GET /auth/admin/users`: one page of users, oldest first, filtered by email substring
    /// and role.
    pub async fn list_users(&self, listing: UserListing) -> Result<UserPage, AccountError> {
        let issues = listing_issues(&listing);
        if !issues.is_empty() {
            return Err(AccountError::Invalid(issues));
        }
        let query = UserQuery {
            email_contains: listing.email.filter(|e| !e.trim().is_empty()),
            role: listing.role,
            cursor: listing.cursor.filter(|c| !c.is_empty()),
            limit: listing.limit.unwrap_or(DEFAULT_USERS_PAGE).min(MAX_PAGE),
        };
        match self.store.list_users(&query).await {
            Ok(page) => Ok(page),
            Err(StoreError::InvalidCursor) => {
                Err(AccountError::Invalid(vec![FieldIssue::invalid(
                    "cursor",
                    "is not a cursor this API returned",
                )]))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `PATCH /auth/admin/users/{id}`: new roles, name or disabled flag. Disabling ends the
    /// user's sessions and revokes their API keys; every change reaches the proxy path on
    /// this replica at once.
    pub async fn change_user(
        &self,
        id: &str,
        change: UserChange,
        now: UnixMillis,
    ) -> Result<User, AccountError> {
        let issues = change_issues(&change);
        if !issues.is_empty() {
            return Err(AccountError::Invalid(issues));
        }
        let user = self.user_by_id(id).await?;
        if change.is_empty() {
            return Ok(user);
        }
        let stays_admin = !change.disabled.unwrap_or(user.disabled)
            && change
                .roles
                .as_ref()
                .unwrap_or(&user.roles)
                .iter()
                .any(|r| r == "admin");
        if is_enabled_admin(&user) && !stays_admin && !self.another_enabled_admin(id).await? {
            let field = if change.disabled == Some(true) {
                "disabled"
            } else {
                "roles"
            };
            return Err(AccountError::Invalid(vec![FieldIssue::invalid(
                field,
                "the last enabled admin must keep the admin role and stay enabled",
            )]));
        }
        let patch = UserPatch {
            roles: change.roles,
            disabled: change.disabled,
            name: change.name,
            ..UserPatch::default()
        };
        let updated = match self.store.update_user(id, &patch, now).await {
            Ok(u) => u,
            Err(StoreError::NotFound) => return Err(AccountError::NotFound),
            Err(StoreError::Conflict { field }) => return Err(AccountError::Taken(field)),
            Err(e) => return Err(e.into()),
        };
        // A disabled user is refused from here on even before the revocations below (the
        // authenticator checks the flag); evicting makes new roles visible at once too.
        self.auth.cache().evict_user(id).await;
        if change.disabled == Some(true) {
            self.revoke_sessions(id, None, now).await?;
            let keys = self.store.list_api_keys(id).await?;
            self.store.revoke_user_api_keys(id, now).await?;
            for k in keys {
                self.auth.cache().evict_api_key(&k.key_hash).await;
            }
        }
        Ok(updated)
    }

    /// `DELETE /auth/admin/users/{id}/mfa`: turns the user's second factor off (lost device
    /// and recovery codes) and voids their pending `mfa_token`s; their sessions stay, the
    /// next sign-in needs only the first factor. The user can enrol again.
    pub async fn reset_mfa(&self, id: &str, now: UnixMillis) -> Result<User, AccountError> {
        self.user_by_id(id).await?;
        let patch = UserPatch {
            mfa: Some(None),
            ..UserPatch::default()
        };
        let updated = match self.store.update_user(id, &patch, now).await {
            Ok(u) => u,
            Err(StoreError::NotFound) => return Err(AccountError::NotFound),
            Err(e) => return Err(e.into()),
        };
        self.store
            .delete_one_time_tokens(id, crate::store::OneTimeKind::MfaPending)
            .await?;
        self.auth.cache().evict_user(id).await;
        tracing::info!(target: "gatehouse::accounts", user = %id, "MFA turned off by an admin");
        Ok(updated)
    }

    /// `DELETE /auth/admin/users/{id}`: the user and everything it owns, as when the user
    /// deletes their own account.
    pub async fn remove_user(&self, id: &str, now: UnixMillis) -> Result<(), AccountError> {
        let user = self.user_by_id(id).await?;
        if is_enabled_admin(&user) && !self.another_enabled_admin(id).await? {
            return Err(AccountError::Invalid(vec![FieldIssue::invalid(
                "id",
                "is the last enabled admin, who cannot be deleted",
            )]));
        }
        self.purge_user(id, now).await
    }

    /// Whether an enabled admin other than `except` exists. (Two admins demoting each
    /// other at the same instant can both pass this check; the CLI can always make a new
    /// admin.)
    async fn another_enabled_admin(&self, except: &str) -> Result<bool, AccountError> {
        let mut query = UserQuery {
            role: Some("admin".into()),
            limit: MAX_PAGE,
            ..UserQuery::default()
        };
        loop {
            let page = self.store.list_users(&query).await?;
            if page
                .users
                .iter()
                .any(|u| u.id != except && is_enabled_admin(u))
            {
                return Ok(true);
            }
            match page.next_cursor {
                Some(c) => query.cursor = Some(c),
                None => return Ok(false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(issues: &[FieldIssue]) -> Vec<&'static str> {
        issues.iter().map(|i| i.field).collect()
    }

    #[test]
    fn listing_limits_and_filters() {
        assert!(listing_issues(&UserListing::default()).is_empty());
        let ok = UserListing {
            limit: Some(MAX_USERS_PAGE),
            role: Some("billing:read".into()),
            email: Some("@example.com".into()),
            cursor: None,
        };
        assert!(listing_issues(&ok).is_empty());
        let bad = UserListing {
            limit: Some(0),
            role: Some("a,b".into()),
            email: Some("x\u{0}".into()),
            cursor: None,
        };
        assert_eq!(fields(&listing_issues(&bad)), ["limit", "role", "email"]);
        let too_many = UserListing {
            limit: Some(MAX_USERS_PAGE + 1),
            ..UserListing::default()
        };
        assert_eq!(fields(&listing_issues(&too_many)), ["limit"]);
    }

    #[test]
    fn change_rules() {
        assert!(UserChange::default().is_empty());
        let ok = UserChange {
            roles: Some(vec!["admin".into(), "user".into()]),
            disabled: Some(true),
            name: Some(None),
        };
        assert!(change_issues(&ok).is_empty() && !ok.is_empty());
        let bad = UserChange {
            roles: Some(vec!["user".into(), "has space".into()]),
            disabled: None,
            name: Some(Some("  ".into())),
        };
        assert_eq!(fields(&change_issues(&bad)), ["roles", "name"]);
        let none = UserChange {
            roles: Some(vec![]),
            ..UserChange::default()
        };
        assert_eq!(fields(&change_issues(&none)), ["roles"]);
    }

    #[test]
    fn enabled_admins() {
        let mut u = User {
            id: "u".into(),
            email: None,
            username: None,
            name: None,
            external_id: None,
            email_verified: false,
            roles: vec!["user".into(), "admin".into()],
            disabled: false,
            password_hash: None,
            mfa: None,
            created_at: 0,
            updated_at: 0,
        };
        assert!(is_enabled_admin(&u));
        u.disabled = true;
        assert!(!is_enabled_admin(&u));
        u.disabled = false;
        u.roles = vec!["administrator".into()];
        assert!(!is_enabled_admin(&u));
    }
}
