//! Shared helpers for iketcp end-to-end tests.
