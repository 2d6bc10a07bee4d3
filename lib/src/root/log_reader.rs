//! The root's reading of daemons' flight logs: the last records for a crash
//! report, and records after a sequence number for `ctl logs`. The bytes
//! are the daemon's and untrusted: the root reads a private copy of them
//! ([`RegionSet::log_copy`], never its mapping), and [`crate::log`]
//! validates every record.

use serde_json::{json, Value};

use crate::log;
use crate::region::RegionSet;
use crate::sys::Pid;

/// The last `n` records that process `pid` wrote
/// into daemon `i`'s flight log, as `LEVEL pid: text` lines. Its
/// replacement may have started appending already; those are left out.
pub(crate) fn last_lines(regions: &RegionSet, i: usize, pid: Pid, n: usize) -> Vec<String> {
    let mut lines = Vec::with_capacity(log::CAPACITY);
    let mut newer = false;
    let copy = regions.log_copy(i);
    log::tail(copy.bytes(), log::CAPACITY, |r| {
        // Records are oldest first: everything after the replacement's
        // first record is the replacement's.
        if r.pid() == pid.as_u32() && !newer {
            lines.push(format!("{} {}: {}", r.level().as_str(), r.pid(), r.text()));
        } else if !lines.is_empty() && r.pid() != pid.as_u32() && r.tx() == 0 {
            newer = true;
        }
    });
    let drop = lines.len().saturating_sub(n);
    lines.drain(..drop);
    lines
}

/// Records of daemon `i` with a sequence number of at least `*from`, oldest
/// first, as JSON; moves `*from` past the newest.
pub(crate) fn since(regions: &RegionSet, i: usize, from: &mut u64, out: &mut Vec<Value>) {
    // A log formatted again (its area was found damaged) numbers from 0:
    // a cursor past its newest record starts over.
    let mut newest = None;
    let copy = regions.log_copy(i);
    log::tail(copy.bytes(), 1, |r| newest = Some(r.seq()));
    if newest.is_some_and(|n| n < from.saturating_sub(1)) {
        *from = 0;
    }
    log::tail(copy.bytes(), log::CAPACITY, |r| {
        if r.seq() >= *from {
            out.push(json!({
                "seq": r.seq(),
                "time_ns": r.timestamp_ns(),
                "level": r.level().as_str(),
                "pid": r.pid(),
                "tx": (r.tx() != 0).then(|| format!("{:032x}", r.tx())),
                "text": r.text(),
            }));
        }
    });
    if let Some(seq) = out.last().and_then(|v| v["seq"].as_u64()) {
        *from = seq + 1;
    }
}
