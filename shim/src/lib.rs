//! hpktainer: run containers on a bubble's overlay network (hpk-netd), with runc, crun,
//! Apptainer or SingularityCE, and set up hpktainer's OCI hooks for every runtime.

pub mod bundle;
pub mod cli;
pub mod commands;
pub mod environment;
pub mod hookset;
pub mod image;
pub mod netd;
pub mod paths;
pub mod rootfs;
pub mod rootless;
pub mod runtime;
pub mod signals;
pub mod state;
pub mod sweep;
pub mod tool;
pub mod userspec;
