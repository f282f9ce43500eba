//! hpk-bubble: the rootless container on each node that holds the node's network services.
//!
//! The host side (`start`) runs as the job's user: it checks the node, starts the bubble
//! (a user + network + mount + PID namespace by `unshare`, or an Apptainer instance), gives
//! it an uplink (slirp4netns or pasta) with the host's port forwards, waits for it to be
//! ready, publishes its record in the shared directory and tears everything down on
//! SIGTERM. Inside, `init` is PID 1: mounts, forwarding, the host's address on the uplink,
//! etcd on the controller, hpk-netd everywhere, K3s when installed, restarted when they die.
//!
//! Modules, each using only those before it:
//! - [`tools`], [`signals`], [`child`]: programs we need, signals, supervised children.
//! - [`pki`]: the cluster's etcd CA and certificates.
//! - [`gpus`]: the GPUs Slurm gave the bubble, handed to what runs in it.
//! - [`record`]: the shared directory: one record per ready bubble, logs.
//! - [`host`]: the node: its address, link MTU, free ports.
//! - [`uplink`]: slirp4netns and pasta, with checked port forwards.
//! - [`holder`]: the namespaces (unshare) or the Apptainer instance.
//! - [`init`]: PID 1 inside the bubble.
//! - [`start`], [`enter`], [`commands`]: the subcommands.

pub mod tools;

pub mod signals;

pub mod child;

pub mod cli;

pub mod pki;

pub mod gpus;

pub mod record;

pub mod host;

pub mod uplink;

pub mod holder;

pub mod init;

pub mod start;

pub mod enter;

pub mod commands;
