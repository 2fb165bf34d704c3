//! An exact change feed: every committed change after a revision, once, in commit order.
//!
//! The live channel is a bounded broadcast: a receiver that falls more than
//! [`LIVE_CHANNEL`](super::LIVE_CHANNEL) changes behind loses the oldest ones. Revisions
//! are consecutive (each change gets the next one, and the change log keeps every
//! change), so a feed notices any gap — a lag, or a change committed before it
//! subscribed — and reads the missing changes from the change log, a page at a time,
//! before going back to the live channel. Only when the change log no longer reaches back
//! (the watcher is more than [`CHANGE_LOG_KEEP`](super::CHANGE_LOG_KEEP) changes behind)
//! does the feed end, with [`StoreError::Compacted`]: the watcher lists again and watches
//! from the list's revision.

use std::collections::VecDeque;
use std::sync::Arc;

use eci_api::v1::WatchEvent;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{PAGE, Store, StoreError};

/// Changes after a revision.
pub struct Feed {
    store: Arc<Store>,
    live: broadcast::Receiver<WatchEvent>,
    /// The revision of the last change returned.
    last: u64,
    /// Changes read from the change log, not yet returned.
    backlog: VecDeque<WatchEvent>,
    /// The change log may have changes after `last` that the live channel will not bring.
    catching_up: bool,
    /// A live change that came after a gap; returned once the gap is filled.
    held: Option<WatchEvent>,
}

impl Feed {
    /// Changes after revision `after`. Subscribes now; what was committed before comes
    /// from the change log.
    pub fn new(store: Arc<Store>, after: u64) -> Self {
        let live = store.subscribe();
        Feed {
            store,
            live,
            last: after,
            backlog: VecDeque::new(),
            catching_up: true,
            held: None,
        }
    }

    /// The revision of the last change returned (or the starting one).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Reads the next page of the change log. Fails with [`StoreError::Compacted`] when the
    /// log no longer reaches back to the feed's position.
    pub async fn fill(&mut self) -> Result<(), StoreError> {
        let store = self.store.clone();
        let after = self.last;
        let (page, more) = tokio::task::spawn_blocking(move || store.changes_page(after, PAGE))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        self.catching_up = more;
        self.backlog.extend(page);
        Ok(())
    }

    /// The next change; None when the store is gone.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, StoreError> {
        loop {
            if let Some(ev) = self.backlog.pop_front() {
                if ev.revision <= self.last {
                    continue;
                }
                self.last = ev.revision;
                return Ok(Some(ev));
            }
            if self.catching_up {
                self.fill().await?;
                continue;
            }
            let ev = match self.held.take() {
                Some(ev) => {
                    if ev.revision > self.last + 1 {
                        return Err(StoreError::Gap {
                            after: self.last,
                            next: ev.revision,
                        });
                    }
                    ev
                }
                None => match self.live.recv().await {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(n)) => {
                        tracing::info!(
                            skipped = n,
                            after = self.last,
                            "watcher fell behind the live channel; catching up from the change log"
                        );
                        self.catching_up = true;
                        continue;
                    }
                    Err(RecvError::Closed) => return Ok(None),
                },
            };
            if ev.revision <= self.last {
                continue;
            }
            if ev.revision > self.last + 1 {
                self.held = Some(ev);
                self.catching_up = true;
                continue;
            }
            self.last = ev.revision;
            return Ok(Some(ev));
        }
    }
}
