//! Authentication: credentials, tokens and the keys that sign them.

pub mod jwt;
pub mod password;
pub mod signing;
