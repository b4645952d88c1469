//! Leases in the upstream, so that work every proxy on one upstream would
//! otherwise do on its own (fine-tuning an index's model) is done by one
//! of them at a time.
//!
//! A lease is a document `{_id: <what>, owner, beat}` in
//! `<metadata db>.leases`. It is taken by inserting it (the upstream's
//! unique `_id` decides between two proxies), held by incrementing `beat`
//! every [`BEAT`], and released by deleting it. A proxy that finds the
//! lease held watches `(owner, beat)`; once it has seen the same pair for
//! [`DEAD_AFTER`] by its own monotonic clock, the holder is taken to be
//! gone (crashed, cut off) and the lease is taken over with a
//! compare-and-swap on both fields. No two machines' clocks are ever
//! compared, so clock skew between proxies cannot break it.
//!
//! Leases carry no signature (unlike the catalog): one planted by a
//! client that can write the metadata database makes a proxy wait, at
//! most [`DEAD_AFTER`] unless the client keeps beating it, and never makes
//! the proxy act on anything the client wrote.

use crate::config::Config;
use crate::error::Error;
use crate::upstream;
use bson::{rawdoc, RawDocumentBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The metadata collection of leases.
pub const LEASES: &str = "leases";

/// How often a holder increments its lease's `beat`.
pub const BEAT: Duration = Duration::from_secs(2);

/// How long a lease's `(owner, beat)` may stay unchanged, as another proxy
/// sees it, before that proxy takes it over (six missed beats).
pub const DEAD_AFTER: Duration = Duration::from_secs(12);

/// A fresh owner name for one acquisition: this process's id and start
/// time (unique among the proxies on one upstream) and a counter, so two
/// tasks of one proxy never take one lease for the same.
fn token() -> String {
    static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let process = PROCESS.get_or_init(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{started:x}", std::process::id())
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{process}-{n}")
}

/// A held lease. Beats in the background while held; dropping it releases
/// it (deleted in the background; a holder that dies instead is taken
/// over after [`DEAD_AFTER`]).
pub struct Lease {
    release: Option<tokio::sync::oneshot::Sender<()>>,
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl Lease {
    /// Whether another proxy took the lease over (this one missed its
    /// beats): the work it guards is no longer this proxy's to finish.
    pub fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }
}

/// How [`acquire`] ended.
pub enum Acquired {
    /// Held at once: no other proxy had it.
    Free(Lease),
    /// Held after waiting for another proxy, which released it (its work
    /// is done) or stopped beating (it is gone).
    AfterWaiting(Lease),
    /// `give_up` said to stop waiting.
    GaveUp,
}

/// What one look at the lease found.
enum Look {
    Taken(Lease),
    Held(RawDocumentBuf),
    Gone,
}

/// Takes the lease `key`, waiting while another proxy holds it: `waiting`
/// is called once, with the holder's name, when waiting starts, and
/// `give_up` before each look (every [`BEAT`]). Errors: the upstream's
/// on the first look; while waiting, an upstream error is logged and the
/// next look tried (the wait may last the other proxy's whole run).
pub async fn acquire(
    config: &Arc<Config>,
    key: &str,
    give_up: impl Fn() -> bool,
    mut waiting: impl FnMut(&str),
) -> Result<Acquired, Error> {
    let db = config.metadata_db.as_str();
    let me = token();
    // The `(owner, beat)` last seen, and since when.
    let mut seen: Option<(String, i64, Instant)> = None;
    loop {
        if give_up() {
            return Ok(Acquired::GaveUp);
        }
        let looked = look(config, db, key, &me).await;
        let looked = match (looked, &seen) {
            (Ok(l), _) => l,
            (Err(e), None) => return Err(e),
            (Err(e), Some(_)) => {
                tracing::warn!(lease = %key, error = %e.message, "cannot look at a lease; trying again");
                tokio::time::sleep(BEAT).await;
                continue;
            }
        };
        match looked {
            Look::Taken(lease) => {
                return Ok(match seen {
                    None => Acquired::Free(lease),
                    Some(_) => Acquired::AfterWaiting(lease),
                })
            }
            Look::Held(held) => {
                let owner = held.get_str("owner").unwrap_or_default().to_string();
                let beat = crate::wire::integer(held.get("beat").ok().flatten()).unwrap_or(0);
                match &seen {
                    Some((o, b, since)) if *o == owner && *b == beat => {
                        if since.elapsed() >= DEAD_AFTER {
                            match take_over(config, db, key, &held, &me).await {
                                Ok(true) => {
                                    tracing::warn!(lease = %key, owner = %owner, "took over a lease whose holder stopped beating");
                                    return Ok(Acquired::AfterWaiting(hold(
                                        config.clone(),
                                        key.to_string(),
                                        me,
                                    )));
                                }
                                Ok(false) => {}
                                Err(e) => {
                                    tracing::warn!(lease = %key, error = %e.message, "cannot take a stale lease over; trying again")
                                }
                            }
                        }
                    }
                    _ => {
                        if seen.is_none() {
                            waiting(&owner);
                        }
                        seen = Some((owner, beat, Instant::now()));
                    }
                }
            }
            // Released meanwhile: insert again at once.
            Look::Gone => {
                if seen.is_none() {
                    seen = Some((String::new(), -1, Instant::now()));
                }
                continue;
            }
        }
        tokio::time::sleep(BEAT).await;
    }
}

/// Tries to take the lease `key` as `me` by inserting it; else reads it.
async fn look(config: &Arc<Config>, db: &str, key: &str, me: &str) -> Result<Look, Error> {
    let insert = rawdoc! {
        "insert": LEASES,
        "documents": [{ "_id": key, "owner": me, "beat": 0i64 }],
        "$db": db,
    };
    let reply = command(config, &insert).await?;
    if !crate::maintain::catalog::duplicate(&reply) {
        crate::maintain::catalog::write_errors(&reply)?;
        return Ok(Look::Taken(hold(
            config.clone(),
            key.to_string(),
            me.to_string(),
        )));
    }
    let find = rawdoc! { "find": LEASES, "filter": { "_id": key }, "limit": 1, "$db": db };
    let reply = command(config, &find).await?;
    let held = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .ok()
        .and_then(|b| b.into_iter().flatten().next())
        .and_then(|d| d.as_document().map(|d| d.to_owned()));
    Ok(match held {
        // Our own insert, sent again after a network error.
        Some(held) if held.get_str("owner").ok() == Some(me) => {
            Look::Taken(hold(config.clone(), key.to_string(), me.to_string()))
        }
        Some(held) => Look::Held(held),
        None => Look::Gone,
    })
}

/// Replaces the lease document `held` (matched on its `owner` and `beat`,
/// so only if it is still exactly what was seen) with one `me` holds:
/// `true` when it did.
async fn take_over(
    config: &Config,
    db: &str,
    key: &str,
    held: &RawDocumentBuf,
    me: &str,
) -> Result<bool, Error> {
    let mut filter = rawdoc! { "_id": key };
    for field in ["owner", "beat"] {
        match held.get(field).ok().flatten() {
            Some(v) => filter.append(field, v.to_raw_bson()),
            None => filter.append(field, rawdoc! { "$exists": false }),
        }
    }
    let update = rawdoc! {
        "update": LEASES,
        "updates": [{ "q": filter, "u": { "_id": key, "owner": me, "beat": 0i64 } }],
        "$db": db,
    };
    let reply = command(config, &update).await?;
    crate::maintain::catalog::write_errors(&reply)?;
    Ok(crate::wire::integer(reply.get("n").ok().flatten()) == Some(1))
}

/// Starts beating the lease `key` that `me` has just taken.
fn hold(config: Arc<Config>, key: String, me: String) -> Lease {
    let (release, mut released) = tokio::sync::oneshot::channel::<()>();
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = lost.clone();
    tokio::spawn(async move {
        let db = config.metadata_db.clone();
        let mine = rawdoc! { "_id": key.as_str(), "owner": me.as_str() };
        loop {
            tokio::select! {
                _ = &mut released => break,
                () = tokio::time::sleep(BEAT) => {}
            }
            let beat = rawdoc! {
                "update": LEASES,
                "updates": [{ "q": mine.clone(), "u": { "$inc": { "beat": 1i64 } } }],
                "$db": db.as_str(),
            };
            // A beat that takes longer than a beat is a missed beat: the
            // next one is due (a half-open connection must not hold the
            // lease's renewal past DEAD_AFTER).
            match tokio::time::timeout(BEAT, command(&config, &beat)).await {
                Ok(Ok(reply)) if crate::wire::integer(reply.get("n").ok().flatten()) == Some(0) => {
                    tracing::warn!(lease = %key, "lost a lease: another proxy took it over (this one missed its beats)");
                    flag.store(true, std::sync::atomic::Ordering::Release);
                    return;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(lease = %key, error = %e.message, "cannot renew a lease")
                }
                Err(_) => tracing::warn!(lease = %key, "renewing a lease timed out"),
            }
        }
        let delete = rawdoc! {
            "delete": LEASES,
            "deletes": [{ "q": mine, "limit": 1 }],
            "$db": db.as_str(),
        };
        if let Err(e) = command(&config, &delete).await {
            tracing::warn!(lease = %key, error = %e.message, "cannot release a lease; another proxy takes it over once it stops beating");
        }
    });
    Lease {
        release: Some(release),
        lost,
    }
}

async fn command(config: &Config, body: &RawDocumentBuf) -> Result<RawDocumentBuf, Error> {
    upstream::connect(config).await?.command(body).await
}
