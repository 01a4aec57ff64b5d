//! A user's own sessions (SPEC section 5, `/auth/sessions`): listing the active ones and
//! ending one or all but the current.
//!
//! Owns: which sessions a caller may see and end (only their own, only active ones), and
//! that an ended session stops working on this replica at once (its cache entry is evicted,
//! like a logout). Must not touch: HTTP (the views are built by `endpoints`).

use super::{AccountError, Accounts, Caller};
use crate::store::{Session, StoreError, UnixMillis};

impl Accounts {
    /// `GET /auth/sessions`: the caller's active sessions, most recently used first. The
    /// session the request came with is marked used now first, so the list shows it as the
    /// one in use. (Refresh rotations set `last_used_at` at once; other authenticated
    /// requests are noted by the auth cache and written in batches every few seconds.)
    pub async fn list_sessions(
        &self,
        caller: &Caller,
        now: UnixMillis,
    ) -> Result<Vec<Session>, AccountError> {
        if let Some(sid) = caller.session_id() {
            match self.store.touch_session(sid, now).await {
                // Ended meanwhile: the list below simply does not show it.
                Ok(()) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self
            .store
            .list_active_sessions(&caller.user.id, now)
            .await?)
    }

    /// `DELETE /auth/sessions/{id}`: ends one of the caller's active sessions (the current
    /// one too: that is a logout). Another user's session, an unknown or an ended one is
    /// `NotFound`, indistinguishably.
    pub async fn end_session(
        &self,
        caller: &Caller,
        id: &str,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        let owned_and_active = self
            .store
            .get_session(id)
            .await?
            .is_some_and(|s| s.user_id == caller.user.id && s.is_active(now));
        if !owned_and_active {
            return Err(AccountError::NotFound);
        }
        let result = match self
            .store
            .revoke_session(id, Some(&caller.user.id), now)
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::NotFound) => Err(AccountError::NotFound),
            Err(e) => Err(e.into()),
        };
        // Immediately on this replica (SPEC section 3), as after a logout.
        self.auth.cache().evict_session(id).await;
        result
    }

    /// `DELETE /auth/sessions`: ends every session of the caller but the current one (an
    /// API key has none, so all of them end). Returns how many ended.
    pub async fn end_other_sessions(
        &self,
        caller: &Caller,
        now: UnixMillis,
    ) -> Result<u64, AccountError> {
        self.revoke_sessions(&caller.user.id, caller.session_id(), now)
            .await
    }
}
