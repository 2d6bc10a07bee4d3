//! The daemon API: what a daemon author implements and what it is given.
