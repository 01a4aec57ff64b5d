//! Integration tests: one binary, real servers on loopback (DESIGN "tests/it").

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod admin;
mod architecture;
mod auth;
mod check;
mod forward_auth;
mod invitations;
mod lifecycle;
mod mfa;
mod oauth;
mod on_redis;
mod operations;
mod protocols;
mod proxy;
mod replicas;
mod sessions;
mod shared_limits;
mod streaming;
mod support;
mod trusted;
