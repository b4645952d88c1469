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
    /// primary, left out of selection until the driver's view of them
    /// changes.
    demoted: Vec<ServerAddress>,
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

    /// Servers that can take `role` now (demoted ones left out).
    pub fn candidates(&self, role: Role) -> Vec<&ServerAddress> {
        self.servers
            .iter()
            .filter(|s| role.server_type().contains(&s.kind))
            .filter(|s| !self.demoted.contains(&s.address))
            .map(|s| &s.address)
            .collect()
    }

    /// Whether a connection pinned as `pin` still reaches a server in its
    /// role; `false` is a failover (the primary stepped down or is gone, a
    /// router is down).
    pub fn still_serves(&self, pin: &Pin) -> bool {
        !self.demoted.contains(&pin.address)
            && self
                .servers
                .iter()
                .any(|s| s.address == pin.address && pin.role.server_type().contains(&s.kind))
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
    /// Round-robin position over `mongos` routers.
    next_router: AtomicUsize,
    /// Servers reported demoted, and when.
    demoted: Mutex<Vec<(ServerAddress, Instant)>>,
}

/// Longest a server stays out of selection on a "not primary" reply alone,
/// without the driver's view confirming it.
const DEMOTION: Duration = Duration::from_secs(10);

impl Default for Topology {
    fn default() -> Topology {
        Topology {
            view: watch::Sender::new(View::default()),
            next_router: AtomicUsize::new(0),
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
                error: info.error().map(ToString::to_string),
            })
            .collect();
        servers.sort_by_key(|s| s.address.to_string());
        let kind = description.topology_type();
        self.view.send_modify(|view| {
            // A demotion ends once the driver has seen the server change.
            let changed: Vec<&ServerAddress> = servers
                .iter()
                .filter(|s| !view.servers.contains(s))
                .map(|s| &s.address)
                .collect();
            let mut demoted = self.demoted.lock().unwrap_or_else(|e| e.into_inner());
            demoted.retain(|(a, at)| !changed.contains(&a) && at.elapsed() < DEMOTION);
            view.demoted = demoted.iter().map(|(a, _)| a.clone()).collect();
            view.kind = kind;
            view.servers = servers;
        });
    }

    /// Records that `address` answered a pinned request with a "not
    /// primary" error: new connections avoid it until the driver's view of
    /// it changes (or [`DEMOTION`] passes), and sessions pinned to it see
    /// a failover.
    /// `false` when it already was.
    pub fn demote(&self, address: &ServerAddress) -> bool {
        let mut demoted = self.demoted.lock().unwrap_or_else(|e| e.into_inner());
        if demoted.iter().any(|(a, _)| a == address) {
            return false;
        }
        demoted.push((address.clone(), Instant::now()));
        let list: Vec<ServerAddress> = demoted.iter().map(|(a, _)| a.clone()).collect();
        drop(demoted);
        self.view.send_modify(|view| view.demoted = list);
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
    /// replica set, the next `mongos` of a sharded cluster (round-robin),
    /// the server of a standalone; `role` asks for another (a secondary).
    /// Waits up to `wait` for the topology to offer one, then errors with
    /// `HostUnreachable` (a `mongos` without a reachable shard primary
    /// answers alike), naming what it saw.
    pub async fn select(&self, role: Option<Role>, wait: Duration) -> Result<Pin, Error> {
        let mut views = self.subscribe();
        let pick = |view: &View| -> Option<Pin> {
            let role = role.or_else(|| view.write_role())?;
            let candidates = view.candidates(role);
            if candidates.is_empty() {
                return None;
            }
            let i = if role == Role::Router || role == Role::Secondary {
                self.next_router.fetch_add(1, Ordering::Relaxed) % candidates.len()
            } else {
                0
            };
            Some(Pin {
                address: candidates[i].clone(),
                role,
            })
        };
        let found = tokio::time::timeout(wait, async {
            loop {
                if let Some(pin) = pick(&views.borrow_and_update()) {
                    return Some(pin);
                }
                if views.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match found {
            Ok(Some(pin)) => Ok(pin),
            _ => {
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

    #[tokio::test]
    async fn selection_waits_for_a_primary_and_spreads_over_routers() {
        let topology = Topology::default();
        let wait = topology.select(None, Duration::from_millis(50)).await;
        assert_eq!(wait.unwrap_err().code.code, Code::HOST_UNREACHABLE.code);
        topology.view.send_replace(view(
            TopologyType::Sharded,
            &[(1, ServerType::Mongos), (2, ServerType::Mongos)],
        ));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let pin = topology.select(None, Duration::ZERO).await.unwrap();
            assert_eq!(pin.role, Role::Router);
            seen.insert(pin.address.to_string());
        }
        assert_eq!(seen.len(), 2);
        topology.demote(&addr(1));
        for _ in 0..3 {
            let pin = topology.select(None, Duration::ZERO).await.unwrap();
            assert_eq!(pin.address, addr(2));
        }
    }
}
