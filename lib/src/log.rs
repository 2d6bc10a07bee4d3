//! The flight recorder: a per-process crash-surviving log ring in shared memory.
