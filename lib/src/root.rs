//! The root process: one poll loop that forks, reaps and restarts daemons.
