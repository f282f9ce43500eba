//! The kernel and the OS, each behind a small safe type: taps, netlink (links, addresses,
//! routes, neighbours, vxlan), network namespaces, processes and pidfds, UNIX sockets,
//! iptables, and the file and permission helpers the layers above share.

pub mod fd_passing;
pub mod firewall;
pub mod fs;
pub mod netlink;
pub mod netns;
pub mod nft_generation;
pub mod pidwatch;
pub mod poll;
pub mod process;
pub mod tap;
pub mod unix_socket;
pub mod users;
