//! Scenario files: TOML in, a checked [`FleetSpec`](crate::spec::FleetSpec) out.
