//! Poll-driven waits with deadlines. A wait that times out says what it was stuck on: the last
//! `Pending` reason its probe gave.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// What one probe of a wait found.
pub enum Probe<T> {
    Done(T),
    Pending(String),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WaitError<E> {
    #[error("timed out after {waited:?} waiting for {what}; stuck on: {stuck_on}")]
    TimedOut {
        what: String,
        waited: Duration,
        stuck_on: String,
    },
    #[error("{what} failed: {reason}")]
    Failed { what: String, reason: String },
    #[error("{0}")]
    Probe(E),
}

/// Calls `probe` every `interval` until it is done, fails, or `timeout` passes. The first probe
/// runs at once, so a state already reached costs one call.
pub async fn wait_for<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<T, WaitError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Probe<T>, E>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        match probe().await.map_err(WaitError::Probe)? {
            Probe::Done(v) => return Ok(v),
            Probe::Failed(reason) => {
                return Err(WaitError::Failed {
                    what: what.into(),
                    reason,
                });
            }
            Probe::Pending(why) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(WaitError::TimedOut {
                        what: what.into(),
                        waited: now - start,
                        stuck_on: why,
                    });
                }
            }
        }
        let now = Instant::now();
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn times_out_naming_the_last_state() {
        let mut n = 0;
        let r: Result<(), WaitError<()>> = wait_for(
            "app",
            Duration::from_secs(5),
            Duration::from_secs(1),
            || {
                n += 1;
                let i = n;
                async move { Ok(Probe::Pending(format!("probe {i}"))) }
            },
        )
        .await;
        match r {
            Err(WaitError::TimedOut {
                stuck_on, waited, ..
            }) => {
                assert_eq!(stuck_on, "probe 6");
                assert_eq!(waited, Duration::from_secs(5));
            }
            _ => panic!("expected a timeout"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn returns_as_soon_as_done_or_failed() {
        let mut n = 0;
        let r: Result<u32, WaitError<()>> =
            wait_for("x", Duration::from_secs(60), Duration::from_secs(1), || {
                n += 1;
                let i = n;
                async move {
                    Ok(if i < 3 {
                        Probe::Pending("no".into())
                    } else {
                        Probe::Done(i)
                    })
                }
            })
            .await;
        assert_eq!(r, Ok(3));
        let f: Result<(), WaitError<()>> = wait_for(
            "y",
            Duration::from_secs(60),
            Duration::from_secs(1),
            || async { Ok(Probe::Failed("broken".into())) },
        )
        .await;
        assert!(matches!(f, Err(WaitError::Failed { reason, .. }) if reason == "broken"));
    }
}
