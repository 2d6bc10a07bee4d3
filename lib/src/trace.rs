//! A `tracing` layer that writes events into the flight recorder without allocating.
