//! The account-domain flows again, unchanged, on a Redis store (issue 5: "the same tests
//! for every backend"): each test below runs an existing test's body with every gateway it
//! starts using a private redis-server instead of a private SQLite file. The store suite
//! itself (src/store/conformance.rs) runs on both backends in the library's tests.

use crate::support::redis::RedisServer;
use crate::support::with_store;

/// One `#[test]` per listed test, named after it, running it on its own redis-server.
macro_rules! on_redis {
    ($($module:ident :: $test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let redis = RedisServer::start();
                with_store(&format!("{{ kind: redis, url: \"{}\" }}", redis.url()), || {
                    crate::$module::$test()
                });
                // The gateways really used it: the accounts are there.
                let keys = std::process::Command::new("redis-cli")
                    .args(["-p", &redis.port.to_string(), "--scan", "--pattern", "gatehouse:{acct}:u:*"])
                    .output()
                    .expect("redis-cli");
                assert!(!keys.stdout.is_empty(), "no user was stored in Redis");
            }
        )*
    };
}

on_redis!(
    accounts::register_login_me_logout,
    accounts::username_accounts_and_profile_changes,
    accounts::registration_errors,
    accounts::failed_logins_look_alike_and_the_sixth_is_limited,
    accounts::refresh_rotation_grace_and_reuse_detection,
    accounts::password_change_ends_other_sessions,
    accounts::deleting_the_account,
    accounts::restart_keeps_users_and_verifies_earlier_tokens,
    accounts::signing_key_rotation_keeps_old_tokens_valid,
    accounts::cli_creates_and_lists_users,
    sessions::list_and_end_sessions,
    admin::list_read_and_validate,
    admin::changes_reach_the_proxy_path_at_once,
    admin::the_last_admin_is_kept,
    invitations::invite_accept_and_single_use,
    invitations::invite_only_refuses_sign_up_but_takes_invitations,
    lifecycle::verify_and_reset_through_the_outbox,
    lifecycle::a_reset_link_works_exactly_once_under_concurrency,
    lifecycle::magic_link_sign_in,
    lifecycle::sign_up_conceals_existing_accounts,
    mfa::enrol_confirm_and_sign_in_with_a_second_factor,
    mfa::disable_needs_a_valid_code,
    mfa::one_code_wins_under_concurrency,
);
