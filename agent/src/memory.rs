//! Giving freed memory back to the kernel.
//!
//! The agent's big allocations are short-lived: decoded group records (a spec at the
//! limits is megabytes), Watch replays, image imports. glibc keeps what such bursts
//! freed in per-thread arenas (the blocking pool runs many threads) instead of returning
//! it, so the resident size stayed at its high-water mark after load (issue 13:
//! 2.6-3.35 GB that never came down). `malloc_trim(0)` releases the free pages of every
//! arena; measured with `eci-apibench`, see docs/benchmark.md.
//!
//! Trimming walks every arena, so it is not done on each free: callers say that a large
//! amount was probably freed ([`release_soon`]), and one thread trims once things have
//! waited [`SETTLE`] (at most one trim per `SETTLE`).

use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

/// How long after the last request the trim runs: a burst of deletes trims once.
const SETTLE: Duration = Duration::from_millis(500);
/// Trims also this long after the last one without being asked, for frees nobody
/// signals (a Watch replay that ended, a burst of large requests).
const QUIET: Duration = Duration::from_secs(30);

/// Asks for a trim shortly; cheap and never blocks. The first call starts the trimming
/// thread, which from then on also trims every [`QUIET`].
pub fn release_soon() {
    static TRIMMER: OnceLock<Option<SyncSender<()>>> = OnceLock::new();
    let tx = TRIMMER.get_or_init(|| {
        let (tx, rx) = sync_channel(1);
        std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(move || trimmer(rx))
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = tx {
        // Full: a trim is already due.
        let _ = tx.try_send(());
    }
}

fn trimmer(rx: Receiver<()>) {
    loop {
        match rx.recv_timeout(QUIET) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Every request during the wait is folded into this trim: at most one trim per
        // SETTLE however busy the agent is.
        std::thread::sleep(SETTLE);
        while rx.try_recv().is_ok() {}
        trim();
    }
}

/// Returns free heap pages to the kernel now.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes a size and only walks the allocator's own structures
    // under its locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
