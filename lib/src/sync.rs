//! One shim for atomics and `UnsafeCell`, so loom can replace them in model checks.
