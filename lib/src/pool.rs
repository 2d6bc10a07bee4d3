//! A fixed-block allocator inside a region, with ownership that survives crashes.
