//! Integration tests: one binary, real servers on loopback (DESIGN "tests/it").

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod architecture;
mod auth;
mod check;
mod forward_auth;
mod lifecycle;
mod oauth;
mod operations;
mod protocols;
mod proxy;
mod streaming;
mod support;
mod trusted;
