//! The fleet: every virtual node of a scenario, stepped through simulated time.
//!
//! Stepping is separate from serving: [`Fleet::step_to`] advances every node to a simulated
//! instant, sampling at each due time in between, whatever the host's scheduling did; the
//! transports only read the nodes' registers and publish their rounds. A node sits behind a
//! mutex that a transport holds only while it answers one request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::clock::{SimClock, SimMs};
use crate::fault::FaultBoard;
use crate::node::{NodeError, Round, VirtualNode};
use crate::spec::{BusSpec, FleetSpec};
use crate::truth::GroundTruth;

/// Why a fleet could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A node could not be built.
    #[error("node {node}: {source}")]
    Node {
        /// The node.
        node: String,
        /// Why.
        source: NodeError,
    },
}

/// A round of one node, for the transports that publish.
pub type NodeRound = (usize, Round);

/// The running fleet.
pub struct Fleet {
    nodes: Vec<Arc<Mutex<VirtualNode>>>,
    ids: HashMap<String, usize>,
    bus_of: Vec<Arc<str>>,
    /// The buses.
    pub buses: Vec<BusSpec>,
    /// Simulated time.
    pub clock: SimClock,
    /// Faults in force.
    pub faults: FaultBoard,
    /// Ground truth.
    pub truth: GroundTruth,
    subscribers: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<NodeRound>>>>,
    stepped_to: Mutex<SimMs>,
}

impl Fleet {
    /// Builds every node of `spec` and schedules its faults. `keep_samples` keeps the sample
    /// log in memory (see [`GroundTruth::new`]).
    pub fn build(
        spec: &FleetSpec,
        clock: SimClock,
        keep_samples: bool,
    ) -> Result<Fleet, FleetError> {
        let truth = GroundTruth::new(keep_samples);
        let faults = FaultBoard::default();
        for f in &spec.faults {
            faults.add(f.clone());
        }
        let mut nodes = Vec::with_capacity(spec.nodes.len());
        let mut ids = HashMap::with_capacity(spec.nodes.len());
        let mut bus_of = Vec::with_capacity(spec.nodes.len());
        for (i, n) in spec.nodes.iter().enumerate() {
            let mut node = VirtualNode::new(n, spec.seed, &spec.base_dir).map_err(|source| {
                FleetError::Node {
                    node: n.id.to_string(),
                    source,
                }
            })?;
            node.set_truth(truth.clone());
            bus_of.push(Arc::clone(&node.bus));
            ids.insert(n.id.to_string(), i);
            nodes.push(Arc::new(Mutex::new(node)));
        }
        Ok(Fleet {
            nodes,
            ids,
            bus_of,
            buses: spec.buses.clone(),
            clock,
            faults,
            truth,
            subscribers: Mutex::default(),
            stepped_to: Mutex::new(0),
        })
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the fleet has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`, locked. A poisoned lock (a panic while serving) still yields the node: its
    /// state is plain data that the panic did not leave half-written in a way that matters.
    pub fn node(&self, i: usize) -> MutexGuard<'_, VirtualNode> {
        self.nodes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of the node with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.ids.get(id).copied()
    }

    /// The name of node `i`'s bus.
    pub fn bus_of(&self, i: usize) -> &str {
        &self.bus_of[i]
    }

    /// The indices of the nodes on `bus`.
    pub fn nodes_on_bus(&self, bus: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| &*self.bus_of[*i] == bus)
            .collect()
    }

    /// Rounds sampled by the nodes of `bus` from now on.
    pub fn subscribe_rounds(&self, bus: &str) -> mpsc::UnboundedReceiver<NodeRound> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(bus.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    /// How far the fleet has been stepped.
    pub fn stepped_to(&self) -> SimMs {
        *self.stepped_to.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Advances every node to simulated time `t`; returns the number of rounds sampled.
    pub fn step_to(&self, t: SimMs) -> usize {
        let mut stepped = self.stepped_to.lock().unwrap_or_else(|e| e.into_inner());
        if t < *stepped {
            return 0;
        }
        let subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut count = 0;
        for i in 0..self.nodes.len() {
            let mut node = self.node(i);
            if node.next_due_ms() > t {
                continue;
            }
            let (id, bus) = (Arc::clone(&node.id), Arc::clone(&node.bus));
            let rounds = node.advance_with(t, |at| self.faults.active(&id, &bus, at));
            drop(node);
            count += rounds.len();
            if let Some(subs) = subscribers.get(&*self.bus_of[i]) {
                for round in rounds {
                    for s in subs {
                        let _ = s.send((i, round.clone()));
                    }
                }
            }
        }
        *stepped = t;
        count
    }

    /// Steps the fleet along its clock every `tick` of real time, for ever.
    pub async fn run(self: Arc<Self>, tick: Duration) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let fleet = Arc::clone(&self);
            let t = fleet.clock.now();
            // Stepping thousands of nodes is CPU work; keep it off the transports' threads.
            let _ = tokio::task::spawn_blocking(move || fleet.step_to(t)).await;
        }
    }
}
