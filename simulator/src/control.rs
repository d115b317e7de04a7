//! The control interface: HTTP on loopback and an in-process handle.
