//! The global allocator wrapper that enforces no allocation after fork.
