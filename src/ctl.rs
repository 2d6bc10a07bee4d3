//! `forkroot ctl`: talks to a running root over its control socket.
