//! systemd integration: READY once the socket is bound, watchdog pings while the agent
//! is alive (see [`crate::health`]). Does nothing when not started by systemd.

use std::sync::Arc;
use std::time::Duration;

use crate::health::Health;

/// Tells systemd the API is being served.
pub fn ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY");
    }
}

/// Tells systemd the agent is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Pings the watchdog at half its period while [`Health::alive`]: the API loop and the
/// supervisor loop beat and the store can be read. A wedged part stops the pings and
/// systemd restarts the agent (groups keep running in their shims). A store that cannot
/// write (full disk) is degraded, not dead: a restart would not free space, so the pings
/// go on.
pub fn spawn_watchdog(health: Arc<Health>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = period / 2;
    tracing::info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog enabled"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        let mut pinging = true;
        loop {
            tick.tick().await;
            let alive = health.alive();
            if alive != pinging {
                if alive {
                    tracing::info!("healthy again: pinging the systemd watchdog");
                } else {
                    tracing::error!(health = %Health::summary(&health.conditions()), "not pinging the systemd watchdog");
                }
                pinging = alive;
            }
            if alive {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    });
}
