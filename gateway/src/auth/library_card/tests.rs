//! Library card backend tests.
