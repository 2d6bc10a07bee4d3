//! Typed `#[repr(C)]` views of a region behind a versioned header.
