//! The machine's cores as a budget for CPU work: queries' searches (and
//! the parts of one search that can run beside each other) run on tokio's
//! blocking pool, at most [`crate::cores`] at once, so the network threads
//! never run them and more work than cores waits for a turn rather than
//! time-slicing.

use std::sync::OnceLock;
use tokio::sync::Semaphore;

/// One permit per core.
fn turns() -> &'static Semaphore {
    static TURNS: OnceLock<Semaphore> = OnceLock::new();
    TURNS.get_or_init(|| Semaphore::new(crate::cores()))
}

/// Runs `f` (a query's CPU work: an index search, facets, highlights,
/// score explanations) on the blocking pool once a core is free: more
/// concurrent queries wait for a turn without holding a thread. Errors:
/// the task panicked.
pub(crate) async fn run<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, tokio::task::JoinError> {
    // The semaphore is never closed, so acquiring only waits.
    let _turn = turns().acquire().await.ok();
    tokio::task::spawn_blocking(f).await
}

/// Starts `job` on another blocking thread if a core is free right now
/// (a turn of [`run`]'s budget, held until `job` ends), for work that
/// can run beside its caller (a slice of a search). Does nothing, and
/// drops `job` unrun, when every core is busy or no tokio runtime is
/// current (a benchmark, a test): the caller does that work itself, so a
/// loaded machine runs each search on one core, as before.
pub fn beside(job: impl FnOnce() + Send + 'static) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Ok(turn) = turns().try_acquire() else {
        return;
    };
    runtime.spawn_blocking(move || {
        let _turn = turn;
        job();
    });
}
