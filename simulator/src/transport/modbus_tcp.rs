//! Modbus TCP listeners.
