//! `forkroot`: the stock binary, the command line of the library with the
//! built-in daemons (`forkroot-daemons`) as its kinds.

forkroot::main!(forkroot_daemons::registry());
