//! `tianzhong flash --mqtt`: sends a signed firmware image to a node that is an MQTT client,
//! as [update requests](tianzhong_protocol::update) on its `fwupdate` topic, reading its
//! reports on `fwstatus`; the node's side is `tianzhong_firmware::update::mqtt`.
//!
//! | step | request on `tianzhong/v1/{site}/{node}/fwupdate` | waits for |
//! |---|---|---|
//! | offer | header, SHA-256, chunk size ([`MQTT_CHUNK`], halved while the node refuses the size) | the offer's report: accepted, and the chunk to start at |
//! | chunks | up to `in_flight` chunks beyond the last chunk the node reported wanting | a report per chunk: the next chunk wanted |
//! | finish | — | the finish's report: checked and staged |
//! | boot | — (status requests while waiting) | the node's online status (`…/status`) or a report with the new version running |
//! | confirm | the new version | the confirm's report: no longer on trial |
//!
//! Everything goes at QoS 1 over one rumqttc connection with a clean session. Without
//! [`MqttFlashOptions::confirm`] (`--no-confirm`) the run ends with the image on trial; the node
//! then refuses any offer until it is confirmed or given up, and a later run with the same
//! image, refused as "on trial" by a node that runs exactly that version, skips to the
//! confirm.
//!
//! # Resuming
//!
//! Every report carries the chunk the node wants next, so the sender never needs to know what
//! was lost. It goes back to that chunk when the node refuses a chunk as out of order (one was
//! lost before it; once per gap, not for every chunk of the window behind it), and after a wait
//! of `timeout` without a report it asks for the status and goes on from the chunk the report
//! names. After the broker connection comes back it asks for the status at once. A node that
//! reset mid-image (its receiver idle) is offered the image again, and resumes from its flash.
//! A run started again after a failure resumes the same way: the offer's report names where
//! the node stands.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tianzhong_protocol::crc::FRAME as CRC32C;
use tianzhong_protocol::image::{HEADER_LEN, ImageFile};
use tianzhong_protocol::payload::NodeStatus;
use tianzhong_protocol::registers::profile::FirmwareVersion;
use tianzhong_protocol::topic::{Topic, TopicKind};
use tianzhong_protocol::update::{
    Answers, MAX_REQUEST_LEN, MIN_MQTT_CHUNK, MQTT_CHUNK, Phase, Reason, UpdateReport,
    UpdateRequest,
};
use tianzhong_protocol::{NodeId, SiteId};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::flash::{FlashError, Progress};
use crate::sources::mqtt::host_port;

/// Chunks in flight beyond the last chunk the node reported wanting. Each chunk waits for the
/// node's report behind it, so the window sets the rate: a 31 KiB image to a simulated node
/// over a local mosquitto (debug build) took 1.56 s with 1 chunk in flight, 410 ms with 4,
/// 181–223 ms with 8 and 52 ms with 16 (589 KiB/s). Sixteen also stays within mosquitto's
/// default of 20 QoS 1 messages in flight to one client, and the sixteen reports a simulated
/// node may have awaiting their PUBACK.
pub const DEFAULT_IN_FLIGHT: u32 = 16;

/// Which node, through which broker.
#[derive(Clone, Debug)]
pub struct MqttTarget {
    /// The broker, host:port.
    pub broker: String,
    /// The node's site; `None` to take it from the node's retained status.
    pub site: Option<SiteId>,
    /// The node.
    pub node: NodeId,
    /// How long to wait for a report before asking for the status again.
    pub timeout: Duration,
}

/// How a flash over MQTT runs.
#[derive(Clone, Copy, Debug)]
pub struct MqttFlashOptions {
    /// Chunks in flight.
    pub in_flight: u32,
    /// Give up when the node has made no progress for this long (broker or node gone).
    pub give_up: Duration,
    /// Time for the node to reset into the new image and come back online.
    pub boot_timeout: Duration,
    /// Send the confirm once the node runs the new image. Without it the image stays on trial
    /// (and is given up at the node's next resets) until a later run, which finds it on trial
    /// and only confirms it: for a health check of the operator's own in between.
    pub confirm: bool,
}

impl Default for MqttFlashOptions {
    fn default() -> MqttFlashOptions {
        MqttFlashOptions {
            in_flight: DEFAULT_IN_FLIGHT,
            give_up: Duration::from_secs(60),
            boot_timeout: Duration::from_secs(60),
            confirm: true,
        }
    }
}

/// What a flash over MQTT did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttFlashReport {
    /// The node's site (given, or found from its retained status).
    pub site: SiteId,
    /// Chunk size used.
    pub chunk_size: u16,
    /// Chunks in the image.
    pub chunks: u32,
    /// The chunk the node wanted first (0 unless an earlier run was interrupted).
    pub resumed_at: u32,
    /// Chunk messages published, repeats included.
    pub chunks_sent: u32,
    /// Of those, chunks published again (after a loss, a timeout or a reconnect).
    pub chunks_resent: u32,
    /// Where the sender went back to, in order: each is a chunk the node reported wanting.
    pub went_back_to: Vec<u32>,
    /// Waits that ended without a report.
    pub timeouts: u32,
    /// Times the connection to the broker came back.
    pub reconnects: u32,
    /// Times the image was offered again because the node had reset mid-image.
    pub reoffers: u32,
    /// Payloads on the node's `fwstatus` topic that were not reports (logged and skipped).
    pub malformed_reports: u32,
    /// The version now running on the node, confirmed.
    pub version: FirmwareVersion,
    /// From the offer to the node's report that all chunks are in.
    pub transfer_time: Duration,
    /// The node already ran this image on trial: nothing was sent, it was only confirmed.
    pub found_on_trial: bool,
    /// The node confirmed the image.
    pub confirmed: bool,
}

/// What the connection task passes on.
enum Link {
    Connected,
    Disconnected(String),
    Report(UpdateReport),
    Status(NodeStatus),
}

/// The broker connection, run by its own task so that publishing never waits on reading.
struct Connection {
    client: AsyncClient,
    links: mpsc::UnboundedReceiver<Link>,
    task: tokio::task::JoinHandle<()>,
    node: NodeId,
    site: SiteId,
    request_topic: String,
    timeout: Duration,
    reconnects: u32,
    /// Reports that could not be decoded, counted by the connection task.
    malformed: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.task.abort();
    }
}

fn options(target: &MqttTarget) -> Result<MqttOptions, FlashError> {
    let (host, port) = host_port(&target.broker)
        .map_err(|e| FlashError::Connect(format!("node {}: broker {e}", target.node)))?;
    let client_id = format!("tianzhong-flash-{}-{}", target.node, std::process::id());
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_session(true);
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    Ok(options)
}

/// Finds a node's site from its retained status on `tianzhong/v1/+/{node}/status`.
async fn discover_site(target: &MqttTarget) -> Result<SiteId, FlashError> {
    let (client, mut eventloop) = AsyncClient::new(options(target)?, 16);
    let filter = format!("tianzhong/v1/+/{}/status", target.node);
    let deadline = tokio::time::Instant::now() + target.timeout.max(Duration::from_secs(2));
    let found = tokio::time::timeout_at(deadline, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(t) = Topic::parse(&p.topic)
                        && t.node == target.node
                    {
                        return Ok(t.site);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let _ = client.try_disconnect();
    match found {
        Ok(Ok(site)) => Ok(site),
        Ok(Err(e)) => Err(FlashError::Connect(format!(
            "node {}: broker {}: {e}",
            target.node, target.broker
        ))),
        Err(_) => Err(FlashError::Protocol(format!(
            "node {}: no retained status on {filter} at {}; give its site with --site",
            target.node, target.broker
        ))),
    }
}

impl Connection {
    async fn open(target: &MqttTarget) -> Result<Connection, FlashError> {
        let site = match &target.site {
            Some(site) => site.clone(),
            None => discover_site(target).await?,
        };
        let topic = |kind| Topic::new(site.clone(), target.node.clone(), kind).to_string();
        let (request_topic, report_topic, status_topic) = (
            topic(TopicKind::FwUpdate),
            topic(TopicKind::FwStatus),
            topic(TopicKind::Status),
        );
        // Room for a window of chunks and the requests around them while the broker is away.
        let (client, mut eventloop) = AsyncClient::new(options(target)?, 256);
        // With Nagle's algorithm a lone chunk waits for the ACK of the one before, which the
        // broker delays: 90 ms a chunk measured with one in flight, against 2.6 ms without.
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, links) = mpsc::unbounded_channel();
        let subscriber = client.clone();
        let malformed = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let bad_reports = std::sync::Arc::clone(&malformed);
        let broker = target.broker.clone();
        let node = target.node.clone();
        let task = tokio::spawn(async move {
            let mut up = false;
            loop {
                let link = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        up = true;
                        // A clean session: subscriptions go with every connection.
                        for t in [&report_topic, &status_topic] {
                            if let Err(e) = subscriber.try_subscribe(t.as_str(), QoS::AtLeastOnce) {
                                warn!(%node, topic = %t, "cannot subscribe: {e}");
                            }
                        }
                        Some(Link::Connected)
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == report_topic => {
                        match UpdateReport::decode(&p.payload) {
                            Ok(r) => Some(Link::Report(r)),
                            Err(e) => {
                                bad_reports.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                warn!(%node, topic = %p.topic, "malformed update report: {e}");
                                None
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == status_topic => {
                        match NodeStatus::from_json(&p.payload) {
                            Ok(s) => Some(Link::Status(s)),
                            Err(e) => {
                                warn!(%node, topic = %p.topic, "malformed status: {e}");
                                None
                            }
                        }
                    }
                    Ok(_) => None,
                    Err(e) => {
                        let link = up.then(|| Link::Disconnected(e.to_string()));
                        up = false;
                        debug!(%node, %broker, "MQTT connection: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        link
                    }
                };
                if let Some(link) = link
                    && tx.send(link).is_err()
                {
                    return;
                }
            }
        });
        let mut conn = Connection {
            client,
            links,
            task,
            node: target.node.clone(),
            site,
            request_topic,
            timeout: target.timeout,
            reconnects: 0,
            malformed,
        };
        // The first connect: an unreachable broker is an error here, not a stall later.
        let deadline = Instant::now() + target.timeout.max(Duration::from_secs(2));
        loop {
            match conn.next_until(deadline).await {
                Some(Link::Connected) => break,
                Some(_) => {}
                None => {
                    return Err(FlashError::Connect(format!(
                        "node {}: broker {}: no connection within {:?}",
                        target.node, target.broker, target.timeout
                    )));
                }
            }
        }
        Ok(conn)
    }

    /// The step's name in errors: node and topic.
    fn step(&self, what: impl std::fmt::Display) -> String {
        format!("node {} ({}): {what}", self.node, self.request_topic)
    }

    async fn next_until(&mut self, deadline: Instant) -> Option<Link> {
        let deadline = tokio::time::Instant::from_std(deadline);
        tokio::time::timeout_at(deadline, self.links.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next link event, or `None` after the timeout.
    async fn next(&mut self) -> Option<Link> {
        let link = self.next_until(Instant::now() + self.timeout).await;
        if let Some(Link::Connected) = link {
            self.reconnects += 1;
        }
        if let Some(Link::Disconnected(e)) = &link {
            warn!(node = %self.node, "broker connection lost: {e}; reconnecting");
        }
        link
    }

    /// Publishes a request at QoS 1; while the broker is away it waits in the client's queue.
    fn send(&self, request: &UpdateRequest<'_>) -> Result<(), FlashError> {
        let mut buf = [0u8; MAX_REQUEST_LEN];
        let bytes = request
            .encode(&mut buf)
            .map_err(|e| FlashError::Protocol(self.step(format!("encoding a request: {e}"))))?;
        match self.client.try_publish(
            self.request_topic.as_str(),
            QoS::AtLeastOnce,
            false,
            bytes.to_vec(),
        ) {
            Ok(()) => Ok(()),
            // The queue is full while the broker is away: the request is as good as lost, and
            // the timeout's status request finds where the node is.
            Err(e) => {
                debug!(node = %self.node, "request not queued: {e}");
                Ok(())
            }
        }
    }
}

fn refused(conn: &Connection, step: &str, report: &UpdateReport) -> FlashError {
    FlashError::Refused {
        step: conn.step(step),
        code: report.reason,
    }
}

/// What the node made of an offer.
enum Offered {
    /// Taken, with this chunk size: the report says where to start.
    Accepted(UpdateReport, u16),
    /// Refused because the node already runs this image on trial.
    OnTrial(UpdateReport),
}

/// Offers the image, halving the chunk size while the node refuses it.
async fn offer(
    conn: &mut Connection,
    image: &[u8],
    (digest, version): (&[u8; 32], FirmwareVersion),
    mut size: u16,
    give_up: Duration,
) -> Result<Offered, FlashError> {
    let header: [u8; HEADER_LEN] = image[..HEADER_LEN]
        .try_into()
        .map_err(|_| FlashError::Protocol("image shorter than its header".into()))?;
    let mut since = Instant::now();
    loop {
        conn.send(&UpdateRequest::Offer {
            header,
            digest: *digest,
            chunk_size: size,
        })?;
        let report = loop {
            match conn.next().await {
                Some(Link::Report(r)) if r.answers == Answers::Offer => break Some(r),
                Some(_) => {}
                None => break None,
            }
        };
        let Some(r) = report else {
            if since.elapsed() >= give_up {
                return Err(FlashError::Timeout {
                    step: conn.step("offer"),
                });
            }
            continue;
        };
        if r.reason() == Some(Reason::BadChunkSize) && size > MIN_MQTT_CHUNK {
            info!(node = %conn.node, size, "chunk size refused; offering half");
            size /= 2;
            since = Instant::now();
            continue;
        }
        if r.reason() == Some(Reason::TrialPending) && r.trial && r.running == version {
            // This very image was sent, staged and booted, but never confirmed (an earlier
            // run stopped, or ran with --no-confirm): nothing left to send.
            return Ok(Offered::OnTrial(r));
        }
        if r.reason != 0 || r.phase != Phase::Receiving {
            return Err(refused(conn, "offer", &r));
        }
        let expected = image.len().div_ceil(usize::from(size)) as u32;
        if r.chunks != expected {
            return Err(FlashError::Protocol(conn.step(format!(
                "the node counts {} chunks, the image has {expected}",
                r.chunks
            ))));
        }
        return Ok(Offered::Accepted(r, size));
    }
}

/// Flashes `image` into the node `target` names, over MQTT; `progress` is called after every
/// report during the transfer. Returns once the node runs the new image and, with
/// [`MqttFlashOptions::confirm`], has confirmed it. A node that already runs this image on
/// trial (an earlier run stopped before the confirm) is only confirmed.
pub async fn flash_mqtt(
    target: &MqttTarget,
    image: &[u8],
    options: MqttFlashOptions,
    mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
) -> Result<MqttFlashReport, FlashError> {
    let parsed = ImageFile::parse(image).map_err(FlashError::Image)?;
    let digest = parsed.trailer.digest;
    let version = parsed.header.version;
    let mut conn = Connection::open(target).await?;
    info!(node = %conn.node, site = %conn.site, topic = %conn.request_topic, bytes = image.len(), %version, "flashing over MQTT");

    let started = Instant::now();
    let offered = offer(
        &mut conn,
        image,
        (&digest, version),
        MQTT_CHUNK,
        options.give_up,
    )
    .await?;
    let (first, size, on_trial) = match offered {
        Offered::Accepted(r, size) => (r, size, false),
        Offered::OnTrial(r) => (r, MQTT_CHUNK, true),
    };
    let chunks = image.len().div_ceil(usize::from(size)) as u32;
    let mut report = MqttFlashReport {
        site: conn.site.clone(),
        chunk_size: size,
        chunks,
        resumed_at: if on_trial { chunks } else { first.next_chunk },
        chunks_sent: 0,
        chunks_resent: 0,
        went_back_to: Vec::new(),
        timeouts: 0,
        reconnects: 0,
        reoffers: 0,
        malformed_reports: 0,
        version,
        transfer_time: Duration::ZERO,
        found_on_trial: on_trial,
        confirmed: false,
    };
    if on_trial {
        info!(node = %conn.node, %version, "the node already runs this image on trial");
    } else {
        transfer(
            &mut conn,
            image,
            (&digest, version),
            (size, first.next_chunk),
            options,
            &mut report,
            &mut progress,
        )
        .await?;
        report.transfer_time = started.elapsed();
        finish_and_boot(&mut conn, version, chunks, options, &mut report).await?;
    }
    if options.confirm {
        confirm(&mut conn, version, options, &mut report).await?;
        report.confirmed = true;
    }
    report.reconnects = conn.reconnects;
    report.malformed_reports = conn.malformed.load(std::sync::atomic::Ordering::Relaxed);
    Ok(report)
}

/// Sends every chunk from `first` on, going back to the chunk the node names after a loss.
async fn transfer(
    conn: &mut Connection,
    image: &[u8],
    (digest, version): (&[u8; 32], FirmwareVersion),
    (size, first): (u16, u32),
    options: MqttFlashOptions,
    report: &mut MqttFlashReport,
    progress: &mut impl FnMut(&Progress) -> ControlFlow<()>,
) -> Result<(), FlashError> {
    let started = Instant::now();
    let chunks = report.chunks;
    let chunk = usize::from(size);
    // The node's wanted chunk; the next chunk to publish; one past the furthest published.
    let mut wanted = first;
    let mut send_at = wanted;
    let mut furthest = wanted;
    let mut sent_bytes = 0usize;
    let mut last_gap: Option<u32> = None;
    // A status request is out after a timeout or a reconnect: its report says where to go on.
    // Only the first report after it moves the sender back; another status report (the
    // request queued during the outage and the one sent on reconnecting both get one) would
    // otherwise send the chunks in flight since a second time.
    let mut resync = false;
    let mut progressed = Instant::now();
    let window = options.in_flight.max(1);
    while wanted < chunks {
        while send_at < chunks && send_at < wanted + window {
            let start = send_at as usize * chunk;
            let data = &image[start..(start + chunk).min(image.len())];
            conn.send(&UpdateRequest::Chunk {
                index: send_at,
                crc: CRC32C.checksum(data),
                data,
            })?;
            report.chunks_sent += 1;
            if send_at < furthest {
                report.chunks_resent += 1;
            }
            sent_bytes += data.len();
            send_at += 1;
            furthest = furthest.max(send_at);
        }
        match conn.next().await {
            Some(Link::Report(r)) if r.answers == Answers::Offer => {}
            Some(Link::Report(r))
                if r.phase == Phase::Idle || r.reason() == Some(Reason::NoTransfer) =>
            {
                // The node reset mid-image: offer again; it resumes from its flash.
                info!(node = %conn.node, "the node has no transfer (reset?); offering again");
                report.reoffers += 1;
                let again =
                    match offer(conn, image, (digest, version), size, options.give_up).await? {
                        Offered::Accepted(r, _) => r,
                        Offered::OnTrial(r) => return Err(refused(conn, "offer", &r)),
                    };
                wanted = again.next_chunk;
                report.went_back_to.push(wanted);
                send_at = wanted;
                last_gap = Some(wanted);
                progressed = Instant::now();
            }
            Some(Link::Report(r)) if matches!(r.answers, Answers::Chunk | Answers::Status) => {
                if r.phase == Phase::Failed {
                    return Err(refused(conn, &format!("chunk {}", r.next_chunk), &r));
                }
                if r.next_chunk > wanted {
                    progressed = Instant::now();
                }
                wanted = r.next_chunk;
                send_at = send_at.max(wanted);
                // The node wants a chunk before those in flight: go back to it, once per gap
                // (the rest of the window behind the gap names the same chunk), or when it
                // answers the status request sent after a timeout or a reconnect.
                let lost = matches!(
                    r.reason(),
                    Some(Reason::OutOfOrder | Reason::ChunkCrc | Reason::ChunkLength)
                );
                let resynced = resync && r.answers == Answers::Status;
                if resynced {
                    resync = false;
                }
                if wanted < send_at && ((lost && last_gap != Some(wanted)) || resynced) {
                    debug!(node = %conn.node, from = send_at, to = wanted, "going back");
                    report.went_back_to.push(wanted);
                    send_at = wanted;
                    last_gap = Some(wanted);
                }
                let p = Progress {
                    done: (wanted as usize * chunk).min(image.len()),
                    total: image.len(),
                    sent: sent_bytes,
                    elapsed: started.elapsed(),
                };
                if progress(&p).is_break() {
                    return Err(FlashError::Cancelled { next_chunk: wanted });
                }
            }
            Some(Link::Connected) => {
                // Whatever was in flight may be gone: ask where the node is.
                resync = true;
                conn.send(&UpdateRequest::Status)?;
            }
            Some(_) => {}
            None => {
                resync = true;
                report.timeouts += 1;
                if progressed.elapsed() >= options.give_up {
                    return Err(FlashError::Timeout {
                        step: conn.step(format!(
                            "chunk {wanted}: no progress for {:?}",
                            options.give_up
                        )),
                    });
                }
                conn.send(&UpdateRequest::Status)?;
            }
        }
    }
    Ok(())
}

/// Asks the node to check and stage the image, then waits until it runs it.
async fn finish_and_boot(
    conn: &mut Connection,
    version: FirmwareVersion,
    chunks: u32,
    options: MqttFlashOptions,
    report: &mut MqttFlashReport,
) -> Result<(), FlashError> {
    // Finish: the node checks the image and stages it, then resets into it.
    conn.send(&UpdateRequest::Finish)?;
    let mut since = Instant::now();
    let mut booted = false;
    loop {
        match conn.next().await {
            Some(Link::Report(r)) if r.answers == Answers::Finish => {
                if r.reason != 0 || r.phase != Phase::Staged {
                    return Err(refused(conn, "finish", &r));
                }
                break;
            }
            Some(Link::Report(r)) if r.running == version && r.answers == Answers::Status => {
                // The finish's report was lost, but the node already runs the new image.
                booted = true;
                break;
            }
            Some(Link::Report(r)) if r.answers == Answers::Status && r.phase == Phase::Staged => {
                break;
            }
            Some(Link::Report(r))
                if r.answers == Answers::Status
                    && r.phase == Phase::Receiving
                    && r.next_chunk == chunks =>
            {
                conn.send(&UpdateRequest::Finish)?;
            }
            Some(Link::Status(s)) if s.online && fw_is(&s, version) => {
                booted = true;
                break;
            }
            Some(Link::Connected) | None => {
                if since.elapsed() >= options.give_up {
                    return Err(FlashError::Timeout {
                        step: conn.step("finish"),
                    });
                }
                report.timeouts += 1;
                conn.send(&UpdateRequest::Status)?;
            }
            Some(_) => {}
        }
    }

    // Boot: the node resets, reconnects and says it runs the new version.
    since = Instant::now();
    let mut other: Option<String> = None;
    while !booted {
        match conn.next().await {
            Some(Link::Status(s)) if s.online => {
                if fw_is(&s, version) {
                    booted = true;
                } else {
                    other = s.fw.map(|f| f.to_string());
                }
            }
            Some(Link::Report(r)) if r.running == version => booted = true,
            Some(Link::Report(r)) if r.answers == Answers::Status => {
                other = Some(r.running.to_string());
            }
            Some(Link::Connected) | None => {
                if since.elapsed() >= options.boot_timeout {
                    return Err(FlashError::Timeout {
                        step: conn.step(match &other {
                            Some(v) => format!(
                                "the node runs {v} after its reset, not {version}: the new image \
                                 did not boot, or was given up"
                            ),
                            None => format!("no sign of {version} running after the reset"),
                        }),
                    });
                }
                conn.send(&UpdateRequest::Status)?;
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The gateway's health check of the new image has passed: the node confirms it.
async fn confirm(
    conn: &mut Connection,
    version: FirmwareVersion,
    options: MqttFlashOptions,
    report: &mut MqttFlashReport,
) -> Result<(), FlashError> {
    info!(node = %conn.node, %version, "the new image runs; confirming");
    conn.send(&UpdateRequest::Confirm { version })?;
    let since = Instant::now();
    loop {
        match conn.next().await {
            Some(Link::Report(r)) if r.answers == Answers::Confirm => {
                if r.reason != 0 {
                    return Err(refused(conn, "confirm", &r));
                }
                if !r.trial && r.running == version {
                    break;
                }
            }
            Some(Link::Connected) | None => {
                if since.elapsed() >= options.give_up {
                    return Err(FlashError::Timeout {
                        step: conn.step("confirm"),
                    });
                }
                report.timeouts += 1;
                conn.send(&UpdateRequest::Confirm { version })?;
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn fw_is(status: &NodeStatus, version: FirmwareVersion) -> bool {
    status
        .fw
        .as_ref()
        .is_some_and(|fw| fw.as_str() == version.to_string())
}

/// Runs `tianzhong flash --mqtt`, with a progress bar on standard error.
pub fn run(args: crate::flash::FlashArgs) -> std::process::ExitCode {
    use std::io::Write as _;
    use std::process::ExitCode;
    let fail = |e: String| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    let (Some(broker), Some(node)) = (args.mqtt.clone(), args.node.as_deref()) else {
        return fail("--mqtt HOST:PORT needs --node ID".into());
    };
    let node = match NodeId::new(node) {
        Ok(n) => n,
        Err(e) => return fail(format!("--node {node}: {e}")),
    };
    let site = match args.site.as_deref().map(SiteId::new).transpose() {
        Ok(s) => s,
        Err(e) => return fail(format!("--site: {e}")),
    };
    let image = match std::fs::read(&args.image) {
        Ok(b) => b,
        Err(e) => return fail(format!("{}: {e}", args.image.display())),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let target = MqttTarget {
        broker,
        site,
        node,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let options = MqttFlashOptions {
        in_flight: args.in_flight,
        confirm: !args.no_confirm,
        ..MqttFlashOptions::default()
    };
    let result = runtime.block_on(flash_mqtt(&target, &image, options, |p| {
        eprint!("\r{}", p.line());
        let _ = std::io::stderr().flush();
        ControlFlow::Continue(())
    }));
    eprintln!();
    match result {
        Ok(r) => {
            let end = match (r.confirmed, r.found_on_trial) {
                (true, true) => format!(
                    "The node already ran {} on trial; it has confirmed it.",
                    r.version
                ),
                (true, false) => format!("The node runs {} and has confirmed it.", r.version),
                (false, _) => format!(
                    "The node runs {} on trial; run this again to confirm it, or it is given up \
                     at its next resets.",
                    r.version
                ),
            };
            if r.found_on_trial {
                println!("{} at site {}: nothing to send. {end}", target.node, r.site);
            } else {
                println!(
                    "flashed {} bytes in {} chunks of {} bytes to {} at site {} over MQTT{}; {} \
                     chunks sent again, {} timeouts, {} reconnects. {end}",
                    image.len(),
                    r.chunks,
                    r.chunk_size,
                    target.node,
                    r.site,
                    if r.resumed_at > 0 {
                        format!(" (resumed at chunk {})", r.resumed_at)
                    } else {
                        String::new()
                    },
                    r.chunks_resent,
                    r.timeouts,
                    r.reconnects,
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tianzhong_protocol::image::{HardwareId, ImageHeader};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flash: crate::flash::FlashArgs,
    }

    fn parse(args: &[&str]) -> Result<crate::flash::FlashArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("flash").chain(args.iter().copied())).map(|c| c.flash)
    }

    #[test]
    fn the_command_line_takes_a_broker_with_a_node_and_refuses_mixtures() {
        let a = parse(&["--node", "aq-01", "--mqtt", "127.0.0.1:1883", "fw.tzfw"]).unwrap();
        assert_eq!(
            (a.node.as_deref(), a.mqtt.as_deref(), a.site.as_deref()),
            (Some("aq-01"), Some("127.0.0.1:1883"), None)
        );
        assert_eq!((a.in_flight, a.no_confirm), (DEFAULT_IN_FLIGHT, false));
        let a = parse(&[
            "--node",
            "aq-01",
            "--mqtt",
            "broker:1883",
            "--site",
            "city-core",
            "--in-flight",
            "4",
            "--no-confirm",
            "fw.tzfw",
        ])
        .unwrap();
        assert_eq!(
            (a.site.as_deref(), a.in_flight, a.no_confirm),
            (Some("city-core"), 4, true)
        );
        for bad in [
            // A broker without a node.
            &["--mqtt", "h:1883", "fw.tzfw"][..],
            // MQTT and Modbus TCP at once.
            &[
                "--node", "a", "--mqtt", "h:1", "--tcp", "h:502", "--unit", "1", "fw",
            ],
            // MQTT and a gateway configuration at once.
            &["--node", "a", "--mqtt", "h:1", "--config", "g.toml", "fw"],
            // A site or --no-confirm without MQTT.
            &["--node", "a", "--config", "g.toml", "--site", "s", "fw"],
            &["--node", "a", "--config", "g.toml", "--no-confirm", "fw"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    fn image() -> Vec<u8> {
        let header = ImageHeader {
            hardware: HardwareId::new("TZ-TEST", 1).unwrap(),
            version: FirmwareVersion {
                major: 2,
                minor: 0,
                patch: 0,
            },
            security_counter: 1,
            image_size: 0,
            header_len: 512,
        };
        let payload = [0x5Au8; 3000];
        let mut out = vec![0u8; ImageFile::len_for(512, payload.len())];
        ImageFile::build(&header, &payload, &[7; 32], &mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_an_error_naming_node_and_broker() {
        // A port just released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let target = MqttTarget {
            broker: format!("127.0.0.1:{port}"),
            site: Some(SiteId::new("plant-1").unwrap()),
            node: NodeId::new("aq-09").unwrap(),
            timeout: Duration::from_millis(200),
        };
        let err = flash_mqtt(&target, &image(), MqttFlashOptions::default(), |_| {
            ControlFlow::Continue(())
        })
        .await
        .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, FlashError::Connect(_)), "{message}");
        assert!(
            message.contains("node aq-09") && message.contains(&format!("127.0.0.1:{port}")),
            "{message}"
        );
    }
}
