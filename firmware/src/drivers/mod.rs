//! Sensor drivers, one per file, generic over embedded-hal 1.0 and the [`crate::hal`] traits.
