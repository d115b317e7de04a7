//! Reading one device from the command line.
