//! Tianzhong simulated sensor fleet.
//!
//! # Module map
//!
//! Nothing is implemented yet; virtual nodes that run the firmware crate's node core land with
//! their own issue.
