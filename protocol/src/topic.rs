//! The MQTT topic scheme.
//!
//! `tianzhong/v1/{site}/{node}/{kind}`, where `kind` is one of:
//!
//! | kind | direction | payload | retained |
//! |---|---|---|---|
//! | `telemetry` | node → gateway | [`Telemetry`](crate::payload::Telemetry) JSON | no |
//! | `frame` | node → gateway | binary [`UplinkFrame`](crate::frame::UplinkFrame) | no |
//! | `status` | node → gateway | [`NodeStatus`](crate::payload::NodeStatus) JSON; also the last will | yes |
//! | `alarm` | node → gateway | [`AlarmEvent`](crate::payload::AlarmEvent) JSON | no |
//! | `cmd` | gateway → node | [`NodeCommand`](crate::payload::NodeCommand) JSON | no |
//! | `fwupdate` | gateway → node | binary [`UpdateRequest`](crate::update::UpdateRequest): offer, chunk, finish, status, confirm | no |
//! | `fwstatus` | node → gateway | binary [`UpdateReport`](crate::update::UpdateReport), one per request | no |
//!
//! Only nodes that take firmware updates over MQTT subscribe to their `fwupdate` topic; the
//! gateway subscribes to a node's `fwstatus` only while it updates that node.
//!
//! The version level lets a later scheme run beside this one on the same broker. Site and node
//! are [ids](crate::id) and so never contain `/`, `+` or `#`.

use core::fmt;

use crate::id::{IdError, NodeId, SiteId};

/// First topic level.
pub const TOPIC_ROOT: &str = "tianzhong";
/// Second topic level: the scheme version.
pub const TOPIC_VERSION: &str = "v1";
/// Longest topic this scheme produces.
pub const MAX_TOPIC_LEN: usize =
    TOPIC_ROOT.len() + 1 + TOPIC_VERSION.len() + 1 + 2 * (crate::id::MAX_ID_LEN + 1) + 9;

/// What a topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// JSON readings.
    Telemetry,
    /// Binary uplink frames.
    Frame,
    /// Node status and last will.
    Status,
    /// Local alarm events raised by the node.
    Alarm,
    /// Commands to the node.
    Cmd,
    /// Firmware-update requests to the node.
    FwUpdate,
    /// The node's firmware-update reports.
    FwStatus,
}

impl TopicKind {
    /// All kinds.
    pub const ALL: [TopicKind; 7] = [
        TopicKind::Telemetry,
        TopicKind::Frame,
        TopicKind::Status,
        TopicKind::Alarm,
        TopicKind::Cmd,
        TopicKind::FwUpdate,
        TopicKind::FwStatus,
    ];

    /// The last topic level.
    pub const fn key(self) -> &'static str {
        match self {
            TopicKind::Telemetry => "telemetry",
            TopicKind::Frame => "frame",
            TopicKind::Status => "status",
            TopicKind::Alarm => "alarm",
            TopicKind::Cmd => "cmd",
            TopicKind::FwUpdate => "fwupdate",
            TopicKind::FwStatus => "fwstatus",
        }
    }

    /// The subscription filter for this kind from every site and node, e.g.
    /// `tianzhong/v1/+/+/telemetry`.
    pub const fn filter(self) -> &'static str {
        match self {
            TopicKind::Telemetry => "tianzhong/v1/+/+/telemetry",
            TopicKind::Frame => "tianzhong/v1/+/+/frame",
            TopicKind::Status => "tianzhong/v1/+/+/status",
            TopicKind::Alarm => "tianzhong/v1/+/+/alarm",
            TopicKind::Cmd => "tianzhong/v1/+/+/cmd",
            TopicKind::FwUpdate => "tianzhong/v1/+/+/fwupdate",
            TopicKind::FwStatus => "tianzhong/v1/+/+/fwstatus",
        }
    }
}

/// A parsed topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Topic {
    /// Site.
    pub site: SiteId,
    /// Node.
    pub node: NodeId,
    /// Kind.
    pub kind: TopicKind,
}

/// Why a topic is not in the scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicError {
    /// Does not start with `tianzhong/`.
    WrongRoot,
    /// A version level other than `v1`.
    UnsupportedVersion,
    /// Fewer than five levels.
    TooFewLevels,
    /// More than five levels.
    TooManyLevels,
    /// The site level is not a valid id.
    Site(IdError),
    /// The node level is not a valid id.
    Node(IdError),
    /// The last level is not a known kind.
    UnknownKind,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::WrongRoot => write!(f, "topic does not start with '{TOPIC_ROOT}/'"),
            TopicError::UnsupportedVersion => {
                write!(f, "topic version level is not '{TOPIC_VERSION}'")
            }
            TopicError::TooFewLevels => {
                f.write_str("topic has fewer than 5 levels (tianzhong/v1/site/node/kind)")
            }
            TopicError::TooManyLevels => {
                f.write_str("topic has more than 5 levels (tianzhong/v1/site/node/kind)")
            }
            TopicError::Site(e) => write!(f, "site level: {e}"),
            TopicError::Node(e) => write!(f, "node level: {e}"),
            TopicError::UnknownKind => f.write_str(
                "last topic level is not one of telemetry, frame, status, alarm, cmd, fwupdate, \
                 fwstatus",
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TopicError {}

impl Topic {
    /// A topic.
    pub fn new(site: SiteId, node: NodeId, kind: TopicKind) -> Topic {
        Topic { site, node, kind }
    }

    /// Parses a topic name.
    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        let mut levels = topic.split('/');
        if levels.next() != Some(TOPIC_ROOT) {
            return Err(TopicError::WrongRoot);
        }
        match levels.next() {
            Some(TOPIC_VERSION) => {}
            Some(_) => return Err(TopicError::UnsupportedVersion),
            None => return Err(TopicError::TooFewLevels),
        }
        let site = levels.next().ok_or(TopicError::TooFewLevels)?;
        let node = levels.next().ok_or(TopicError::TooFewLevels)?;
        let kind = levels.next().ok_or(TopicError::TooFewLevels)?;
        if levels.next().is_some() {
            return Err(TopicError::TooManyLevels);
        }
        Ok(Topic {
            site: SiteId::new(site).map_err(TopicError::Site)?,
            node: NodeId::new(node).map_err(TopicError::Node)?,
            kind: TopicKind::ALL
                .into_iter()
                .find(|k| k.key() == kind)
                .ok_or(TopicError::UnknownKind)?,
        })
    }

    /// The topic name in a fixed-capacity string.
    pub fn to_heapless(&self) -> heapless::String<MAX_TOPIC_LEN> {
        let mut s = heapless::String::new();
        // Cannot fail: MAX_TOPIC_LEN bounds the longest topic.
        let _ = fmt::write(&mut s, format_args!("{self}"));
        s
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOPIC_ROOT}/{TOPIC_VERSION}/{}/{}/{}",
            self.site,
            self.node,
            self.kind.key()
        )
    }
}
