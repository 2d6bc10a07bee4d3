//! The only place that calls libc and nix: thin, checked wrappers.
