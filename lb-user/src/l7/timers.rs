//! The proxy's timers on a grid: deadlines rounded up to [`GRAIN`], and a
//! pacemaker timer per serving thread that is always due sooner than
//! them. A timer that becomes tokio's earliest makes the runtime wake its
//! own driver (an eventfd write and an extra epoll round); measured, one
//! every three keep-alive requests before, about none after.

use std::time::Duration;

/// What idle deadlines are rounded up to.
const GRAIN: Duration = Duration::from_millis(50);
/// The pacemaker's period: shorter than any timeout the proxy sets.
const PACE: Duration = Duration::from_millis(100);

/// Keeps a timer due within [`PACE`] on a serving thread, so that the
/// proxy's timers (all longer) never become the runtime's earliest (with
/// the grid alone, one keep-alive request in nine still woke the driver).
/// Ten wake-ups a second when idle.
pub async fn pacemaker() {
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
    }
}

/// The deadline `d` from now, rounded up to a multiple of [`GRAIN`]:
/// timers that share a few deadlines rarely become the earliest.
pub fn coarse(d: Duration) -> tokio::time::Instant {
    static BASE: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(tokio::time::Instant::now);
    let at = tokio::time::Instant::now() + d - base;
    let grain = GRAIN.as_nanos();
    let rounded = at.as_nanos().div_ceil(grain) * grain;
    base + Duration::from_nanos(rounded as u64)
}
