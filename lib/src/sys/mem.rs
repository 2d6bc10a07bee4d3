//! Advice to the kernel about memory this process maps.

use super::{cvt, page_size};
use std::io;

/// `madvise(MADV_REMOVE)`: frees the pages under `range` and their backing
/// store; the bytes then read as zeroes. Works on shared mappings (memfd,
/// tmpfs, `MAP_SHARED` files); on others it fails (`EINVAL`, `EOPNOTSUPP`)
/// and changes nothing. Fork-safe.
///
/// `range` must start on a page boundary and be a whole number of pages
/// long, or this fails with `EINVAL` (the kernel would otherwise round the
/// length up and free bytes past the slice).
pub fn remove(range: &mut [u8]) -> io::Result<()> {
    let page = page_size();
    if range.as_ptr() as usize % page != 0 || range.len() % page != 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: the range is exactly the pages of `range`, which we borrow
    // mutably, so discarding their contents (they read back as zeroes)
    // affects no live Rust value but these bytes.
    cvt(unsafe { libc::madvise(range.as_mut_ptr().cast(), range.len(), libc::MADV_REMOVE) })?;
    Ok(())
}
