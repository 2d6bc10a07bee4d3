//! Bounded rings in shared memory: single- and multi-producer, crash-safe.
