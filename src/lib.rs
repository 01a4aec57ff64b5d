//! Gatehouse: an edge authentication gateway.
//!
//! One binary, one YAML file: it routes requests by host, path prefix and method, and
//! streams them to upstreams with the operational basics (metrics, access logs, reload,
//! graceful drain). Module map and dependency direction: `DESIGN.md` in the shared folder;
//! imports only go down the layers listed there.

pub mod accounts;
pub mod auth;
pub mod body;
pub mod cache;
pub mod cli;
pub mod config;
pub mod echo;
pub mod endpoints;
pub mod mail;
pub mod metrics;
pub mod netio;
pub mod oauth;
pub mod outbound;
pub mod pool;
pub mod principal;
pub mod problem;
pub mod proxy;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
