//! The machine's cores as a budget for CPU work: queries' searches (and
//! the parts of one search that can run beside each other) run on tokio's
//! blocking pool, at most [`crate::cores`] at once, so the network threads
//! never run them and more work than cores waits for a turn rather than
//! time-slicing. The one exception is a search whose cost is known before
//! it runs and is small ([`HERE_MAX_POSTINGS`]): holding a turn, its
//! caller may run it on its own thread.

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

/// Most postings a search's walk may read ([`crate::index::text::PreparedTop::postings`])
/// to run on the thread that asked for it, a connection's network thread,
/// rather than on the blocking pool: handing a search over and its answer
/// back wakes two threads, each wake-up tens of microseconds on a virtual
/// machine whose other core sleeps (35 and 27 µs at p50, `scripts/bench
/// text`, AMD EPYC, 2 cores), a sixth of a seven-word query's whole
/// search. With at most [`HERE_MAX_HITS`] hits to read back, such a
/// search holds that thread about a millisecond at worst (nothing
/// skipped), so other connections on it wait at most so long. What a
/// helper claims runs beside it on the pool; the rest (all of it when
/// every core is busy) runs on the caller's thread.
pub const HERE_MAX_POSTINGS: u64 = 1 << 18;

/// Most hits a search run on its caller's thread reads back (each
/// `_id` read from the index's store): see [`HERE_MAX_POSTINGS`].
pub const HERE_MAX_HITS: usize = 100;

/// A core's turn of the budget [`run`] keeps, held until dropped.
pub(crate) struct Turn {
    _permit: tokio::sync::SemaphorePermit<'static>,
}

/// A turn, if a core is free right now (else `None`: the caller waits
/// for one with [`run`]).
pub(crate) fn turn_now() -> Option<Turn> {
    turns()
        .try_acquire()
        .ok()
        .map(|permit| Turn { _permit: permit })
}

/// Runs `f` on the blocking pool in `turn`, taken already.
/// Errors: the task panicked.
pub(crate) async fn run_in<R: Send + 'static>(
    turn: Turn,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, tokio::task::JoinError> {
    let outcome = tokio::task::spawn_blocking(f).await;
    drop(turn);
    outcome
}

/// Held by each test that needs every core's turn at once: two of them
/// holding some turns each while waiting for the rest would wait for each
/// other.
#[cfg(test)]
pub(crate) static EVERY_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts `job` on another blocking thread if a core is free right now
/// (a turn of [`run`]'s budget, held until `job` ends), for work that
/// can run beside its caller (a search's helper). Does nothing, and
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc, Condvar, Mutex};
    use std::time::Duration;

    /// How long a test waits for what must happen before calling it lost.
    const LOST: Duration = Duration::from_secs(60);

    fn runtime() -> tokio::runtime::Runtime {
        // The kind of runtime a proxy's connections run on (`server::Workers`).
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_running_search_leaves_the_network_thread_free() {
        runtime().block_on(async {
            let (release, released) = mpsc::channel::<()>();
            let (started, job_started) = tokio::sync::oneshot::channel();
            // A search that runs until this thread, the connection's,
            // releases it: were it run here, nothing could.
            let search = tokio::spawn(run(move || {
                let _ = started.send(());
                released.recv_timeout(LOST).is_ok()
            }));
            job_started.await.unwrap();
            // Other connections' work goes on meanwhile.
            assert_eq!(tokio::spawn(async { 7 }).await.unwrap(), 7);
            release.send(()).expect("the search is still waiting");
            assert!(search.await.unwrap().unwrap(), "released by this thread");
        });
    }

    #[test]
    fn a_turn_taken_now_is_held_until_its_job_on_the_pool_ends() {
        let _alone = EVERY_TURN.lock().unwrap_or_else(|e| e.into_inner());
        runtime().block_on(async {
            // Every core's turn (other tests may hold some for a while).
            let mut held = Vec::new();
            for _ in 0..crate::cores() {
                let permit = tokio::time::timeout(LOST, turns().acquire())
                    .await
                    .expect("a turn comes")
                    .unwrap();
                held.push(permit);
            }
            assert!(turn_now().is_none(), "every turn is held");
            let turn = Turn {
                _permit: held.pop().unwrap(),
            };
            let (release, released) = mpsc::channel::<()>();
            let (started, job_started) = tokio::sync::oneshot::channel();
            let job = tokio::spawn(run_in(turn, move || {
                let _ = started.send(());
                released.recv_timeout(LOST).is_ok()
            }));
            job_started.await.unwrap();
            assert!(turn_now().is_none(), "the running job holds its turn");
            release.send(()).expect("the job is still waiting");
            assert!(job.await.unwrap().unwrap(), "released by this thread");
            // Only the job's turn can come back: the others are held here.
            let back = tokio::time::timeout(LOST, turns().acquire()).await;
            assert!(back.is_ok(), "the job's turn was never given back");
        });
    }

    #[test]
    fn searches_run_beside_each_other_one_per_core_at_most() {
        let _alone = EVERY_TURN.lock().unwrap_or_else(|e| e.into_inner());
        let cores = crate::cores();
        // (arrived, running now, most running at once)
        let state = Arc::new((Mutex::new((0usize, 0usize, 0usize)), Condvar::new()));
        let joined = runtime().block_on(async {
            let jobs: Vec<_> = (0..cores + 1)
                .map(|_| {
                    let state = state.clone();
                    tokio::spawn(run(move || {
                        let (lock, arrivals) = &*state;
                        let mut s = lock.lock().unwrap();
                        s.0 += 1;
                        s.1 += 1;
                        s.2 = s.2.max(s.1);
                        arrivals.notify_all();
                        // Every core's search must be running at once for
                        // the first `cores` to get past this.
                        let (mut s, waited) = arrivals
                            .wait_timeout_while(s, LOST, |s| s.0 < cores)
                            .unwrap();
                        s.1 -= 1;
                        !waited.timed_out()
                    }))
                })
                .collect();
            let mut all = Vec::new();
            for job in jobs {
                all.push(job.await.unwrap().unwrap());
            }
            all
        });
        assert!(joined.iter().all(|met| *met), "{joined:?}");
        let most = state.0.lock().unwrap().2;
        assert_eq!(most, cores, "searches running at once");
    }
}
