//! The deployment's shape as the driver's server discovery and monitoring
//! (SDAM) sees it, and which server a new client connection is pinned to.
//!
//! The driver publishes a `TopologyDescriptionChanged` event whenever a
//! heartbeat or an operation changes what it knows; [`Topology::update`]
//! turns each into a [`View`] and publishes it on a watch channel. Sessions
//! pick their server from the latest view ([`Topology::select`]) and watch
//! later views for the moment their server no longer has the role they
//! chose it for ([`View::still_serves`]): that is a failover.

use crate::error::{Code, Error};
use mongodb::event::sdam::TopologyDescription;
use mongodb::options::ServerAddress;
use mongodb::{ServerType, TopologyType};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One server of the deployment as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub address: ServerAddress,
    pub kind: ServerType,
    /// Why the last check of an `Unknown` server failed.
    pub error: Option<String>,
    /// The member's replica-set tags.
    pub tags: TagSet,
}

/// A replica-set member's tags, or one tag set of a read preference
/// (sorted pairs).
pub type TagSet = Vec<(String, String)>;

/// Whether `server_tags` has every pair of `wanted` (the read-preference
/// rule: an empty set matches every member).
fn tags_match(server_tags: &TagSet, wanted: &TagSet) -> bool {
    wanted.iter().all(|pair| server_tags.contains(pair))
}

/// What a client connection's server was chosen to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The replica set's primary.
    Primary,
    /// One of the sharded cluster's `mongos` routers.
    Router,
    /// The one server of a standalone (or `directConnection`) deployment.
    Single,
    /// A replica-set secondary (reads with a secondary read preference).
    Secondary,
}

impl Role {
    /// The SDAM server type this role needs.
    fn server_type(self) -> &'static [ServerType] {
        match self {
            Role::Primary => &[ServerType::RsPrimary],
            Role::Router => &[ServerType::Mongos],
            Role::Single => &[
                ServerType::Standalone,
                ServerType::RsPrimary,
                ServerType::RsSecondary,
                ServerType::Mongos,
            ],
            Role::Secondary => &[ServerType::RsSecondary],
        }
    }

    /// The name metrics and logs use.
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Router => "mongos",
            Role::Single => "standalone",
            Role::Secondary => "secondary",
        }
    }
}

/// A client connection's server and the role it was chosen for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub address: ServerAddress,
    pub role: Role,
}

/// The deployment as of one SDAM event.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// `Unknown` until the first servers answer.
    pub kind: TopologyType,
    pub servers: Vec<Server>,
    /// Servers a reply on a pinned connection reported as no longer
    /// primary, and when: left out of selection until the driver's view of
    /// them changes or [`DEMOTION`] passes.
    demoted: Vec<(ServerAddress, Instant)>,
}

impl View {
    /// The role a new connection for writes (and primary reads) takes in
    /// this topology, `None` while it is unknown.
    pub fn write_role(&self) -> Option<Role> {
        match self.kind {
            TopologyType::Single => Some(Role::Single),
            TopologyType::ReplicaSetNoPrimary | TopologyType::ReplicaSetWithPrimary => {
                Some(Role::Primary)
            }
            TopologyType::Sharded => Some(Role::Router),
            _ => None,
        }
    }

    /// Servers the driver lists but has not checked yet (`Unknown`
    /// without a failed check): what they are is still to come.
    fn unchecked(&self) -> impl Iterator<Item = &ServerAddress> {
        self.servers
            .iter()
            .filter(|s| s.kind == ServerType::Unknown && s.error.is_none())
            .map(|s| &s.address)
    }

    /// Servers that can take `role` now (demoted ones left out).
    pub fn candidates(&self, role: Role) -> Vec<&ServerAddress> {
        self.tagged(role, &[])
    }

    /// Servers that can take `role` now whose tags match the first of
    /// `tag_sets` any of them matches (no tag sets: all of them), as the
    /// server-selection specification applies a read preference's tags.
    pub fn tagged(&self, role: Role, tag_sets: &[TagSet]) -> Vec<&ServerAddress> {
        let eligible: Vec<&Server> = self
            .servers
            .iter()
            .filter(|s| role.server_type().contains(&s.kind))
            .filter(|s| !self.is_demoted(&s.address))
            .collect();
        if tag_sets.is_empty() {
            return eligible.iter().map(|s| &s.address).collect();
        }
        for wanted in tag_sets {
            let matching: Vec<&ServerAddress> = eligible
                .iter()
                .filter(|s| tags_match(&s.tags, wanted))
                .map(|s| &s.address)
                .collect();
            if !matching.is_empty() {
                return matching;
            }
        }
        Vec::new()
    }

    /// Whether `address` was demoted less than [`DEMOTION`] ago.
    fn is_demoted(&self, address: &ServerAddress) -> bool {
        self.demoted
            .iter()
            .any(|(a, at)| a == address && at.elapsed() < DEMOTION)
    }

    /// Whether a connection pinned as `pin` may go on serving: `false` (a
    /// failover) only once its server is known to have left its role —
    /// reported in another role (a primary that stepped down, a member
    /// removed), replaced by another primary, gone from the topology, or
    /// demoted by a "not primary" reply. A server merely `Unknown` (a
    /// missed heartbeat, a pool cleared by one failed operation) keeps its
    /// connections: a request in flight there either gets its reply or
    /// fails on its own socket.
    pub fn still_serves(&self, pin: &Pin) -> bool {
        if self.is_demoted(&pin.address) {
            return false;
        }
        let Some(server) = self.servers.iter().find(|s| s.address == pin.address) else {
            // Not in the topology at all: removed from the set, or the
            // topology not known yet (then nothing was pinned from it).
            return self.servers.is_empty();
        };
        if server.kind == ServerType::Unknown {
            // Unknown: still serving unless another server took its role.
            return !(pin.role == Role::Primary
                && self
                    .servers
                    .iter()
                    .any(|s| s.kind == ServerType::RsPrimary && s.address != pin.address));
        }
        pin.role.server_type().contains(&server.kind)
    }

    /// Whether writes can be served: a primary, a router or the single
    /// server is known.
    pub fn writable(&self) -> bool {
        self.write_role()
            .is_some_and(|role| !self.candidates(role).is_empty())
    }

    /// Whether the deployment is one standalone server (`hello` without
    /// `setName` or `msg: "isdbgrid"`): clients are presented a standalone.
    pub fn is_standalone(&self) -> bool {
        self.kind == TopologyType::Single
            && self
                .servers
                .iter()
                .any(|s| s.kind == ServerType::Standalone)
    }
}

/// The latest [`View`], shared by every session.
pub struct Topology {
    view: watch::Sender<View>,
    /// Round-robin position over secondaries.
    next_secondary: AtomicUsize,
    /// Servers reported demoted, and when.
    demoted: Mutex<Vec<(ServerAddress, Instant)>>,
}

/// How often a waiting selection looks again without a new view.
const RECHECK: Duration = Duration::from_millis(500);

/// Longest a server stays out of selection on a "not primary" reply alone,
/// without the driver's view confirming it.
const DEMOTION: Duration = Duration::from_secs(10);

impl Default for Topology {
    fn default() -> Topology {
        Topology {
            view: watch::Sender::new(View::default()),
            next_secondary: AtomicUsize::new(0),
            demoted: Mutex::new(Vec::new()),
        }
    }
}

impl Topology {
    /// Takes in a new description from the driver's SDAM events.
    pub fn update(&self, description: &TopologyDescription) {
        let mut servers: Vec<Server> = description
            .servers()
            .into_iter()
            .map(|(address, info)| Server {
                address: address.clone(),
                kind: info.server_type(),
                error: info.error().map(|e| e.kind.to_string()),
                tags: info
                    .tags()
                    .map(|t| {
                        let mut tags: TagSet =
                            t.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                        tags.sort();
                        tags
                    })
                    .unwrap_or_default(),
            })
            .collect();
        servers.sort_by_key(|s| s.address.to_string());
        let kind = description.topology_type();
        // One lock for the demotions and the view, so a demotion and an
        // update never overwrite each other.
        let mut demoted = self.demoted.lock().unwrap_or_else(|e| e.into_inner());
        self.view.send_modify(|view| {
            // A demotion ends once the driver has seen the server change.
            let changed: Vec<&ServerAddress> = servers
                .iter()
                .filter(|s| {
                    view.servers
                        .iter()
                        .find(|old| old.address == s.address)
                        .is_none_or(|old| old.kind != s.kind)
                })
                .map(|s| &s.address)
                .collect();
            demoted.retain(|(a, at)| !changed.contains(&a) && at.elapsed() < DEMOTION);
            view.demoted = demoted.clone();
            view.kind = kind;
            view.servers = servers;
        });
    }

    /// Records that `address` answered a pinned request with a "not
    /// primary" error: new connections avoid it until the driver's view of
    /// it changes (or [`DEMOTION`] passes), and sessions pinned to it see
    /// a failover. `false` when it already was.
    pub fn demote(&self, address: &ServerAddress) -> bool {
        let mut demoted = self.demoted.lock().unwrap_or_else(|e| e.into_inner());
        demoted.retain(|(_, at)| at.elapsed() < DEMOTION);
        if demoted.iter().any(|(a, _)| a == address) {
            return false;
        }
        demoted.push((address.clone(), Instant::now()));
        self.view.send_modify(|view| view.demoted = demoted.clone());
        true
    }

    /// The latest view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// A receiver that sees every later view.
    pub fn subscribe(&self) -> watch::Receiver<View> {
        self.view.subscribe()
    }

    /// The server a new client connection is pinned to: the primary of a
    /// replica set, the server of a standalone, and for a sharded cluster
    /// the `mongos` that `affinity` (the client's address) ranks first by
    /// rendezvous hashing (Thaler and Ravishankar's highest random
    /// weight): every connection of one client host goes to the same
    /// router, as drivers need (they send a cursor's `getMore`s and a
    /// transaction's statements on any pooled connection to what they see
    /// as one `mongos`), different hosts spread over the routers, and a
    /// router leaving moves only its own clients. `role` asks for another
    /// server (a secondary, spread round-robin).
    /// Waits up to `wait` for the topology to offer one, then errors with
    /// `HostUnreachable` (a `mongos` without a reachable shard primary
    /// answers alike), naming what it saw.
    /// A router still unchecked that would outrank the best one answering
    /// is waited for too (so a client host's first connections, made
    /// during discovery, go where its later ones will); when the wait ends
    /// first, the best router answering is taken.
    /// `tag_sets` narrows the choice as a read preference's tags do.
    /// The wait is `wait` counted from `since`.
    pub async fn select(
        &self,
        role: Option<Role>,
        tag_sets: &[TagSet],
        affinity: &str,
        wait: Duration,
        since: Instant,
    ) -> Result<Pin, Error> {
        let mut views = self.subscribe();
        // `settled`: take the best router answering now even if a router
        // not yet checked would outrank it (only once the wait is over).
        let pick = |view: &View, settled: bool| -> Option<Pin> {
            let role = role.or_else(|| view.write_role())?;
            let candidates = view.tagged(role, tag_sets);
            if candidates.is_empty() {
                return None;
            }
            let address = match role {
                Role::Router => {
                    let weight = |a: &ServerAddress| rendezvous(affinity, &a.to_string());
                    let best = candidates.iter().copied().max_by_key(|a| weight(a))?;
                    // While discovery has not checked every router, the
                    // winner may be one still unknown: pinning to the best
                    // one seen so far would split a client host's
                    // connections over two routers.
                    if !settled && view.unchecked().any(|a| weight(a) > weight(best)) {
                        return None;
                    }
                    best
                }
                Role::Secondary => {
                    let i = self.next_secondary.fetch_add(1, Ordering::Relaxed);
                    candidates[i % candidates.len()]
                }
                Role::Primary | Role::Single => candidates[0],
            };
            Some(Pin {
                address: address.clone(),
                role,
            })
        };
        let found = tokio::time::timeout(wait.saturating_sub(since.elapsed()), async {
            loop {
                if let Some(pin) = pick(&views.borrow_and_update(), false) {
                    return Some(pin);
                }
                // Woken by a new view, or at the latest when a demotion
                // may have expired.
                if let Ok(Err(_)) = tokio::time::timeout(RECHECK, views.changed()).await {
                    return None;
                }
            }
        })
        .await;
        let found = match found {
            Ok(Some(pin)) => Some(pin),
            _ => pick(&self.view(), true),
        };
        match found {
            Some(pin) => Ok(pin),
            None => {
                let view = self.view();
                let seen: Vec<String> = view
                    .servers
                    .iter()
                    .map(|s| match &s.error {
                        Some(why) => format!("{} ({:?}: {why})", s.address, s.kind),
                        None => format!("{} ({:?})", s.address, s.kind),
                    })
                    .collect();
                let wanted = role
                    .or_else(|| view.write_role())
                    .map_or("server", Role::name);
                Err(Error::upstream(
                    Code::HOST_UNREACHABLE,
                    format!(
                        "likewise: upstream unreachable: no {wanted} of the deployment answered \
                         within {} ms (topology {:?}; servers: {})",
                        wait.as_millis(),
                        view.kind,
                        if seen.is_empty() {
                            "none".to_string()
                        } else {
                            seen.join(", ")
                        }
                    ),
                ))
            }
        }
    }
}

/// The rendezvous weight of `server` for `client`: a hash of both
/// (SHA-256, so every proxy ranks alike).
fn rendezvous(client: &str, server: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(client.as_bytes())
        .chain_update([0])
        .chain_update(server.as_bytes())
        .finalize();
    u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> ServerAddress {
        ServerAddress::Tcp {
            host: "127.0.0.1".into(),
            port: Some(port),
        }
    }

    fn view(kind: TopologyType, servers: &[(u16, ServerType)]) -> View {
        View {
            kind,
            servers: servers
                .iter()
                .map(|(p, k)| Server {
                    address: addr(*p),
                    kind: *k,
                    error: None,
                    tags: Vec::new(),
                })
                .collect(),
            demoted: Vec::new(),
        }
    }

    #[test]
    fn roles_follow_the_topology() {
        let rs = view(
            TopologyType::ReplicaSetWithPrimary,
            &[(1, ServerType::RsSecondary), (2, ServerType::RsPrimary)],
        );
        assert_eq!(rs.write_role(), Some(Role::Primary));
        assert_eq!(rs.candidates(Role::Primary), [&addr(2)]);
        assert_eq!(rs.candidates(Role::Secondary), [&addr(1)]);
        let pin = Pin {
            address: addr(2),
            role: Role::Primary,
        };
        assert!(rs.still_serves(&pin));
        let stepped_down = view(
            TopologyType::ReplicaSetWithPrimary,
            &[(1, ServerType::RsPrimary), (2, ServerType::RsSecondary)],
        );
        assert!(!stepped_down.still_serves(&pin));
        let no_primary = view(
            TopologyType::ReplicaSetNoPrimary,
            &[(1, ServerType::RsSecondary), (2, ServerType::Unknown)],
        );
        assert!(!no_primary.writable());
        let sharded = view(
            TopologyType::Sharded,
            &[(1, ServerType::Mongos), (2, ServerType::Mongos)],
        );
        assert_eq!(sharded.candidates(Role::Router).len(), 2);
        let single = view(TopologyType::Single, &[(1, ServerType::Standalone)]);
        assert!(single.is_standalone() && single.writable());
    }

    #[test]
    fn an_unknown_primary_keeps_its_connections_until_another_takes_over() {
        let pin = Pin {
            address: addr(2),
            role: Role::Primary,
        };
        let blip = view(
            TopologyType::ReplicaSetNoPrimary,
            &[(1, ServerType::RsSecondary), (2, ServerType::Unknown)],
        );
        assert!(blip.still_serves(&pin));
        let replaced = view(
            TopologyType::ReplicaSetWithPrimary,
            &[(1, ServerType::RsPrimary), (2, ServerType::Unknown)],
        );
        assert!(!replaced.still_serves(&pin));
        let removed = view(
            TopologyType::ReplicaSetWithPrimary,
            &[(1, ServerType::RsPrimary)],
        );
        assert!(!removed.still_serves(&pin));
    }

    #[tokio::test]
    async fn selection_waits_and_keeps_each_client_host_on_one_router() {
        let topology = Topology::default();
        let wait = topology
            .select(
                None,
                &[],
                "10.0.0.1",
                Duration::from_millis(50),
                Instant::now(),
            )
            .await;
        assert_eq!(wait.unwrap_err().code.code, Code::HOST_UNREACHABLE.code);
        topology.view.send_replace(view(
            TopologyType::Sharded,
            &[
                (1, ServerType::Mongos),
                (2, ServerType::Mongos),
                (3, ServerType::Mongos),
            ],
        ));
        let pick = |client: String| {
            let topology = &topology;
            async move {
                topology
                    .select(None, &[], &client, Duration::ZERO, Instant::now())
                    .await
                    .unwrap()
            }
        };
        // One host: always the same router.
        let first = pick("10.0.0.1".into()).await;
        assert_eq!(first.role, Role::Router);
        for _ in 0..5 {
            assert_eq!(pick("10.0.0.1".into()).await, first);
        }
        // Many hosts: every router gets some.
        let mut by_host = std::collections::HashMap::new();
        for i in 0..60 {
            let host = format!("10.0.1.{i}");
            by_host.insert(host.clone(), pick(host).await.address);
        }
        let used: std::collections::HashSet<_> = by_host.values().collect();
        assert_eq!(used.len(), 3);
        // A router leaving (demoted) moves only the hosts it had.
        let gone = first.address.clone();
        topology.demote(&gone);
        for (host, before) in &by_host {
            let now = pick(host.clone()).await.address;
            assert_ne!(now, gone);
            if *before != gone {
                assert_eq!(&now, before, "{host} moved although its router stayed");
            }
        }
    }

    #[tokio::test]
    async fn a_router_still_unchecked_is_waited_for_when_it_would_win() {
        let topology = std::sync::Arc::new(Topology::default());
        let discovering = view(
            TopologyType::Sharded,
            &[(1, ServerType::Mongos), (2, ServerType::Unknown)],
        );
        topology.view.send_replace(discovering);
        // A host that ranks router 2 first.
        let host = (0..)
            .map(|i| format!("10.0.2.{i}"))
            .find(|h| rendezvous(h, &addr(2).to_string()) > rendezvous(h, &addr(1).to_string()))
            .unwrap();
        // Discovery never finishes: after the wait, the router answering.
        let fallback = topology
            .select(None, &[], &host, Duration::from_millis(50), Instant::now())
            .await
            .unwrap();
        assert_eq!(fallback.address, addr(1));
        // Discovery finishes during the wait: the host's own router.
        let waiting = {
            let topology = topology.clone();
            let host = host.clone();
            tokio::spawn(async move {
                topology
                    .select(None, &[], &host, Duration::from_secs(30), Instant::now())
                    .await
            })
        };
        tokio::task::yield_now().await;
        topology.view.send_replace(view(
            TopologyType::Sharded,
            &[(1, ServerType::Mongos), (2, ServerType::Mongos)],
        ));
        assert_eq!(waiting.await.unwrap().unwrap().address, addr(2));
        // A router whose check failed is not waited for.
        let mut failed = view(
            TopologyType::Sharded,
            &[(1, ServerType::Mongos), (2, ServerType::Unknown)],
        );
        failed.servers[1].error = Some("connection refused".into());
        topology.view.send_replace(failed);
        let pin = topology
            .select(None, &[], &host, Duration::ZERO, Instant::now())
            .await
            .unwrap();
        assert_eq!(pin.address, addr(1));
    }
}
