//! The InfluxDB writer against a scripted HTTP stub: the request it sends, and how it treats
//! each kind of answer (VictoriaMetrics, used end to end, accepts malformed lines silently and
//! never throttles, so these paths need a server that misbehaves on purpose).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tianzhong_gateway::config::Secret;
use tianzhong_gateway::sinks::influx::writer::{Attempt, WriteErrorKind, Writer, WriterConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BATCH: &str = "combustible_gas,channel=ch0,node=cp-gas-07,site=plant-1,unit=%LEL value=12.5,quality=\"N\",seq=42u 1700000000000\n\
                     combustible_gas,channel=ch0,node=cp-gas-07,site=plant-1,unit=%LEL value=12.7,quality=\"N\",seq=43u 1700000001000";

/// One scripted answer, used for one connection.
enum Reply {
    /// Answer with this status, extra headers and body.
    Status(u16, Vec<(&'static str, String)>, String),
    /// Read the request and never answer, holding the connection until the client drops it.
    Hang,
}

fn status(code: u16) -> Reply {
    Reply::Status(code, Vec::new(), String::new())
}

/// One request as the stub received it.
#[derive(Debug)]
struct Received {
    request_line: String,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: String,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Stub {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Stub {
    /// Serves `script` in order, one reply per connection (each reply closes its connection,
    /// so every attempt of the writer is one connection). Past the script, answers 418 so a
    /// surplus attempt shows up as a failure.
    async fn start(script: Vec<Reply>) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        tokio::spawn(async move {
            let mut script = script.into_iter();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let reply = script.next().unwrap_or_else(|| status(418));
                tokio::spawn(serve(socket, reply, Arc::clone(&log)));
            }
        });
        Stub { url, received }
    }

    fn received(&self) -> std::sync::MutexGuard<'_, Vec<Received>> {
        self.received.lock().unwrap()
    }
}

async fn serve(mut socket: TcpStream, reply: Reply, log: Arc<Mutex<Vec<Received>>>) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    log.lock().unwrap().push(request);
    match reply {
        Reply::Status(code, headers, body) => {
            let mut response = format!(
                "HTTP/1.1 {code} Scripted\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                response.push_str(&format!("{name}: {value}\r\n"));
            }
            response.push_str("\r\n");
            response.push_str(&body);
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
        Reply::Hang => {
            // Returns when the client gives up and closes.
            let mut sink = [0u8; 256];
            while let Ok(n) = socket.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        }
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let at = Instant::now();
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        request_line,
        headers,
        body: String::from_utf8(body).ok()?,
        at,
    })
}

fn config(url: &str) -> WriterConfig {
    WriterConfig {
        url: url.to_owned(),
        org: "city".into(),
        bucket: "sensing".into(),
        token: Some(Secret::new("s3cr3t-token")),
        timeout: Duration::from_secs(5),
        max_retries: 3,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        retry_after_max: Duration::from_secs(3),
    }
}

fn writer(url: &str) -> Writer {
    Writer::new(config(url)).unwrap()
}

#[tokio::test]
async fn a_204_is_success_in_one_attempt_and_the_request_is_right() {
    let stub = Stub::start(vec![status(204)]).await;
    let report = writer(&stub.url).write(BATCH).await.unwrap();
    assert_eq!(report.attempts, 1);
    assert_eq!(report.status, 204);
    assert_eq!(report.waited, Duration::ZERO);

    let received = stub.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(
        request.request_line,
        "POST /api/v2/write?org=city&bucket=sensing&precision=ms HTTP/1.1"
    );
    assert_eq!(request.header("authorization"), Some("Token s3cr3t-token"));
    assert_eq!(
        request.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(request.body, BATCH);
}

#[tokio::test]
async fn no_token_sends_no_authorization_and_a_200_also_succeeds() {
    let stub = Stub::start(vec![status(200)]).await;
    let writer = Writer::new(WriterConfig {
        token: None,
        ..config(&stub.url)
    })
    .unwrap();
    assert_eq!(
        writer.try_write(BATCH).await,
        Attempt::Written { status: 200 }
    );
    let received = stub.received();
    assert_eq!(received[0].header("authorization"), None);
    assert_eq!(received[0].body, BATCH);
}

#[tokio::test]
async fn a_400_is_not_retried_and_its_message_surfaces() {
    let message = "unable to parse 'combustible_gas value=': missing field value";
    let body = format!(r#"{{"code":"invalid","message":"{message}"}}"#);
    let stub = Stub::start(vec![Reply::Status(
        400,
        vec![("Content-Type", "application/json".into())],
        body,
    )])
    .await;
    let error = writer(&stub.url).write(BATCH).await.unwrap_err();
    assert_eq!(error.kind, WriteErrorKind::Malformed);
    assert!(!error.kind.is_retryable());
    assert_eq!(error.status, Some(400));
    assert_eq!(error.message, message);
    assert_eq!(error.attempts, 1);
    assert_eq!(error.bucket, "sensing");
    let text = error.to_string();
    for part in [stub.url.as_str(), "sensing", "HTTP 400", message] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
    assert_eq!(stub.received().len(), 1, "a 400 must not be retried");
}

#[tokio::test]
async fn a_401_is_an_auth_error_and_not_retried() {
    let stub = Stub::start(vec![Reply::Status(
        401,
        Vec::new(),
        r#"{"code":"unauthorized","message":"unauthorized access"}"#.into(),
    )])
    .await;
    let error = writer(&stub.url).write(BATCH).await.unwrap_err();
    assert_eq!(error.kind, WriteErrorKind::Auth);
    assert_eq!(error.status, Some(401));
    assert_eq!(error.message, "unauthorized access");
    assert_eq!(error.attempts, 1);
    assert!(!error.to_string().contains("s3cr3t"), "{error}");
    assert_eq!(stub.received().len(), 1, "a 401 must not be retried");
}

#[tokio::test]
async fn single_attempts_classify_403_413_and_404() {
    let stub = Stub::start(vec![
        status(403),
        status(413),
        Reply::Status(404, Vec::new(), "bucket \"sensing\" not found".into()),
    ])
    .await;
    let writer = writer(&stub.url);
    for (kind, code) in [
        (WriteErrorKind::Auth, 403),
        (WriteErrorKind::TooLarge, 413),
        (WriteErrorKind::Rejected, 404),
    ] {
        match writer.try_write(BATCH).await {
            Attempt::Failed { error, retry_after } => {
                assert_eq!(error.kind, kind);
                assert_eq!(error.status, Some(code));
                assert!(!error.kind.is_retryable());
                assert_eq!(retry_after, None);
                if code == 404 {
                    // A text body, not InfluxDB's JSON, is kept as it is.
                    assert_eq!(error.message, "bucket \"sensing\" not found");
                }
            }
            other => panic!("HTTP {code} gave {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_429_with_retry_after_seconds_is_honoured() {
    let stub = Stub::start(vec![
        Reply::Status(429, vec![("Retry-After", "1".into())], String::new()),
        status(204),
    ])
    .await;
    let report = writer(&stub.url).write(BATCH).await.unwrap();
    assert_eq!(report.attempts, 2);
    assert!(report.waited >= Duration::from_secs(1), "{report:?}");
    let received = stub.received();
    assert_eq!(received.len(), 2);
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after only {gap:?}");
    assert_eq!(received[1].body, BATCH);
}

#[tokio::test]
async fn a_503_with_retry_after_date_is_honoured() {
    // HTTP dates have whole seconds, so "now + 2 s" asks for a wait of more than 1 s.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
    let stub = Stub::start(vec![
        Reply::Status(503, vec![("Retry-After", date)], "overloaded".into()),
        status(204),
    ])
    .await;
    let report = writer(&stub.url).write(BATCH).await.unwrap();
    assert_eq!(report.attempts, 2);
    let received = stub.received();
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after only {gap:?}");
}

#[tokio::test]
async fn retry_after_is_capped() {
    let stub = Stub::start(vec![Reply::Status(
        429,
        vec![("Retry-After", "3600".into())],
        String::new(),
    )])
    .await;
    match writer(&stub.url).try_write(BATCH).await {
        Attempt::Failed { error, retry_after } => {
            assert_eq!(error.kind, WriteErrorKind::Throttled);
            assert!(error.kind.is_retryable());
            assert_eq!(retry_after, Some(Duration::from_secs(3)));
        }
        other => panic!("a 429 gave {other:?}"),
    }
}

#[tokio::test]
async fn server_errors_are_retried_with_growing_backoff() {
    let stub = Stub::start(vec![status(500), status(500), status(204)]).await;
    let report = writer(&stub.url).write(BATCH).await.unwrap();
    assert_eq!(report.attempts, 3);
    let received = stub.received();
    assert_eq!(received.len(), 3);
    // Jitter keeps each wait in the upper half of 100 ms, then 200 ms.
    let first = received[1].at - received[0].at;
    let second = received[2].at - received[1].at;
    assert!(first >= Duration::from_millis(50), "{first:?}");
    assert!(second >= Duration::from_millis(100), "{second:?}");
    assert!(report.waited >= Duration::from_millis(150), "{report:?}");
}

#[tokio::test]
async fn server_errors_past_max_retries_fail_with_the_last_status() {
    let stub = Stub::start(vec![status(502), status(502)]).await;
    let writer = Writer::new(WriterConfig {
        max_retries: 1,
        backoff_base: Duration::from_millis(10),
        ..config(&stub.url)
    })
    .unwrap();
    let error = writer.write(BATCH).await.unwrap_err();
    assert_eq!(error.kind, WriteErrorKind::Server);
    assert_eq!(error.status, Some(502));
    assert_eq!(error.attempts, 2);
    assert_eq!(stub.received().len(), 2);
}

fn impatient(url: &str) -> Writer {
    Writer::new(WriterConfig {
        timeout: Duration::from_millis(300),
        max_retries: 1,
        backoff_base: Duration::from_millis(20),
        ..config(url)
    })
    .unwrap()
}

#[tokio::test]
async fn a_silent_server_times_out_and_is_retried() {
    let stub = Stub::start(vec![Reply::Hang, status(204)]).await;
    let started = Instant::now();
    let report = impatient(&stub.url).write(BATCH).await.unwrap();
    assert_eq!(report.attempts, 2);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(stub.received().len(), 2);
}

#[tokio::test]
async fn a_server_that_never_answers_ends_in_a_timeout_error() {
    let stub = Stub::start(vec![Reply::Hang, Reply::Hang]).await;
    let started = Instant::now();
    let error = impatient(&stub.url).write(BATCH).await.unwrap_err();
    assert_eq!(error.kind, WriteErrorKind::Timeout);
    assert!(error.kind.is_retryable());
    assert_eq!(error.status, None);
    assert_eq!(error.attempts, 2);
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(stub.received().len(), 2);
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    // A port that was just free: nothing listens there now.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let writer = Writer::new(WriterConfig {
        max_retries: 2,
        backoff_base: Duration::from_millis(10),
        ..config(&url)
    })
    .unwrap();
    let error = writer.write(BATCH).await.unwrap_err();
    assert_eq!(error.kind, WriteErrorKind::Connect);
    assert!(error.kind.is_retryable());
    assert_eq!(error.attempts, 3);
    assert!(error.to_string().contains(&url), "{error}");
}

fn record(seq: u32) -> tianzhong_gateway::pipeline::Record {
    use tianzhong_protocol::reading::{ChannelId, Timestamp};
    use tianzhong_protocol::{NodeId, Quality, Quantity, Reading, SiteId};
    tianzhong_gateway::pipeline::Record {
        site: SiteId::new("plant-1").unwrap(),
        reading: Reading::new(
            NodeId::new("cp-gas-07").unwrap(),
            ChannelId(0),
            Quantity::CombustibleGas,
            12.5,
            Timestamp(1_700_000_000_000 + u64::from(seq) * 1000),
            seq,
            Quality::Good,
        )
        .unwrap(),
        received_ms: 0,
        device_time: false,
    }
}

/// The sink task: flushes by size and after the flush interval, confirms each outbox batch
/// only once written, and when a body is refused as malformed writes its batches one by one,
/// confirming the good ones and setting aside only the poisoned one.
#[tokio::test]
async fn the_sink_confirms_written_batches_and_sets_aside_only_the_poisoned_one() {
    use tianzhong_gateway::metrics::{DeviceTable, Metrics};
    use tianzhong_gateway::outbox::BatchId;
    use tianzhong_gateway::pipeline::{Acker, Confirmation, Delivery, Output};
    use tianzhong_gateway::sinks::influx::sink;

    let stub = Stub::start(vec![
        status(204),
        Reply::Status(
            400,
            Vec::new(),
            r#"{"code":"invalid","message":"bad line"}"#.into(),
        ),
        status(204),
        Reply::Status(
            400,
            Vec::new(),
            r#"{"code":"invalid","message":"bad line"}"#.into(),
        ),
        status(204),
        status(204),
        status(204),
    ])
    .await;
    let metrics = Arc::new(Metrics::new(DeviceTable::default()));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let (acker, mut confirmations) = Acker::channel();
    let task = tokio::spawn(sink::run(
        writer(&stub.url),
        3,
        Duration::from_millis(300),
        rx,
        acker,
        Arc::clone(&metrics),
    ));
    let deliver = |id: u64, seqs: std::ops::Range<u32>| Delivery {
        output: Output::Readings(seqs.map(record).collect::<Vec<_>>().into()),
        batch: Some(BatchId(id)),
    };
    // Batch 1 alone reaches the size: written (204).
    tx.send(deliver(1, 0..4)).await.unwrap();
    // Batches 2, 3, 4 fill the next body, which is refused (400); one by one, 2 and 4 pass
    // and 3 is refused again.
    tx.send(deliver(2, 4..5)).await.unwrap();
    tx.send(deliver(3, 5..6)).await.unwrap();
    tx.send(deliver(4, 6..7)).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let c = tokio::time::timeout(Duration::from_secs(10), confirmations.recv())
            .await
            .expect("confirmations")
            .unwrap();
        seen.push(c);
    }
    assert_eq!(seen[0], Confirmation::Done(BatchId(1)));
    assert_eq!(seen[1], Confirmation::Done(BatchId(2)));
    match &seen[2] {
        Confirmation::Rejected(id, reason) => {
            assert_eq!(*id, BatchId(3));
            assert!(reason.contains("bad line"), "{reason}");
        }
        other => panic!("expected batch 3 rejected, got {other:?}"),
    }
    assert_eq!(seen[3], Confirmation::Done(BatchId(4)));
    // A partial body goes after the flush interval, without more input.
    let before = Instant::now();
    tx.send(deliver(5, 7..8)).await.unwrap();
    let c = tokio::time::timeout(Duration::from_secs(10), confirmations.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c, Confirmation::Done(BatchId(5)));
    assert!(before.elapsed() >= Duration::from_millis(250));
    // Closing the channel flushes what is held.
    tx.send(deliver(6, 8..9)).await.unwrap();
    drop(tx);
    task.await.unwrap();
    assert_eq!(
        confirmations.recv().await,
        Some(Confirmation::Done(BatchId(6)))
    );
    let received = stub.received();
    let lines: Vec<usize> = received.iter().map(|r| r.body.lines().count()).collect();
    assert_eq!(lines, vec![4, 3, 1, 1, 1, 1, 1]);
    // Batch 3's reading (seq 5) was never written; every other one was, once.
    let written: Vec<String> = [0usize, 2, 4, 5, 6]
        .iter()
        .flat_map(|&i| {
            received[i]
                .body
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|l| {
            l.split("seq=")
                .nth(1)
                .unwrap()
                .split('u')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(written, ["0", "1", "2", "3", "4", "6", "7", "8"]);
    let text = metrics.render();
    for expected in [
        "tianzhong_sink_points_total{sink=\"influxdb\",result=\"written\"} 8",
        "tianzhong_sink_points_total{sink=\"influxdb\",result=\"dead_lettered\"} 1",
        "tianzhong_sink_errors_total{sink=\"influxdb\",kind=\"malformed\"} 2",
    ] {
        assert!(text.contains(expected), "{expected} not in\n{text}");
    }
}
