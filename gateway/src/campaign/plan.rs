//! A campaign request, checked: which nodes, in which waves, when to halt. Everything here
//! is decided before anything is sent, and each mistake is refused with what to change.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Config, Link};
use crate::sources::modbus::lend::BusLines;

/// Transfers at once over Modbus TCP when the request names none.
pub const DEFAULT_TCP_PARALLEL: usize = 4;
/// Most transfers at once over Modbus TCP.
pub const MAX_TCP_PARALLEL: usize = 64;
/// How long a staged node has to come back with the new version, when the request names none.
pub const DEFAULT_VERIFY_TIMEOUT_S: f64 = 120.0;

/// A node a campaign can update: a configured Modbus device.
#[derive(Clone, Debug)]
pub struct TargetNode {
    /// Node id.
    pub id: String,
    /// Site.
    pub site: String,
    /// Node group (`[alarms.groups]`), if any.
    pub group: Option<String>,
    /// Bus name.
    pub bus: String,
    /// How the bus is reached.
    pub link: Link,
    /// Unit id.
    pub unit: u8,
    /// The bus's request timeout.
    pub timeout: Duration,
    /// The configured hardware model, if any.
    pub model: Option<String>,
}

impl TargetNode {
    /// Every Modbus device of `config`, in file order.
    pub fn from_config(config: &Config) -> Vec<TargetNode> {
        config
            .devices
            .iter()
            .filter_map(|d| {
                let bus = config.buses.iter().find(|b| b.name == d.bus)?;
                Some(TargetNode {
                    id: d.id.to_string(),
                    site: d.site.to_string(),
                    group: config
                        .node_groups
                        .iter()
                        .find(|(_, nodes)| nodes.contains(&d.id))
                        .map(|(g, _)| g.clone()),
                    bus: d.bus.clone(),
                    link: bus.link.clone(),
                    unit: d.unit,
                    timeout: bus.timeout,
                    model: d.model.clone(),
                })
            })
            .collect()
    }

    /// Whether its bus is a serial line (one transfer at a time).
    pub fn rtu(&self) -> bool {
        matches!(self.link, Link::Rtu { .. })
    }
}

/// Nodes chosen by what they are.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Select {
    /// Configured hardware model.
    pub model: Option<String>,
    /// Site.
    pub site: Option<String>,
    /// Node group.
    pub group: Option<String>,
}

/// `POST /api/campaigns`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    /// The signed image file (`tianzhong firmware sign`), base64 (standard alphabet).
    pub image_base64: String,
    /// The nodes, in order (the first `canary` are the canaries); or `select`.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Every configured Modbus node matching all given fields, in configuration order.
    pub select: Option<Select>,
    /// Nodes in the canary wave; every one of them must update, or the campaign halts.
    pub canary: usize,
    /// Sizes of the waves after the canary: positive numbers, the last may be `"rest"`.
    pub waves: Vec<serde_json::Value>,
    /// Halt when more nodes than this failed.
    pub max_failures: Option<usize>,
    /// Halt when the failed share of finished nodes is above this (0 to 1).
    pub max_failure_ratio: Option<f64>,
    /// Transfers at once over Modbus TCP; default 4.
    pub tcp_parallel: Option<usize>,
    /// Seconds a staged node has to come back with the new version; default 120.
    pub verify_timeout_s: Option<f64>,
    /// Why.
    pub reason: String,
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PlanError {
    /// A mistake in the request (400).
    Bad(String),
    /// A node the configuration does not have (404).
    Unknown(String),
}

/// The nodes a request targets, in campaign order.
pub fn targets(all: &[TargetNode], req: &NewCampaign) -> Result<Vec<TargetNode>, PlanError> {
    let bad = |m: String| Err(PlanError::Bad(m));
    match (&req.select, req.nodes.is_empty()) {
        (Some(_), false) => bad("give `nodes` or `select`, not both".into()),
        (None, true) => bad("say which nodes: `nodes` (a list of node ids) or `select` \
                             (`model`, `site` and/or `group`)"
            .into()),
        (None, false) => {
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(req.nodes.len());
            for id in &req.nodes {
                if !seen.insert(id.as_str()) {
                    return bad(format!("nodes: `{id}` is listed twice"));
                }
                let Some(t) = all.iter().find(|t| &t.id == id) else {
                    return Err(PlanError::Unknown(format!(
                        "nodes: no Modbus node `{id}` in this gateway's configuration"
                    )));
                };
                out.push(t.clone());
            }
            Ok(out)
        }
        (Some(s), true) => {
            if s.model.is_none() && s.site.is_none() && s.group.is_none() {
                return bad("select: give `model`, `site` and/or `group`".into());
            }
            let out: Vec<TargetNode> = all
                .iter()
                .filter(|t| {
                    s.model.as_ref().is_none_or(|m| t.model.as_ref() == Some(m))
                        && s.site.as_ref().is_none_or(|x| &t.site == x)
                        && s.group.as_ref().is_none_or(|g| t.group.as_ref() == Some(g))
                })
                .cloned()
                .collect();
            if out.is_empty() {
                return bad(format!(
                    "select: no configured Modbus node matches {}",
                    [("model", &s.model), ("site", &s.site), ("group", &s.group)]
                        .iter()
                        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} `{v}`")))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Ok(out)
        }
    }
}

/// Every target can be reached: a Modbus TCP node directly, a Modbus RTU node through the
/// task polling its bus, which holds the serial port (locked) and lends it between polls
/// (`buses`). An RTU bus without a lent line — campaigns opened without the gateway's bus
/// tasks — is refused here with the reason rather than failing on every node.
pub fn check_links(targets: &[TargetNode], buses: &BusLines) -> Result<(), PlanError> {
    match targets
        .iter()
        .find(|t| t.rtu() && buses.get(&t.bus).is_none())
    {
        Some(t) => Err(PlanError::Bad(format!(
            "node `{}` (bus {}, unit {}) is on a Modbus RTU bus that no bus task of this \
             gateway polls, so nothing can carry the transfer; flash it with `tianzhong \
             flash` instead",
            t.id, t.bus, t.unit
        ))),
        None => Ok(()),
    }
}

/// Every target is configured as the model the image is built for.
pub fn check_models(targets: &[TargetNode], image_model: &str) -> Result<(), PlanError> {
    for t in targets {
        match &t.model {
            None => {
                return Err(PlanError::Bad(format!(
                    "node `{}` (bus {}, unit {}) has no `model` in the configuration, so the \
                     gateway cannot check that the image (built for {image_model}) fits it",
                    t.id, t.bus, t.unit
                )));
            }
            Some(m) if m != image_model => {
                return Err(PlanError::Bad(format!(
                    "node `{}` (bus {}, unit {}) is a {m}; the image is built for {image_model}",
                    t.id, t.bus, t.unit
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Nodes per wave for `n` nodes: the canary wave, then `waves` (a wave larger than what is
/// left takes what is left; `"rest"`, last, takes all that is left).
pub fn waves(
    n: usize,
    canary: usize,
    waves: &[serde_json::Value],
) -> Result<Vec<usize>, PlanError> {
    let bad = |m: String| Err(PlanError::Bad(m));
    if canary == 0 {
        return bad("canary: at least 1 node".into());
    }
    if canary > n {
        return bad(format!(
            "canary: {canary} nodes, but the campaign targets {n}"
        ));
    }
    let mut out = vec![canary];
    let mut left = n - canary;
    for (i, w) in waves.iter().enumerate() {
        let size = match w {
            serde_json::Value::String(s) if s == "rest" => {
                if i + 1 != waves.len() {
                    return bad(format!("waves[{i}]: \"rest\" must be the last wave"));
                }
                left
            }
            v => match v.as_u64() {
                Some(k) if k > 0 => (k as usize).min(left),
                _ => {
                    return bad(format!(
                        "waves[{i}]: `{v}` is not a wave size: a number above 0, or \"rest\" last"
                    ));
                }
            },
        };
        if size > 0 {
            out.push(size);
            left -= size;
        }
    }
    if left > 0 {
        return bad(format!(
            "waves: the canary and waves cover {} of {n} nodes; add waves or end with \"rest\"",
            n - left
        ));
    }
    Ok(out)
}

/// The halt threshold, transfers at once and verification timeout of a request.
pub fn limits(req: &NewCampaign) -> Result<(super::state::Threshold, usize, f64), PlanError> {
    let bad = |m: &str| Err(PlanError::Bad(m.to_owned()));
    if req.max_failures.is_none() && req.max_failure_ratio.is_none() {
        return bad("give a halt threshold: `max_failures` and/or `max_failure_ratio`");
    }
    if let Some(r) = req.max_failure_ratio
        && !(0.0..1.0).contains(&r)
    {
        return bad("max_failure_ratio: a fraction from 0 to below 1");
    }
    let parallel = req.tcp_parallel.unwrap_or(DEFAULT_TCP_PARALLEL);
    if !(1..=MAX_TCP_PARALLEL).contains(&parallel) {
        return Err(PlanError::Bad(format!(
            "tcp_parallel: 1 to {MAX_TCP_PARALLEL}"
        )));
    }
    let verify = req.verify_timeout_s.unwrap_or(DEFAULT_VERIFY_TIMEOUT_S);
    if !(verify.is_finite() && verify > 0.0 && verify <= 3600.0) {
        return bad("verify_timeout_s: above 0, at most 3600");
    }
    if req.reason.trim().is_empty() {
        return bad("reason: say why");
    }
    Ok((
        super::state::Threshold {
            max_failures: req.max_failures,
            max_failure_ratio: req.max_failure_ratio,
        },
        parallel,
        verify,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn w(v: serde_json::Value) -> Vec<serde_json::Value> {
        v.as_array().unwrap().clone()
    }

    fn node(id: &str, link: Link, model: Option<&str>) -> TargetNode {
        TargetNode {
            id: id.into(),
            site: "s".into(),
            group: None,
            bus: "b".into(),
            link,
            unit: 1,
            timeout: Duration::from_secs(1),
            model: model.map(Into::into),
        }
    }

    #[test]
    fn targets_must_be_reachable_nodes_of_the_images_model() {
        let tcp = Link::Tcp {
            address: "127.0.0.1:502".into(),
        };
        let rtu = Link::Rtu {
            device: "/dev/ttyS1".into(),
            baud: 9600,
            parity: crate::config::Parity::Even,
            stop_bits: crate::config::StopBits::One,
        };
        let good = node("a", tcp.clone(), Some("TZ-1"));
        let none = BusLines::default();
        assert_eq!(check_links(std::slice::from_ref(&good), &none), Ok(()));
        let r = node("r", rtu.clone(), Some("TZ-1"));
        assert!(matches!(
            check_links(&[good.clone(), r.clone()], &none),
            Err(PlanError::Bad(m)) if m.contains("`r`") && m.contains("bus b")
        ));
        // A bus that a task polls lends its line: its nodes are campaign targets.
        let config = crate::config::parse(
            "[gateway]\nid = \"g\"\ndata_dir = \"/tmp\"\n[[bus]]\nname = \"b\"\n\
             kind = \"modbus_rtu\"\ndevice = \"/dev/ttyS1\"\nbaud = 9600\n[[device]]\n\
             id = \"r\"\nsite = \"s\"\nbus = \"b\"\nunit = 1\npoll_interval_s = 5\n\
             profile = \"tianzhong\"\nquantities = [\"combustible_gas\"]\n",
            std::path::Path::new("t.toml"),
            &|_| None,
        )
        .unwrap();
        let (lines, receivers) = BusLines::for_config(&config);
        assert!(lines.get("b").is_some() && receivers.contains_key("b"));
        assert_eq!(check_links(&[good.clone(), r], &lines), Ok(()));
        assert_eq!(check_models(std::slice::from_ref(&good), "TZ-1"), Ok(()));
        assert!(matches!(
            check_models(std::slice::from_ref(&good), "TZ-2"),
            Err(PlanError::Bad(m)) if m.contains("is a TZ-1; the image is built for TZ-2")
        ));
        assert!(matches!(
            check_models(&[node("x", tcp, None)], "TZ-1"),
            Err(PlanError::Bad(m)) if m.contains("no `model`")
        ));
    }

    #[test]
    fn waves_cover_every_node_once() {
        assert_eq!(
            waves(100, 5, &w(json!([10, 25, "rest"]))),
            Ok(vec![5, 10, 25, 60])
        );
        assert_eq!(
            waves(30, 5, &w(json!([10, 25, "rest"]))),
            Ok(vec![5, 10, 15])
        );
        assert_eq!(waves(5, 5, &w(json!([]))), Ok(vec![5]));
        assert!(
            matches!(waves(100, 5, &w(json!([10, 25]))), Err(PlanError::Bad(m)) if m.contains("cover 40 of 100"))
        );
        assert!(matches!(
            waves(100, 0, &w(json!(["rest"]))),
            Err(PlanError::Bad(_))
        ));
        assert!(matches!(
            waves(3, 5, &w(json!(["rest"]))),
            Err(PlanError::Bad(_))
        ));
        assert!(
            matches!(waves(100, 5, &w(json!(["rest", 10]))), Err(PlanError::Bad(m)) if m.contains("last"))
        );
        assert!(
            matches!(waves(100, 5, &w(json!([0, "rest"]))), Err(PlanError::Bad(m)) if m.contains("waves[0]"))
        );
        assert!(matches!(
            waves(100, 5, &w(json!([-3, "rest"]))),
            Err(PlanError::Bad(_))
        ));
        assert!(matches!(
            waves(100, 5, &w(json!(["all"]))),
            Err(PlanError::Bad(_))
        ));
    }
}
