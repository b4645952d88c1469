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

/// This process's name as a lease owner: its process id and start time,
/// unique among the proxies on one upstream.
fn me() -> &'static str {
    static ME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ME.get_or_init(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{started:x}", std::process::id())
    })
}

/// A held lease. Beats in the background while held; dropping it releases
/// it (deleted in the background; a holder that dies instead is taken
/// over after [`DEAD_AFTER`]).
pub struct Lease {
    release: Option<tokio::sync::oneshot::Sender<()>>,
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

/// Takes the lease `key`, waiting while another proxy holds it: `waiting`
/// is called once, with the holder's name, when waiting starts, and
/// `give_up` before each look (every [`BEAT`]). Errors: the upstream's.
pub async fn acquire(
    config: &Arc<Config>,
    key: &str,
    give_up: impl Fn() -> bool,
    mut waiting: impl FnMut(&str),
) -> Result<Acquired, Error> {
    let conn = upstream::connect(config.as_ref()).await?;
    let db = config.metadata_db.as_str();
    // The `(owner, beat)` last seen, and since when.
    let mut seen: Option<(String, i64, Instant)> = None;
    loop {
        if give_up() {
            return Ok(Acquired::GaveUp);
        }
        let insert = rawdoc! {
            "insert": LEASES,
            "documents": [{ "_id": key, "owner": me(), "beat": 0i64 }],
            "$db": db,
        };
        let reply = conn.command(&insert).await?;
        if !crate::maintain::catalog::duplicate(&reply) {
            crate::maintain::catalog::write_errors(&reply)?;
            let lease = hold(config.clone(), key.to_string());
            return Ok(match seen {
                None => Acquired::Free(lease),
                Some(_) => Acquired::AfterWaiting(lease),
            });
        }
        let find = rawdoc! { "find": LEASES, "filter": { "_id": key }, "limit": 1, "$db": db };
        let reply = conn.command(&find).await?;
        let held = reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .ok()
            .and_then(|b| b.into_iter().flatten().next())
            .and_then(|d| d.as_document().map(|d| d.to_owned()));
        // Gone meanwhile (released): insert again.
        if let Some(held) = held {
            let owner = held.get_str("owner").unwrap_or_default().to_string();
            let beat = crate::wire::integer(held.get("beat").ok().flatten()).unwrap_or(0);
            if owner == me() {
                // Our own insert, sent again after a network error.
                return Ok(Acquired::Free(hold(config.clone(), key.to_string())));
            }
            match &seen {
                Some((o, b, since)) if *o == owner && *b == beat => {
                    if since.elapsed() >= DEAD_AFTER && take_over(&conn, db, key, &held).await? {
                        tracing::warn!(lease = %key, owner = %owner, "took over a lease whose holder stopped beating");
                        return Ok(Acquired::AfterWaiting(hold(
                            config.clone(),
                            key.to_string(),
                        )));
                    }
                }
                _ => {
                    if seen.is_none() {
                        waiting(&owner);
                    }
                    seen = Some((owner, beat, Instant::now()));
                }
            }
        } else if seen.is_none() {
            seen = Some((String::new(), -1, Instant::now()));
        }
        tokio::time::sleep(BEAT).await;
    }
}

/// Replaces the lease document `held` (matched on its `owner` and `beat`,
/// so only if it is still exactly what was seen) with one this proxy
/// holds: `true` when it did.
async fn take_over(
    conn: &upstream::Own,
    db: &str,
    key: &str,
    held: &RawDocumentBuf,
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
        "updates": [{ "q": filter, "u": { "_id": key, "owner": me(), "beat": 0i64 } }],
        "$db": db,
    };
    let reply = conn.command(&update).await?;
    crate::maintain::catalog::write_errors(&reply)?;
    Ok(crate::wire::integer(reply.get("n").ok().flatten()) == Some(1))
}

/// Starts beating the lease `key` this proxy has just taken.
fn hold(config: Arc<Config>, key: String) -> Lease {
    let (release, mut released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let db = config.metadata_db.clone();
        let mine = rawdoc! { "_id": key.as_str(), "owner": me() };
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
            match command(&config, &beat).await {
                Ok(reply) if crate::wire::integer(reply.get("n").ok().flatten()) == Some(0) => {
                    tracing::warn!(lease = %key, "lost a lease: another proxy took it over (this one missed its beats)");
                    return;
                }
                Ok(_) => {}
                // Missed beats are what DEAD_AFTER allows for.
                Err(e) => tracing::warn!(lease = %key, error = %e.message, "cannot renew a lease"),
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
    }
}

async fn command(config: &Config, body: &RawDocumentBuf) -> Result<RawDocumentBuf, Error> {
    upstream::connect(config).await?.command(body).await
}
