//! The table's bytes in the region, committed in place through the
//! library's undo journal ([`InPlace`]).
//!
//! `InPlace<T>` journals ranges of a `T` of a size known at compile time,
//! while the state's size is the daemon's `memory` setting. So the area is
//! a [`Blob`] of one of a ladder of sizes (4, 5, 6, 7 x 2^k bytes: at most
//! about a fifth of the state is left unused), chosen at start-up as the
//! largest that fits; the same `memory` always gives the same size, so a
//! restarted daemon attaches the same layout.

use forkroot::checkpoint::{CheckpointError, InPlace, Tx};
use forkroot::region::Plain;

use super::store::{Bytes, StoreError};

/// Layout version of the journaled area.
const VERSION: u32 = 1;

/// `N` bytes, 64-aligned: the `T` of the [`InPlace`] state.
#[repr(C, align(64))]
pub(crate) struct Blob<const N: usize>([u8; N]);

// SAFETY: repr(C), bytes only: no pointers, every bit pattern valid.
unsafe impl<const N: usize> Plain for Blob<N> {}

/// The table's bytes, changed only in transactions.
pub(crate) trait Journal {
    /// The committed bytes.
    fn data(&self) -> &[u8];
    /// Runs `f` in one transaction: commits if it returns `Ok`, rolls every
    /// change back if it returns `Err` (or if the process dies before the
    /// commit: then on the next attach).
    fn transact(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Bytes) -> Result<i64, StoreError>,
    ) -> Result<i64, StoreError>;
    /// Transactions rolled back at attach (a crash cut a write short).
    fn rolled_back(&self) -> usize;
}

struct Region<'a, const N: usize>(InPlace<'a, Blob<N>>);

struct TxBytes<'t, 'u, 'a, const N: usize>(&'t mut Tx<'u, 'a, Blob<N>>);

impl<const N: usize> Bytes for TxBytes<'_, '_, '_, N> {
    fn data(&self) -> &[u8] {
        &self.0.state().0
    }

    fn bytes(&mut self, offset: usize, len: usize) -> Result<&mut [u8], StoreError> {
        self.0.bytes(offset, len).map_err(|e| match e {
            CheckpointError::JournalFull { .. } => StoreError::JournalFull,
            // The store checks what it reads from the table before it
            // writes there; a range outside the blob all the same is a
            // damaged table, not a reason to abort.
            _ => StoreError::Corrupt,
        })
    }
}

impl<const N: usize> Journal for Region<'_, N> {
    fn data(&self) -> &[u8] {
        &self.0 .0
    }

    fn transact(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Bytes) -> Result<i64, StoreError>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.0.begin();
        let r = f(&mut TxBytes(&mut tx));
        if r.is_ok() {
            tx.commit();
        }
        // Dropped uncommitted: rolled back.
        r
    }

    fn rolled_back(&self) -> usize {
        self.0.recovery().rolled_back
    }
}

/// Journal capacity for a state of `len` bytes: 1/32 of it, 64 KiB to 4 MiB.
pub(crate) fn capacity_for(len: usize) -> usize {
    (len / 32).clamp(64 << 10, 4 << 20)
}

macro_rules! ladder {
    ($($n:expr),* $(,)?) => {
        /// Attaches the largest blob of the ladder that fits in `area` with
        /// a journal of `capacity` bytes, rolling back an unfinished
        /// transaction. `Ok(None)`: the area is too small for any.
        pub(crate) fn attach<'a>(
            area: &'a mut [u8],
            capacity: usize,
        ) -> Result<Option<Box<dyn Journal + 'a>>, CheckpointError> {
            $(
                if InPlace::<Blob<{ $n }>>::required_size(capacity) <= area.len() {
                    let ip = InPlace::<Blob<{ $n }>>::attach(area, VERSION, capacity)?;
                    return Ok(Some(Box::new(Region(ip))));
                }
            )*
            Ok(None)
        }
    };
}

// From 7 GiB down to 64 KiB: 4, 5, 6 and 7 times each power of two.
ladder!(
    7 << 30,
    6 << 30,
    5 << 30,
    4 << 30,
    7 << 29,
    6 << 29,
    5 << 29,
    4 << 29,
    7 << 28,
    6 << 28,
    5 << 28,
    4 << 28,
    7 << 27,
    6 << 27,
    5 << 27,
    4 << 27,
    7 << 26,
    6 << 26,
    5 << 26,
    4 << 26,
    7 << 25,
    6 << 25,
    5 << 25,
    4 << 25,
    7 << 24,
    6 << 24,
    5 << 24,
    4 << 24,
    7 << 23,
    6 << 23,
    5 << 23,
    4 << 23,
    7 << 22,
    6 << 22,
    5 << 22,
    4 << 22,
    7 << 21,
    6 << 21,
    5 << 21,
    4 << 21,
    7 << 20,
    6 << 20,
    5 << 20,
    4 << 20,
    7 << 19,
    6 << 19,
    5 << 19,
    4 << 19,
    7 << 18,
    6 << 18,
    5 << 18,
    4 << 18,
    7 << 17,
    6 << 17,
    5 << 17,
    4 << 17,
    7 << 16,
    6 << 16,
    5 << 16,
    4 << 16,
    7 << 15,
    6 << 15,
    5 << 15,
    4 << 15,
    7 << 14,
    6 << 14,
    5 << 14,
    4 << 14,
);

#[cfg(test)]
pub(crate) mod tests {
    use super::super::store::{Cond, Store, Ttl};
    use super::*;

    /// A 64-aligned, zeroed area of `len` bytes (a stand-in for a region).
    pub(crate) fn area(len: usize) -> &'static mut [u8] {
        #[repr(C, align(64))]
        #[derive(Clone, Copy)]
        struct Line([u8; 64]);
        let lines: &'static mut [Line] = Vec::leak(vec![Line([0; 64]); len / 64]);
        // SAFETY: the lines are `len` initialized bytes, leaked, so the
        // slice is the only reference to them for 'static.
        unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), len) }
    }

    #[test]
    fn the_ladder_picks_the_largest_blob_that_fits() {
        let a = area(1 << 20);
        let base = a.as_ptr() as usize;
        let len = a.len();
        let j = attach(a, capacity_for(len)).unwrap().unwrap();
        assert!(j.data().len() >= (1 << 20) * 3 / 4, "{}", j.data().len());
        assert!(j.data().as_ptr() as usize + j.data().len() <= base + len);
        assert!(attach(area(4096), 1024).unwrap().is_none());
    }

    #[test]
    fn a_failed_command_is_rolled_back() {
        let a = area(1 << 20);
        let len = a.len();
        let mut j = attach(a, capacity_for(len)).unwrap().unwrap();
        let mut store = None;
        j.transact(&mut |w| {
            store = Some(Store::open(w)?.unwrap());
            Ok(0)
        })
        .unwrap();
        let store = store.unwrap();
        j.transact(&mut |w| {
            store
                .set(w, b"k", b"committed", Ttl::Clear, Cond::Always, 0)
                .map(i64::from)
        })
        .unwrap();
        // An error after a change: nothing of it stays.
        let r = j.transact(&mut |w| {
            store.set(w, b"k", b"changed", Ttl::Clear, Cond::Always, 0)?;
            store.set(w, b"k2", b"v", Ttl::Clear, Cond::Always, 0)?;
            Err(StoreError::Oom)
        });
        assert_eq!(r, Err(StoreError::Oom));
        assert_eq!(
            store.get(j.data(), b"k", 0).unwrap(),
            Some(&b"committed"[..])
        );
        assert_eq!(store.get(j.data(), b"k2", 0).unwrap(), None);
    }

    #[test]
    fn an_uncommitted_transaction_is_rolled_back_on_attach() {
        let a = area(1 << 20);
        let ptr = a.as_mut_ptr();
        let len = a.len();
        let cap = capacity_for(len);
        {
            let mut ip = InPlace::<Blob<{ 7 << 17 }>>::attach(a, VERSION, cap).unwrap();
            let mut tx = ip.begin();
            let mut w = TxBytes(&mut tx);
            let store = Store::open(&mut w).unwrap().unwrap();
            store
                .set(&mut w, b"a", b"1", Ttl::Clear, Cond::Always, 0)
                .unwrap();
            tx.commit();
            let mut tx = ip.begin();
            let mut w = TxBytes(&mut tx);
            store
                .set(&mut w, b"a", b"2", Ttl::Clear, Cond::Always, 0)
                .unwrap();
            store
                .set(&mut w, b"b", b"3", Ttl::Clear, Cond::Always, 0)
                .unwrap();
            // The process dies here: neither commit nor rollback runs.
            std::mem::forget(tx);
        }
        // SAFETY: the InPlace above is gone; the area is leaked memory.
        let again = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        let mut j = attach(again, cap).unwrap().unwrap();
        assert!(j.rolled_back() > 0);
        let mut store = None;
        j.transact(&mut |w| {
            store = Some(Store::open(w)?.unwrap());
            Ok(0)
        })
        .unwrap();
        let store = store.unwrap();
        assert_eq!(store.get(j.data(), b"a", 0).unwrap(), Some(&b"1"[..]));
        assert_eq!(store.get(j.data(), b"b", 0).unwrap(), None);
        assert_eq!(store.len(j.data()), 1);
    }
}
