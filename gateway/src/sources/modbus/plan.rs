//! Read planning: which requests read a device's register map.
