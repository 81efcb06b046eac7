//! Throttle tests.
