//! Modbus RTU buses on pseudo-terminals.
