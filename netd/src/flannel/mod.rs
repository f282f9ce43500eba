//! Speaking flannel: its network config, its lease format in etcd, its vxlan backend, and
//! an agent that uses them to take flanneld's place on a node.

pub mod agent;
pub mod lease;
pub mod netconfig;
pub mod vxlan;
