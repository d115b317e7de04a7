//! A small MQTT 3.1.1 client, publishing and subscribing to a node's own topics: one TCP
//! connection to a broker, for one node.
//!
//! # Why hand-written
//!
//! The simulator runs one MQTT client per virtual node, ten thousand of them in one process.
//! rumqttc keeps, for every connection, an 8 KiB bit set of incoming QoS 2 packet ids (whatever
//! the QoS in use) and a read and a write buffer of 8 KiB each, none of which can be configured:
//! about 29 KB a connected node, 330 MB for ten thousand. A node of the simulator only publishes
//! a few small messages, so this client keeps per connection only what that needs: the socket,
//! a read buffer of a few dozen bytes (a broker sends a client that never subscribes nothing
//! but CONNACK, PUBACK and PINGRESP), a write buffer for the bytes the socket did not take at
//! once (empty, and unallocated, while the socket keeps up; never more than the largest packet
//! the client may send), and the packet ids of the messages awaiting PUBACK, at most a small
//! fixed window of them.
//!
//! The packets themselves are encoded and decoded by [`mqttbytes`]; this module only runs the
//! connection.
//!
//! # What it does
//!
//! - CONNECT with a clean session, a keep-alive and an optional will; the CONNACK is checked and
//!   a refusal is an [`Error::Refused`].
//! - PUBLISH at QoS 0, or at QoS 1 with a packet id and a caller's tag that comes back as
//!   [`Event::Acked`] when the broker's PUBACK arrives. Publishing never waits: a message that
//!   does not fit the in-flight window or the write buffer is refused ([`PublishError`]).
//! - PINGREQ after a keep-alive without sending anything; a broker that leaves a reply (PUBACK or
//!   PINGRESP) due for a whole keep-alive is taken for gone ([`Error::Timeout`]).
//! - DISCONNECT, once every message in flight has been acknowledged.
//! - SUBSCRIBE to one filter at QoS 0 or 1 (a node's firmware-update topic), confirmed by
//!   [`Event::Subscribed`]; each PUBLISH the broker then forwards comes out as
//!   [`Event::Message`], acknowledged with a PUBACK at QoS 1. The read buffer grows to the
//!   largest message taken ([`Options::max_incoming`]) and shrinks back once it is handled.
//!
//! # What it does not do
//!
//! No QoS 2, no TLS, no authentication, no persistent session: messages in flight when a
//! connection ends are lost with it, never resent on the next one. A PUBLISH from the broker
//! before any SUBSCRIBE ends the connection as a protocol error.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqttbytes::v4::{self, ConnectReturnCode, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Largest packet accepted from the broker (remaining length) while the client has not
/// subscribed. CONNACK and PUBACK have 2 bytes, PINGRESP none, SUBACK 3.
const MAX_CONTROL: usize = 64;

/// Room made in the read buffer before each read: sixteen PUBACKs.
const READ_CHUNK: usize = 64;

const PINGREQ: [u8; 2] = [0xC0, 0x00];
const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// Delivery guarantee of a message. QoS 2 is not supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QoS {
    /// Sent once, not acknowledged.
    AtMostOnce,
    /// Acknowledged by the broker with a PUBACK.
    AtLeastOnce,
}

impl From<QoS> for mqttbytes::QoS {
    fn from(qos: QoS) -> mqttbytes::QoS {
        match qos {
            QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
        }
    }
}

/// The message the broker publishes for the client when its connection ends without a
/// DISCONNECT.
#[derive(Clone, Copy, Debug)]
pub struct Will<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Payload.
    pub payload: &'a [u8],
    /// QoS of the broker's publication.
    pub qos: QoS,
    /// Whether the broker retains it.
    pub retain: bool,
}

/// How to connect.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// The broker.
    pub broker: SocketAddr,
    /// Client identifier.
    pub client_id: &'a str,
    /// Keep-alive, in whole seconds (1 to 65 535). The broker drops a connection silent for
    /// 1.5 × this; the client pings after this long without sending, and gives the broker this
    /// long to reply.
    pub keep_alive: Duration,
    /// Time allowed for the TCP connect and the CONNACK together.
    pub connect_timeout: Duration,
    /// The will, if any.
    pub will: Option<Will<'a>>,
    /// Largest PUBLISH packet the client may send, in bytes; also the write buffer's bound.
    pub max_packet: usize,
    /// QoS 1 messages that may await their PUBACK at once.
    pub max_inflight: usize,
    /// Largest PUBLISH taken from the broker once subscribed (remaining length); a larger one
    /// ends the connection as malformed.
    pub max_incoming: usize,
}

/// Why a connection could not be made or has ended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The broker answered the CONNECT with a refusal.
    #[error("the broker refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    /// No CONNACK in time, or no reply from the broker for a keep-alive while one was due.
    #[error("no reply from the broker within {0:?}")]
    Timeout(Duration),
    /// The broker closed the connection.
    #[error("the broker closed the connection")]
    Closed,
    /// The broker sent bytes that are not an MQTT 3.1.1 packet, or one too large.
    #[error("malformed packet from the broker: {0:?}")]
    Malformed(mqttbytes::Error),
    /// The broker sent a packet the client does not expect (a PUBLISH before any SUBSCRIBE).
    #[error("unexpected {0} from the broker")]
    Unexpected(&'static str),
    /// The CONNECT could not be encoded (an identifier or will too long for MQTT).
    #[error("cannot encode the CONNECT: {0:?}")]
    Encode(mqttbytes::Error),
}

/// Why a message was not sent. Nothing of it reached the socket.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The in-flight window is full of messages awaiting PUBACK.
    #[error("{0} messages await their PUBACK, as many as allowed")]
    InflightFull(usize),
    /// The socket has not taken earlier messages, and this one does not fit behind them.
    #[error("{0} bytes wait for the socket; no room for {1} more")]
    BufferFull(usize, usize),
    /// The packet exceeds [`Options::max_packet`].
    #[error("a packet of {0} bytes exceeds the {1}-byte limit")]
    TooLarge(usize, usize),
    /// [`Connection::disconnect`] was called.
    #[error("the connection is closing")]
    Disconnecting,
    /// The packet could not be encoded (a topic too long for MQTT).
    #[error("cannot encode the PUBLISH: {0:?}")]
    Encode(mqttbytes::Error),
}

impl PublishError {
    /// Whether the message was refused for want of room, which a later attempt may find.
    pub fn is_backpressure(&self) -> bool {
        matches!(
            self,
            PublishError::InflightFull(_) | PublishError::BufferFull(..)
        )
    }
}

/// What happened on a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<T> {
    /// The broker acknowledged the QoS 1 message published with this tag.
    Acked(T),
    /// DISCONNECT has been sent after [`Connection::disconnect`]; the connection is done.
    Disconnected,
    /// The broker granted the subscription (SUBACK).
    Subscribed,
    /// The broker refused the subscription (SUBACK with failure).
    SubscribeRefused,
    /// A message on a subscribed topic; already acknowledged if it came at QoS 1.
    Message {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Bytes,
    },
}

/// A connection to the broker, accepted by its CONNACK. Dropping it closes the socket without
/// DISCONNECT, so the broker publishes the will.
///
/// `T` tags each QoS 1 message, and comes back when the message is acknowledged.
pub struct Connection<T> {
    stream: TcpStream,
    /// Bytes read and not yet decoded.
    rx: BytesMut,
    /// Bytes the socket has not taken yet; its allocation is released once they are written.
    tx: Vec<u8>,
    /// Packet id and tag of each QoS 1 message awaiting PUBACK.
    inflight: Vec<(u16, T)>,
    max_inflight: usize,
    max_packet: usize,
    keep_alive: Duration,
    last_pid: u16,
    last_sent: Instant,
    /// When the broker must have said something by, while a reply is owed.
    reply_due: Option<Instant>,
    ping_outstanding: bool,
    closing: bool,
    disconnect_sent: bool,
    /// A write error met while publishing, reported by the next [`Connection::next`].
    failed: Option<io::Error>,
    /// Largest packet taken from the broker: [`MAX_CONTROL`] until a SUBSCRIBE.
    max_incoming: usize,
    /// Once subscribed, what [`Connection::subscribe`] raises `max_incoming` to.
    subscribed_max: usize,
    /// The packet id of a SUBSCRIBE awaiting its SUBACK.
    suback_due: Option<u16>,
}

impl<T> Connection<T> {
    /// Connects, sends CONNECT and waits for a CONNACK accepting it.
    pub async fn connect(options: &Options<'_>) -> Result<Connection<T>, Error> {
        match tokio::time::timeout(options.connect_timeout, Self::handshake(options)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(options.connect_timeout)),
        }
    }

    async fn handshake(options: &Options<'_>) -> Result<Connection<T>, Error> {
        let mut stream = TcpStream::connect(options.broker).await?;
        // Small QoS 1 messages and their acks would otherwise wait on Nagle's algorithm.
        stream.set_nodelay(true)?;
        let keep_alive_s = options.keep_alive.as_secs().clamp(1, u64::from(u16::MAX)) as u16;
        let mut connect = v4::Connect::new(options.client_id);
        connect.keep_alive = keep_alive_s;
        connect.clean_session = true;
        connect.last_will = options
            .will
            .map(|will| v4::LastWill::new(will.topic, will.payload, will.qos.into(), will.retain));
        let mut out = BytesMut::new();
        connect.write(&mut out).map_err(Error::Encode)?;
        stream.write_all(&out).await?;

        let mut rx = BytesMut::with_capacity(READ_CHUNK);
        loop {
            match v4::read(&mut rx, MAX_CONTROL) {
                Ok(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => break,
                Ok(Packet::ConnAck(ack)) => return Err(Error::Refused(ack.code)),
                Ok(other) => return Err(Error::Unexpected(name(&other))),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {
                    if stream.read_buf(&mut rx).await? == 0 {
                        return Err(Error::Closed);
                    }
                }
                Err(error) => return Err(Error::Malformed(error)),
            }
        }
        Ok(Connection {
            stream,
            rx,
            tx: Vec::new(),
            inflight: Vec::new(),
            max_inflight: options.max_inflight,
            max_packet: options.max_packet,
            keep_alive: Duration::from_secs(u64::from(keep_alive_s)),
            last_pid: 0,
            last_sent: Instant::now(),
            reply_due: None,
            ping_outstanding: false,
            closing: false,
            disconnect_sent: false,
            failed: None,
            max_incoming: MAX_CONTROL,
            subscribed_max: options.max_incoming.max(MAX_CONTROL),
            suback_due: None,
        })
    }

    /// Subscribes to `filter`: [`Event::Subscribed`] follows when the broker grants it, and
    /// then its messages as [`Event::Message`]. Does not wait.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), PublishError> {
        if self.closing {
            return Err(PublishError::Disconnecting);
        }
        let pkid = self.free_pid();
        self.last_pid = pkid;
        let mut subscribe = v4::Subscribe::new(filter, qos.into());
        subscribe.pkid = pkid;
        let mut frame = BytesMut::new();
        subscribe.write(&mut frame).map_err(PublishError::Encode)?;
        // From now on the broker may send PUBLISHes, up to the size allowed.
        self.max_incoming = self.subscribed_max;
        self.suback_due = Some(pkid);
        self.expect_reply();
        self.send(&frame);
        Ok(())
    }

    /// QoS 1 messages awaiting their PUBACK.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Publishes a message: writes it to the socket, or behind the bytes the socket has not
    /// taken yet. Does not wait. At QoS 1, `tag` comes back in [`Event::Acked`] on the PUBACK;
    /// at QoS 0 it is dropped.
    pub fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        tag: T,
    ) -> Result<(), PublishError> {
        if self.closing {
            return Err(PublishError::Disconnecting);
        }
        if qos == QoS::AtLeastOnce && self.inflight.len() >= self.max_inflight {
            return Err(PublishError::InflightFull(self.inflight.len()));
        }
        let pkid = match qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => self.free_pid(),
        };
        let mut publish =
            v4::Publish::from_bytes(topic, qos.into(), Bytes::copy_from_slice(payload));
        publish.retain = retain;
        publish.pkid = pkid;
        let mut frame = BytesMut::with_capacity(publish.len() + 5);
        publish.write(&mut frame).map_err(PublishError::Encode)?;
        if frame.len() > self.max_packet {
            return Err(PublishError::TooLarge(frame.len(), self.max_packet));
        }
        // An empty buffer takes any packet: the socket usually takes all of it at once.
        if !self.tx.is_empty() && self.tx.len() + frame.len() > self.max_packet {
            return Err(PublishError::BufferFull(self.tx.len(), frame.len()));
        }
        if qos == QoS::AtLeastOnce {
            self.last_pid = pkid;
            self.inflight.push((pkid, tag));
            self.expect_reply();
        }
        self.send(&frame);
        Ok(())
    }

    /// Asks for the connection to end gracefully: once the messages in flight are acknowledged,
    /// DISCONNECT is sent and [`Connection::next`] yields [`Event::Disconnected`]. Further
    /// publishing is refused.
    pub fn disconnect(&mut self) {
        self.closing = true;
    }

    /// Drives the connection until something happens: a PUBACK, the end of a graceful
    /// disconnect, or an error. Cancel-safe: it changes nothing while it waits, so it can be
    /// one branch of a `select!` among others.
    pub async fn next(&mut self) -> Result<Event<T>, Error> {
        loop {
            if let Some(error) = self.failed.take() {
                return Err(error.into());
            }
            if let Some(event) = self.decode()? {
                return Ok(event);
            }
            if self.closing {
                if !self.disconnect_sent && self.inflight.is_empty() {
                    self.send(&DISCONNECT);
                    self.disconnect_sent = true;
                    continue;
                }
                if self.disconnect_sent && self.tx.is_empty() {
                    return Ok(Event::Disconnected);
                }
            }
            let now = Instant::now();
            if self.reply_due.is_some_and(|due| now >= due) {
                return Err(Error::Timeout(self.keep_alive));
            }
            // No ping while one is unanswered, nor after DISCONNECT.
            let ping_at = (!self.ping_outstanding && !self.disconnect_sent)
                .then(|| self.last_sent + self.keep_alive);
            if ping_at.is_some_and(|at| now >= at) {
                self.send(&PINGREQ);
                self.ping_outstanding = true;
                self.expect_reply();
                continue;
            }
            // With neither a ping nor a reply pending, waking after a keep-alive just looks again.
            let wake = [self.reply_due, ping_at]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + self.keep_alive);
            tokio::select! {
                ready = self.stream.readable() => {
                    ready?;
                    self.read()?;
                }
                ready = self.stream.writable(), if !self.tx.is_empty() => {
                    ready?;
                    self.flush()?;
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// The next packet id not in flight (never 0).
    fn free_pid(&self) -> u16 {
        let mut id = self.last_pid;
        loop {
            id = id.wrapping_add(1).max(1);
            if !self.inflight.iter().any(|(p, _)| *p == id) {
                return id;
            }
        }
    }

    fn expect_reply(&mut self) {
        if self.reply_due.is_none() {
            self.reply_due = Some(Instant::now() + self.keep_alive);
        }
    }

    /// The broker has spoken: it is alive, and owes a reply only for what is still waiting.
    fn replied(&mut self) {
        self.reply_due =
            (self.ping_outstanding || !self.inflight.is_empty() || self.suback_due.is_some())
                .then(|| Instant::now() + self.keep_alive);
    }

    /// Writes `frame` now if nothing is waiting before it, and keeps what the socket did not
    /// take.
    fn send(&mut self, frame: &[u8]) {
        self.last_sent = Instant::now();
        if self.failed.is_some() {
            return;
        }
        let mut rest = frame;
        if self.tx.is_empty() {
            match self.stream.try_write(frame) {
                Ok(n) => rest = &frame[n..],
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    self.failed = Some(error);
                    return;
                }
            }
        }
        self.tx.extend_from_slice(rest);
    }

    fn flush(&mut self) -> Result<(), Error> {
        match self.stream.try_write(&self.tx) {
            Ok(n) => {
                self.tx.drain(..n);
                if self.tx.is_empty() {
                    // A backlog is rare on loopback; ten thousand idle buffers are not free.
                    self.tx = Vec::new();
                }
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    fn read(&mut self) -> Result<(), Error> {
        self.rx.reserve(READ_CHUNK);
        match self.stream.try_read_buf(&mut self.rx) {
            Ok(0) => Err(Error::Closed),
            Ok(_) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Handles the packets read so far, up to the first that is an event.
    fn decode(&mut self) -> Result<Option<Event<T>>, Error> {
        loop {
            let packet = match v4::read(&mut self.rx, self.max_incoming) {
                Ok(packet) => packet,
                Err(mqttbytes::Error::InsufficientBytes(_)) => {
                    // A large message has passed: give its room back, as an idle node holds
                    // only a few dozen bytes.
                    if self.rx.is_empty() && self.rx.capacity() > 4 * READ_CHUNK {
                        self.rx = BytesMut::new();
                    }
                    return Ok(None);
                }
                Err(error) => return Err(Error::Malformed(error)),
            };
            match packet {
                Packet::PubAck(ack) => {
                    let tag = self
                        .inflight
                        .iter()
                        .position(|(p, _)| *p == ack.pkid)
                        .map(|at| self.inflight.swap_remove(at).1);
                    self.replied();
                    // A PUBACK for no message in flight acknowledges nothing of ours: with
                    // clean sessions every id it can name belongs to this connection.
                    if let Some(tag) = tag {
                        return Ok(Some(Event::Acked(tag)));
                    }
                }
                Packet::PingResp => {
                    self.ping_outstanding = false;
                    self.replied();
                }
                Packet::SubAck(ack) if Some(ack.pkid) == self.suback_due => {
                    self.suback_due = None;
                    self.replied();
                    let granted = ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, v4::SubscribeReasonCode::Success(_)));
                    return Ok(Some(if granted {
                        Event::Subscribed
                    } else {
                        Event::SubscribeRefused
                    }));
                }
                Packet::Publish(publish) if self.max_incoming > MAX_CONTROL => {
                    if publish.qos == mqttbytes::QoS::AtLeastOnce {
                        let [hi, lo] = publish.pkid.to_be_bytes();
                        self.send(&[0x40, 0x02, hi, lo]);
                    }
                    return Ok(Some(Event::Message {
                        topic: publish.topic,
                        payload: publish.payload,
                    }));
                }
                other => return Err(Error::Unexpected(name(&other))),
            }
        }
    }
}

fn name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const TOPIC: &str = "tianzhong/v1/plant-1/n-1/telemetry";

    /// The broker's side of one connection: reads whole packets as a broker would.
    struct Peer {
        stream: TcpStream,
        buf: BytesMut,
    }

    impl Peer {
        async fn packet(&mut self) -> Packet {
            loop {
                match v4::read(&mut self.buf, 1 << 16) {
                    Ok(packet) => return packet,
                    Err(mqttbytes::Error::InsufficientBytes(_)) => {
                        let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                        assert!(n > 0, "the client closed the connection");
                    }
                    Err(error) => panic!("malformed packet from the client: {error:?}"),
                }
            }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.unwrap();
        }

        async fn puback(&mut self, pkid: u16) {
            let [hi, lo] = pkid.to_be_bytes();
            self.send(&[0x40, 0x02, hi, lo]).await;
        }

        /// Whether the client closed its end (after reading anything still in flight).
        async fn closed(&mut self) -> bool {
            loop {
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        }
    }

    fn options(broker: SocketAddr, keep_alive_s: u64, max_inflight: usize) -> Options<'static> {
        Options {
            broker,
            client_id: "n-1",
            keep_alive: Duration::from_secs(keep_alive_s),
            connect_timeout: Duration::from_secs(5),
            will: Some(Will {
                topic: "tianzhong/v1/plant-1/n-1/status",
                payload: br#"{"v":1,"online":false}"#,
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            max_packet: 256,
            max_inflight,
            max_incoming: 2048,
        }
    }

    /// A client connected to a listener that answers CONNECT with `connack`.
    async fn connected(
        keep_alive_s: u64,
        max_inflight: usize,
        connack: [u8; 4],
    ) -> (Result<Connection<u32>, Error>, Peer, v4::Connect) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let broker = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut peer = Peer {
                stream,
                buf: BytesMut::new(),
            };
            let Packet::Connect(connect) = peer.packet().await else {
                panic!("the first packet is not CONNECT");
            };
            peer.send(&connack).await;
            (peer, connect)
        });
        let client = Connection::connect(&options(addr, keep_alive_s, max_inflight)).await;
        let (peer, connect) = broker.await.unwrap();
        (client, peer, connect)
    }

    const ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

    #[tokio::test]
    async fn connect_carries_the_will_and_publishes_are_acknowledged_by_tag() {
        let (client, mut peer, connect) = connected(5, 8, ACCEPTED).await;
        let mut client = client.unwrap();
        assert_eq!((connect.client_id.as_str(), connect.keep_alive), ("n-1", 5));
        assert!(connect.clean_session);
        let will = connect.last_will.expect("a will");
        assert_eq!(will.topic, "tianzhong/v1/plant-1/n-1/status");
        assert_eq!(&will.message[..], br#"{"v":1,"online":false}"#);
        assert_eq!((will.qos, will.retain), (mqttbytes::QoS::AtLeastOnce, true));

        client
            .publish(TOPIC, b"zero", QoS::AtMostOnce, false, 0)
            .unwrap();
        client
            .publish(TOPIC, b"one", QoS::AtLeastOnce, true, 1)
            .unwrap();
        client
            .publish(TOPIC, b"two", QoS::AtLeastOnce, false, 2)
            .unwrap();
        let mut pkids = Vec::new();
        for (payload, qos, retain) in [
            (&b"zero"[..], mqttbytes::QoS::AtMostOnce, false),
            (b"one", mqttbytes::QoS::AtLeastOnce, true),
            (b"two", mqttbytes::QoS::AtLeastOnce, false),
        ] {
            let Packet::Publish(p) = peer.packet().await else {
                panic!("not a PUBLISH");
            };
            assert_eq!(
                (p.topic.as_str(), &p.payload[..], p.qos, p.retain),
                (TOPIC, payload, qos, retain)
            );
            pkids.push(p.pkid);
        }
        assert_eq!(pkids[0], 0, "QoS 0 carries no packet id");
        assert!(pkids[1] != 0 && pkids[2] != 0 && pkids[1] != pkids[2]);
        assert_eq!(client.inflight(), 2);

        // Acknowledged out of order: each tag comes back with its own PUBACK.
        peer.puback(pkids[2]).await;
        peer.puback(pkids[1]).await;
        assert_eq!(client.next().await.unwrap(), Event::Acked(2));
        assert_eq!(client.next().await.unwrap(), Event::Acked(1));
        assert_eq!(client.inflight(), 0);
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error() {
        // Return code 5: not authorised.
        let (client, _peer, _) = connected(5, 8, [0x20, 0x02, 0x00, 0x05]).await;
        assert!(
            matches!(
                client,
                Err(Error::Refused(ConnectReturnCode::NotAuthorized))
            ),
            "{:?}",
            client.err()
        );
    }

    #[tokio::test]
    async fn a_full_window_refuses_qos_1_but_not_qos_0() {
        let (client, mut peer, _) = connected(5, 2, ACCEPTED).await;
        let mut client = client.unwrap();
        client
            .publish(TOPIC, b"a", QoS::AtLeastOnce, false, 1)
            .unwrap();
        client
            .publish(TOPIC, b"b", QoS::AtLeastOnce, false, 2)
            .unwrap();
        let refused = client.publish(TOPIC, b"c", QoS::AtLeastOnce, false, 3);
        assert!(
            matches!(&refused, Err(e @ PublishError::InflightFull(2)) if e.is_backpressure()),
            "{refused:?}"
        );
        client
            .publish(TOPIC, b"d", QoS::AtMostOnce, false, 4)
            .unwrap();
        let too_large = client.publish(TOPIC, &[b'x'; 300], QoS::AtMostOnce, false, 5);
        assert!(
            matches!(too_large, Err(PublishError::TooLarge(_, 256))),
            "{too_large:?}"
        );

        // Once one is acknowledged, the window has room again.
        let Packet::Publish(first) = peer.packet().await else {
            panic!("not a PUBLISH");
        };
        peer.puback(first.pkid).await;
        assert_eq!(client.next().await.unwrap(), Event::Acked(1));
        client
            .publish(TOPIC, b"e", QoS::AtLeastOnce, false, 6)
            .unwrap();
    }

    #[tokio::test]
    async fn disconnect_waits_for_the_acks_then_sends_disconnect() {
        let (client, mut peer, _) = connected(5, 8, ACCEPTED).await;
        let mut client = client.unwrap();
        client
            .publish(TOPIC, b"bye", QoS::AtLeastOnce, true, 7)
            .unwrap();
        client.disconnect();
        assert!(matches!(
            client.publish(TOPIC, b"late", QoS::AtMostOnce, false, 8),
            Err(PublishError::Disconnecting)
        ));
        let Packet::Publish(p) = peer.packet().await else {
            panic!("not a PUBLISH");
        };
        // Nothing follows the PUBLISH until it is acknowledged.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), client.next())
                .await
                .is_err()
        );
        peer.puback(p.pkid).await;
        assert_eq!(client.next().await.unwrap(), Event::Acked(7));
        assert_eq!(client.next().await.unwrap(), Event::Disconnected);
        assert_eq!(peer.packet().await, Packet::Disconnect);
    }

    #[tokio::test]
    async fn an_idle_client_pings_and_gives_up_on_a_silent_broker() {
        let (client, mut peer, _) = connected(1, 8, ACCEPTED).await;
        let mut client = client.unwrap();
        let started = Instant::now();
        let driven = tokio::spawn(async move {
            let result = client.next().await;
            (result, started.elapsed())
        });
        // The first PINGREQ after a keep-alive of silence, answered; the second left unanswered.
        assert_eq!(peer.packet().await, Packet::PingReq);
        let first = started.elapsed();
        assert!(first >= Duration::from_millis(900), "{first:?}");
        peer.send(&[0xD0, 0x00]).await;
        assert_eq!(peer.packet().await, Packet::PingReq);
        let (result, ended) = driven.await.unwrap();
        assert!(
            matches!(result, Err(Error::Timeout(d)) if d == Duration::from_secs(1)),
            "{result:?}"
        );
        assert!(ended >= Duration::from_millis(2900), "{ended:?}");
        assert!(peer.closed().await);
    }

    #[tokio::test]
    async fn a_closed_socket_or_a_stray_publish_ends_the_connection() {
        let (client, peer, _) = connected(5, 8, ACCEPTED).await;
        let mut client = client.unwrap();
        drop(peer);
        assert!(matches!(client.next().await, Err(Error::Closed)));

        let (client, mut peer, _) = connected(5, 8, ACCEPTED).await;
        let mut client: Connection<u32> = client.unwrap();
        // PUBLISH, QoS 0, topic "t", payload "x": a broker has no reason to send it.
        peer.send(&[0x30, 0x04, 0x00, 0x01, b't', b'x']).await;
        assert!(
            matches!(client.next().await, Err(Error::Unexpected("PUBLISH"))),
            "a publish-only client never subscribed"
        );
    }

    #[tokio::test]
    async fn a_subscription_delivers_messages_and_acknowledges_them() {
        let (client, mut peer, _) = connected(5, 8, ACCEPTED).await;
        let mut client: Connection<u32> = client.unwrap();
        let filter = "tianzhong/v1/plant-1/n-1/fwupdate";
        client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        let Packet::Subscribe(sub) = peer.packet().await else {
            panic!("not a SUBSCRIBE");
        };
        assert_eq!(sub.filters.len(), 1);
        assert_eq!(
            (sub.filters[0].path.as_str(), sub.filters[0].qos),
            (filter, mqttbytes::QoS::AtLeastOnce)
        );
        let [hi, lo] = sub.pkid.to_be_bytes();
        peer.send(&[0x90, 0x03, hi, lo, 0x01]).await;
        assert_eq!(client.next().await.unwrap(), Event::Subscribed);

        // A QoS 1 message larger than any control packet: delivered, then acknowledged.
        let payload = vec![0xA5u8; 1500];
        let mut publish =
            v4::Publish::from_bytes(filter, mqttbytes::QoS::AtLeastOnce, Bytes::from(payload));
        publish.pkid = 42;
        let mut frame = BytesMut::new();
        publish.write(&mut frame).unwrap();
        peer.send(&frame).await;
        match client.next().await.unwrap() {
            Event::Message { topic, payload } => {
                assert_eq!(topic, filter);
                assert_eq!(payload.len(), 1500);
                assert!(payload.iter().all(|&b| b == 0xA5));
            }
            other => panic!("{other:?}"),
        }
        // The PUBACK goes out with the client's next write; driving it flushes.
        let _ = tokio::time::timeout(Duration::from_millis(50), client.next()).await;
        let Packet::PubAck(ack) = peer.packet().await else {
            panic!("not a PUBACK");
        };
        assert_eq!(ack.pkid, 42);

        // Larger than allowed: the connection ends as malformed.
        let mut publish = v4::Publish::from_bytes(
            filter,
            mqttbytes::QoS::AtMostOnce,
            Bytes::from(vec![0u8; 4000]),
        );
        publish.pkid = 0;
        let mut frame = BytesMut::new();
        publish.write(&mut frame).unwrap();
        peer.send(&frame).await;
        assert!(matches!(client.next().await, Err(Error::Malformed(_))));
    }
}
