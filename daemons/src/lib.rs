//! The daemons built into the forkroot binary.
