//! What the proxy does for a client on the client's own connection, under
//! its authentication: the handle the admin commands and vector queries
//! run on ([`ForClient`]), and the rights checks every one of them makes
//! before acting (`authorize`).

use super::Shared;
use crate::conn::Connection;
use crate::error::{Code, Error};
use crate::upstream::pinned::{self as upstream};
use bson::{rawdoc, RawDocument, RawDocumentBuf};

/// A client's pinned connection and the proxy's shared state, borrowed
/// from the session for one request: what admin commands and vector
/// queries ([`super::admin`], [`super::query`]) work with. Everything they
/// read for the client goes on `upstream`, under its authentication.
pub(super) struct ForClient<'s> {
    pub(super) upstream: &'s mut Connection,
    pub(super) shared: &'s Shared,
    /// The connection's `find` rights found so far (the session's).
    pub(super) rights: &'s mut Rights,
    /// `upstream` runs as the proxy (a read sent to a secondary behind
    /// access control): rights are read from `rights` only, never probed
    /// on it or added.
    pub(super) delegated: bool,
}

/// Collections (database, name) a connection was found to have the `find`
/// right on, and when: trusted for [`RIGHTS_TTL`], forgotten when the
/// connection authenticates again, logs out or says hello
/// (`Session::read_route`).
pub(super) type Rights = std::collections::HashMap<(String, String), std::time::Instant>;

/// How long a `find` right found on a client's connection is trusted: a
/// `mongos` caches a user's rights for up to
/// `userCacheInvalidationIntervalSecs` (default 30 s) the same way.
pub(super) const RIGHTS_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Most rights one connection keeps (past this they are asked again).
const MAX_RIGHTS: usize = 1024;

impl ForClient<'_> {
    /// Whether the client's own connection may do `action` on
    /// `db.collection`, asked of the upstream with a command that needs
    /// exactly that right and touches no document (servers authorise a
    /// command before running it): `find` with `_id: {$in: []}`, an update
    /// matching `_id: {$in: []}`, an empty `createIndexes`, `listIndexes`.
    /// Only `Unauthorized` (13) refuses, with mongod's wording; any other
    /// answer (the collection does not exist yet, say) means the right is
    /// there. `command` names what the client asked for, in the message.
    pub(super) async fn authorize(
        &mut self,
        action: Action,
        db: &str,
        collection: &str,
        command: &str,
    ) -> Result<(), Error> {
        let key = (db.to_string(), collection.to_string());
        if action == Action::Find
            && self
                .rights
                .get(&key)
                .is_some_and(|found| found.elapsed() < RIGHTS_TTL)
        {
            return Ok(());
        }
        if self.delegated {
            // The session confirmed the client's rights on its own
            // connection just before sending the read here.
            return Err(unauthorized(db, collection, command, action));
        }
        self.probe(action, db, collection, command).await?;
        if action == Action::Find {
            if self.rights.len() >= MAX_RIGHTS {
                self.rights.clear();
            }
            self.rights.insert(key, std::time::Instant::now());
        }
        Ok(())
    }

    /// [`ForClient::authorize`]'s question to the upstream.
    async fn probe(
        &mut self,
        action: Action,
        db: &str,
        collection: &str,
        command: &str,
    ) -> Result<(), Error> {
        let probe = match action {
            Action::Find => rawdoc! {
                "find": collection, "filter": { "_id": { "$in": [] } },
                "limit": 1_i32, "singleBatch": true, "$db": db,
            },
            Action::Update => rawdoc! {
                "update": collection,
                "updates": [{ "q": { "_id": { "$in": [] } }, "u": { "$set": { "_likewise": true } } }],
                "$db": db,
            },
            Action::CreateIndex => {
                rawdoc! { "createIndexes": collection, "indexes": [], "$db": db }
            }
            Action::ListIndexes => rawdoc! { "listIndexes": collection, "$db": db },
        };
        // Fails closed: only a success, or an answer given after the
        // server authorised the probe, counts as the right. Anything else
        // (an invalid namespace, a dead connection) is the client's error.
        match upstream::command(self.upstream, &probe).await {
            Ok(reply) => match write_error_code(&reply) {
                // An update refused inside its reply (`writeErrors`).
                Some(13) => Err(unauthorized(db, collection, command, action)),
                Some(_) => Err(Error::upstream(
                    Code::OPERATION_FAILED,
                    format!(
                        "likewise: cannot confirm the right to {} on {db}.{collection}",
                        action.name()
                    ),
                )),
                None => Ok(()),
            },
            Err(e) if e.code.code == 13 => Err(unauthorized(db, collection, command, action)),
            Err(e) if AUTHORISED_REFUSALS.contains(&e.code.code) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

pub(super) fn bad(message: impl Into<String>) -> Error {
    Error::client(Code::BAD_VALUE, message)
}

pub(super) fn db_of(body: &RawDocument) -> Result<&str, Error> {
    let db = body.get_str("$db").map_err(|_| bad("command has no $db"))?;
    check_db_name(db)?;
    Ok(db)
}

pub(super) fn collection_of<'a>(body: &'a RawDocument, command: &str) -> Result<&'a str, Error> {
    body.get_str(command)
        .map_err(|_| bad(format!("'{command}' must name a collection")))
}

/// A server's document limit (16 MiB): the largest command the proxy
/// builds for the upstream, and the most listing results it gathers.
pub(super) const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

pub(super) fn without(doc: &RawDocument, key: &str) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for (k, v) in doc.iter().flatten() {
        if k != key {
            out.append(k, v.to_raw_bson());
        }
    }
    out
}

/// Errors a server gives only after authorising a probe, which therefore
/// confirm the right: `NamespaceNotFound` (26: `listIndexes` of a
/// collection not created yet) and `BadValue` (2: mongod refuses an empty
/// `createIndexes` once authorised).
pub(super) const AUTHORISED_REFUSALS: &[i32] = &[26, 2];

/// mongod's rule for database names: non-empty, shorter than 64 bytes,
/// none of `/\. "$*<>:|?` or NUL. (Also what keeps `a.b`+`c` and `a`+`b.c`
/// apart.)
pub(super) fn check_db_name(db: &str) -> Result<(), Error> {
    let bad_char = |c: char| "/\\. \"$*<>:|?\0".contains(c);
    if db.is_empty() || db.len() >= 64 || db.chars().any(bad_char) {
        return Err(Error::client(
            Code::INVALID_NAMESPACE,
            format!("Invalid database name: '{db}'"),
        ));
    }
    Ok(())
}

/// A right the proxy checks on the client's connection before acting for it
/// (MongoDB's privilege actions of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Find,
    Update,
    CreateIndex,
    ListIndexes,
}

impl Action {
    pub(super) fn name(self) -> &'static str {
        match self {
            Action::Find => "find",
            Action::Update => "update",
            Action::CreateIndex => "createIndex",
            Action::ListIndexes => "listIndexes",
        }
    }
}

/// mongod's refusal, naming nothing the client could not already name.
pub(super) fn unauthorized(db: &str, collection: &str, command: &str, action: Action) -> Error {
    Error::client(
        Code::relayed(13, "Unauthorized"),
        format!(
            "not authorized on {db} to execute command {command} on {collection}: \
             it needs the {} action",
            action.name()
        ),
    )
}

/// The code of the first `writeErrors` entry of a write's reply.
pub(super) fn write_error_code(reply: &RawDocument) -> Option<i32> {
    reply
        .get_array("writeErrors")
        .ok()?
        .into_iter()
        .flatten()
        .next()?
        .as_document()?
        .get_i32("code")
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_follow_mongods_rule() {
        for good in ["app", "B", "likewise", "a-b_c1"] {
            assert!(check_db_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a.b",
            "a b",
            "a/b",
            "a\\b",
            "a$b",
            "a\"b",
            "a\0b",
            &"x".repeat(64),
        ] {
            let err = check_db_name(bad).unwrap_err();
            assert_eq!(err.code.code, 73, "{bad:?}");
        }
    }
}
