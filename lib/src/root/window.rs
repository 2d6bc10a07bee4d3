//! A supervisor's intensity window: how many restarts happened in the last
//! `period`, in memory bounded whatever the intensity.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many buckets a window keeps at most (see [`RestartWindow`]).
pub(super) const WINDOW_MARKS: u32 = 256;

/// A supervisor's intensity window: how many restarts happened in the last
/// `period`, in memory bounded whatever the intensity.
///
/// Restarts are counted in buckets `period / WINDOW_MARKS` wide, so at most
/// `WINDOW_MARKS + 1` buckets are alive at once. A bucket leaves the window
/// when its first restart does: the count is exact to within one bucket's
/// width (a restart may leave up to `period / 256` early).
#[derive(Debug, Default)]
pub(super) struct RestartWindow {
    /// (time of the bucket's first restart, restarts in it), oldest first.
    marks: VecDeque<(Instant, u64)>,
    /// Sum of the buckets' counts.
    count: u64,
}

impl RestartWindow {
    /// Counts a restart at `now`; returns how many the window holds.
    pub(super) fn record(&mut self, now: Instant, period: Duration) -> u64 {
        while let Some(&(t, n)) = self.marks.front() {
            if now.saturating_duration_since(t) <= period {
                break;
            }
            self.marks.pop_front();
            self.count -= n;
        }
        let width = period / WINDOW_MARKS;
        match self.marks.back_mut() {
            Some((t, n)) if now.saturating_duration_since(*t) < width => *n += 1,
            _ => self.marks.push_back((now, 1)),
        }
        self.count += 1;
        self.count
    }

    /// Restarts in the window as of the last [`RestartWindow::record`].
    #[cfg(test)]
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    /// Restarts within `period` before `now` (for status: the window as
    /// of now, not as of the last restart).
    pub(super) fn count_at(&self, now: Instant, period: Duration) -> u64 {
        self.marks
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= period)
            .map(|(_, n)| n)
            .sum()
    }

    /// Forgets every restart (a new incarnation of its supervisor).
    pub(super) fn clear(&mut self) {
        self.marks.clear();
        self.count = 0;
    }

    /// Buckets kept in memory.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.marks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_window_counts_within_its_period() {
        let mut w = RestartWindow::default();
        let t0 = Instant::now();
        let period = Duration::from_secs(10);
        for k in 0..5u32 {
            assert_eq!(
                w.record(t0 + Duration::from_secs(k.into()), period),
                u64::from(k) + 1
            );
        }
        // The first four have left the window 11 s after they happened.
        assert_eq!(w.record(t0 + Duration::from_secs(14), period), 2);
    }

    #[test]
    fn the_restart_window_stays_small_with_a_huge_intensity() {
        // `intensity = 1000000`, `period = "1h"`: a million restarts in the
        // window must not mean a million entries in the root's memory.
        let mut w = RestartWindow::default();
        let t0 = Instant::now();
        let period = Duration::from_secs(3600);
        let n = 200_000u32;
        for k in 0..n {
            w.record(t0 + Duration::from_millis(k.into()), period);
        }
        assert_eq!(w.count(), u64::from(n));
        assert!(
            w.kept() <= WINDOW_MARKS as usize + 1,
            "{} entries kept",
            w.kept()
        );
        // An hour after the last, none is left.
        let later = t0 + Duration::from_millis(n.into()) + period + Duration::from_secs(1);
        assert_eq!(w.record(later, period), 1);
    }
}
