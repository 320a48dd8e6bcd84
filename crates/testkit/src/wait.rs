//! Waits on conditions with deadlines that name what they were stuck on.

use std::time::{Duration, Instant};

/// Poll `cond` every 20 ms until it yields, or fail after `secs` naming what was awaited and
/// the state it was stuck in.
pub async fn eventually<T>(
    what: &str,
    secs: u64,
    mut cond: impl FnMut() -> Option<T>,
    state: impl Fn() -> String,
) -> T {
    eventually_async(what, secs, || std::future::ready(cond()), state).await
}

/// [`eventually`] for a condition that needs to await (an HTTP request).
pub async fn eventually_async<T, F, Fut>(
    what: &str,
    secs: u64,
    mut cond: F,
    state: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {secs} s waiting for {what}; state:\n{}",
                state()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status code of a GET, or None when the request failed.
pub async fn get_status(url: String) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}
