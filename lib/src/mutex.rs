//! A process-shared robust mutex and a seqlock for one-writer, many-reader state.
