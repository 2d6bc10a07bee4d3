//! Log lines deferred past the next fork: a dead daemon's exit line or
//! crash report, its last output, a poison checkpoint. They are written
//! once its replacement runs, in order, before any later line.

use std::time::Duration;

use tracing::{error, info, warn};

use super::{log_reader, Root};
use crate::daemon::ExitReason;
use crate::sys::Pid;

/// A log line the root writes after the replacement of a dead daemon is
/// forked, not before: formatting a crash report (and reading the dead
/// process's flight log) takes longer than the fork, and the replacement
/// runs meanwhile. Notes are flushed in order, before any later line.
#[derive(Debug)]
pub(super) enum Note {
    /// A daemon ended on its own: the exit line, or the crash report.
    Exit {
        i: usize,
        pid: Pid,
        reason: ExitReason,
        uptime: Duration,
        restarts: u32,
    },
    /// The last lines a dead process wrote, read when it was reaped.
    Output { i: usize },
    /// The checkpoint it resumed from is poison.
    Poison {
        i: usize,
        seq: u64,
        uptime: Duration,
    },
}

impl Root<'_> {
    /// Defers the exit line (or crash report) of daemon `i`'s process.
    pub(super) fn note_exit(&mut self, i: usize, pid: Pid, reason: ExitReason, uptime: Duration) {
        let restarts = self.children[i].restarts;
        self.notes.push(Note::Exit {
            i,
            pid,
            reason,
            uptime,
            restarts,
        });
    }

    /// Logs the deferred notes, in order.
    pub(super) fn flush_notes(&mut self) {
        for note in std::mem::take(&mut self.notes) {
            match note {
                Note::Exit {
                    i,
                    pid,
                    reason,
                    uptime,
                    restarts,
                } => {
                    let name = &self.children[i].cfg.name;
                    if reason.is_normal() {
                        info!(daemon = %name, %pid, uptime = ?uptime, "exited normally");
                    } else {
                        let last = log_reader::last_lines(&self.regions, i, pid, 8);
                        error!(
                            daemon = %name,
                            %pid,
                            reason = %reason,
                            uptime = ?uptime,
                            restarts,
                            last_log = ?last,
                            "crashed"
                        );
                    }
                }
                Note::Output { i } => self.outputs[i].flush_log(),
                Note::Poison { i, seq, uptime } => warn!(
                    daemon = %self.children[i].cfg.name,
                    checkpoint = seq,
                    uptime = ?uptime,
                    "checkpoint is poison (crashed soon after resuming from it); the next start resumes from an older one"
                ),
            }
        }
    }
}
