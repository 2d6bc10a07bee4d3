//! Atomic checkpoints of a daemon's state: two slots, sequence numbers, crc32.
