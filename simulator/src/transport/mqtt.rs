//! MQTT clients publishing telemetry and status.
