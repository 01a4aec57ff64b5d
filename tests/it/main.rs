//! Integration tests: one binary, real servers on loopback (DESIGN "tests/it").

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod architecture;
mod auth;
mod check;
mod forward_auth;
mod lifecycle;
mod mfa;
mod operations;
mod protocols;
mod proxy;
mod replicas;
mod streaming;
mod support;
mod trusted;
