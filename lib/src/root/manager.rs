//! The root's side of systemd's notify protocol (`Type=notify`): what it
//! tells the service manager above it, and when.
//!
//! The sequence is fixed by [`Manager`]: `READY=1` once the first start
//! is ready, and again only to end a reload (`RELOADING=1` with
//! `MONOTONIC_USEC`, sent when a reload begins), never after `STOPPING=1`; `STATUS=` one line, sent only when its text changed
//! and at most once per [`STATUS_EVERY`]; `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` from the poll loop (a timer, so a stuck loop stops the
//! pings and systemd's `WatchdogSec` fires). Without `NOTIFY_SOCKET` every
//! call is a no-op, so the root behaves the same outside systemd.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::notify;

/// `STATUS=` is recomputed at most this often (it walks every daemon).
pub(crate) const STATUS_EVERY: Duration = Duration::from_secs(1);

/// What the root has told its service manager, and its watchdog timer.
#[derive(Debug)]
pub(crate) struct Manager {
    /// Half of `WATCHDOG_USEC`, when systemd asked this process for pings.
    ping_every: Option<Duration>,
    next_ping: Option<Instant>,
    ready: bool,
    /// `RELOADING=1` sent; `READY=1` not yet.
    reloading: bool,
    stopping: bool,
    status: String,
    /// A status change seen, not yet sent (rate limit).
    status_due: Option<Instant>,
    status_sent: Option<Instant>,
}

impl Manager {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be ours when
    /// set) the way `sd_watchdog_enabled` does.
    pub(crate) fn from_env(pid: u32) -> Manager {
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&u| u > 0);
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|p| p.parse::<u32>().ok() == Some(pid));
        let ping_every = usec
            .filter(|_| for_us)
            .map(|u| Duration::from_micros(u / 2).max(Duration::from_millis(1)));
        Manager {
            ping_every,
            next_ping: ping_every.map(|_| Instant::now()),
            ready: false,
            reloading: false,
            stopping: false,
            status: String::new(),
            status_due: None,
            status_sent: None,
        }
    }

    /// Whether `READY=1` was sent (and no reload began since) or can no
    /// longer be (after `STOPPING=1`).
    pub(crate) fn ready_settled(&self) -> bool {
        (self.ready && !self.reloading) || self.stopping
    }

    /// `READY=1` with the current status; never after `STOPPING=1`.
    pub(crate) fn ready(&mut self, status: String) {
        if self.ready_settled() {
            return;
        }
        self.ready = true;
        self.reloading = false;
        send(&format!("READY=1\nSTATUS={status}"));
        self.status = status;
        self.status_sent = Some(Instant::now());
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (systemd's `Type=notify-reload`
    /// protocol), once the tree was ready: a reload begins, and the next
    /// [`Manager::ready`] ends it.
    pub(crate) fn reloading(&mut self) {
        if !self.ready || self.reloading || self.stopping {
            return;
        }
        self.reloading = true;
        let usec = crate::sys::monotonic_ns() / 1000;
        send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    /// `STOPPING=1`, once; after it no `READY=1` is sent.
    pub(crate) fn stopping(&mut self) {
        if !self.stopping {
            self.stopping = true;
            send("STOPPING=1");
        }
    }

    /// Something changed that the status line may show: recompute it
    /// within [`STATUS_EVERY`].
    pub(crate) fn status_changed(&mut self, now: Instant) {
        if self.status_due.is_none() {
            let earliest = self.status_sent.map_or(now, |t| t + STATUS_EVERY);
            self.status_due = Some(earliest.max(now));
        }
    }

    /// The earliest moment a ping or a status line is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [self.next_ping, self.status_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// Sends a watchdog ping if one is due.
    pub(crate) fn ping(&mut self, now: Instant) {
        if let (Some(at), Some(every)) = (self.next_ping, self.ping_every) {
            if at <= now {
                send("WATCHDOG=1");
                self.next_ping = Some(now + every);
            }
        }
    }

    /// Whether the status line is due to be recomputed (then pass it to
    /// [`Manager::status`]).
    pub(crate) fn status_due(&self, now: Instant) -> bool {
        self.status_due.is_some_and(|t| t <= now)
    }

    /// Sends `STATUS=text` if the text changed since the last one.
    pub(crate) fn status(&mut self, now: Instant, text: String) {
        self.status_due = None;
        if text != self.status {
            send(&format!("STATUS={text}"));
            self.status = text;
            self.status_sent = Some(now);
        }
    }
}

fn send(message: &str) {
    if let Err(e) = notify::notify(message) {
        warn!(error = %e, "could not notify the service manager");
    }
}
