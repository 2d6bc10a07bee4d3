//! Regions: the shared memory the root preallocates for each daemon.
