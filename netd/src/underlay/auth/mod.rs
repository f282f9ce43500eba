//! Who may write into the overlay: the cluster's key.

pub mod key;
