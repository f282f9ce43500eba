//! hpktainer's OCI hooks, and what they share with hpk-netd: the control protocol and a
//! small blocking client. Nothing here pulls in an async runtime: the hook runs on every
//! container start.

pub mod client;
pub mod hook;
pub mod names;
pub mod ports;
pub mod proto;
pub mod report;
