//! The InfluxDB v2 HTTP writer: sends batches already encoded as line protocol to
//! `/api/v2/write` and says what became of them.
//!
//! # Why line protocol over reqwest, not the `influxdb2` crate
//!
//! The gateway encodes each batch once, with [`line_protocol`](super::line_protocol), into one
//! string, without allocating per reading. The `influxdb2` crate's per-point API builds a
//! `DataPoint` per reading — some 15 heap allocations for its `String`s and two `BTreeMap`s —
//! and serialises the points again itself. Measured on this project's 2-core machine
//! (1 000 000 points in batches of 5 000 to a local stub answering 204, median of 3 runs,
//! `influxdb2` 0.5.2):
//!
//! | client | points/s | CPU s per 10⁶ points | peak RSS |
//! |---|---|---|---|
//! | `influxdb2` `DataPoint` + `write_with_precision(ms)` | 141 000 | 6.36 | 19.2 MB |
//! | our encoder + `influxdb2::write_line_protocol_with_precision` | 1 970 000 | 0.39 | 13.0 MB |
//! | our encoder + reqwest (this module) | 2 320 000 | 0.32 | 8.0 MB |
//!
//! At 6.4 CPU s per million points, the crate's point API alone would need 1.3 cores for the
//! 200 000 readings/s target. Its line-protocol call is fast, but it throws the response
//! headers away (no `Retry-After`), has no timeout or retry of its own and pulls in a second
//! HTTP stack (reqwest 0.11, hyper 0.14). Posting the encoded body ourselves keeps the whole
//! response in hand (status, `Retry-After`, the server's message), which the durable outbox
//! needs to tell a batch to dead-letter (400) from one to split (413), a configuration
//! problem (401/403) and one to retry (429, 5xx).
//!
//! # Outcomes
//!
//! | response | [`WriteErrorKind`] | retried by [`Writer::write`] |
//! |---|---|---|
//! | 2xx | — (success) | — |
//! | 400 | [`Malformed`](WriteErrorKind::Malformed), with the server's message | no |
//! | 401, 403 | [`Auth`](WriteErrorKind::Auth) | no |
//! | 413 | [`TooLarge`](WriteErrorKind::TooLarge) | no: the caller splits the batch |
//! | 429, 503 | [`Throttled`](WriteErrorKind::Throttled) | yes, after `Retry-After` (capped) |
//! | other 5xx | [`Server`](WriteErrorKind::Server) | yes, with backoff |
//! | no answer in time | [`Timeout`](WriteErrorKind::Timeout) | yes, with backoff |
//! | no connection | [`Connect`](WriteErrorKind::Connect) | yes, with backoff |
//! | other failures of the exchange | [`Transport`](WriteErrorKind::Transport) | yes, with backoff |
//! | anything else (404 for a missing bucket, 3xx, …) | [`Rejected`](WriteErrorKind::Rejected) | no |
//!
//! Backoff doubles from [`WriterConfig::backoff_base`] up to [`WriterConfig::backoff_max`],
//! and each wait is drawn from its upper half so that gateways which failed together do not
//! retry together, while a wait is never shorter than half the nominal one.
//!
//! [`Writer::try_write`] makes one attempt and reports it as an [`Attempt`], so that a durable
//! outbox can own the retry loop (and persist between attempts); [`Writer::write`] is the
//! in-memory loop over it.
//!
//! Only plain `http://` is built in: the gateway links no TLS stack yet, and [`Writer::new`]
//! refuses an `https://` URL rather than fail on every write.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};

use super::line_protocol::WRITE_PRECISION;
use crate::config::{InfluxDbSink, Secret};

/// Longest server message kept in an error: an HTML error page from a proxy would otherwise
/// fill the log and the dead-letter record.
const MAX_MESSAGE_LEN: usize = 1024;

/// What the writer needs to know.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Base URL of the database, e.g. `http://127.0.0.1:8086` (a path prefix is kept).
    pub url: String,
    /// Organisation.
    pub org: String,
    /// Bucket.
    pub bucket: String,
    /// API token, sent as `Authorization: Token …`; `None` sends no `Authorization` header.
    pub token: Option<Secret>,
    /// Limit on one whole request, from connecting to reading the response body.
    pub timeout: Duration,
    /// Retries after the first attempt in [`Writer::write`].
    pub max_retries: u32,
    /// Nominal wait before the first retry; doubled for each one after.
    pub backoff_base: Duration,
    /// Longest nominal wait between retries.
    pub backoff_max: Duration,
    /// Longest wait a server's `Retry-After` can impose, so that a misconfigured proxy asking
    /// for a day does not stall the sink for a day.
    pub retry_after_max: Duration,
}

impl WriterConfig {
    /// The settings of a `[sink.influxdb]` section, with the default timeout (10 s), five
    /// retries, backoff from 200 ms to 30 s, and `Retry-After` capped at 60 s.
    pub fn from_sink(sink: &InfluxDbSink) -> WriterConfig {
        WriterConfig {
            url: sink.url.clone(),
            org: sink.org.clone(),
            bucket: sink.bucket.clone(),
            token: sink.token.clone(),
            timeout: Duration::from_secs(10),
            max_retries: 5,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(60),
        }
    }
}

/// Why a [`WriterConfig`] cannot make a [`Writer`].
#[derive(Debug, thiserror::Error)]
pub enum WriterConfigError {
    /// The URL does not parse.
    #[error("influxdb url {url:?} is not a valid URL: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// The URL's scheme is not `http` (no TLS stack is linked yet, so not even `https`).
    #[error("influxdb url {url:?}: scheme {scheme:?} is not supported (only http:// is)")]
    Scheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The organisation or the bucket is empty.
    #[error("influxdb url {url:?}: {what} is empty")]
    Empty {
        /// The URL as given.
        url: String,
        /// `org` or `bucket`.
        what: &'static str,
    },
    /// The token cannot be sent in a header (a line break or another control character).
    #[error("influxdb url {url:?}: the token contains characters an HTTP header cannot carry")]
    Token {
        /// The URL as given.
        url: String,
    },
    /// A zero timeout would fail every write.
    #[error("influxdb url {url:?}: the request timeout is zero")]
    ZeroTimeout {
        /// The URL as given.
        url: String,
    },
    /// The HTTP client could not be built.
    #[error("influxdb url {url:?}: cannot build the HTTP client: {reason}")]
    Client {
        /// The URL as given.
        url: String,
        /// What reqwest said.
        reason: String,
    },
}

/// The kind of a failed write, which decides what the caller does with the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteErrorKind {
    /// 400: the database refused the batch's content. Retrying cannot help; dead-letter it.
    Malformed,
    /// 401 or 403: the token is missing, wrong or lacks write permission on the bucket. Not a
    /// fault of the batch, but no batch will pass until the configuration is fixed.
    Auth,
    /// 413: the batch is larger than the database accepts; split it and write the halves.
    TooLarge,
    /// 429 or 503: the database asks to slow down; retry after its `Retry-After`.
    Throttled,
    /// Another 5xx: retry with backoff.
    Server,
    /// No complete response within the timeout: retry with backoff. The batch may or may not
    /// have been stored; replays overwrite rather than duplicate (see the line protocol's
    /// point identity), so retrying is safe.
    Timeout,
    /// No connection could be made: retry with backoff.
    Connect,
    /// The exchange failed otherwise (connection reset, unreadable response): retry.
    Transport,
    /// Any other status, e.g. 404 for a missing organisation or bucket, or a redirect.
    /// Not retryable.
    Rejected,
}

impl WriteErrorKind {
    /// Whether trying the same batch again can succeed without a change of configuration.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            WriteErrorKind::Throttled
                | WriteErrorKind::Server
                | WriteErrorKind::Timeout
                | WriteErrorKind::Connect
                | WriteErrorKind::Transport
        )
    }

    fn describe(self) -> &'static str {
        match self {
            WriteErrorKind::Malformed => "batch refused as malformed",
            WriteErrorKind::Auth => "not authorised to write (check the token and its permissions)",
            WriteErrorKind::TooLarge => "batch too large",
            WriteErrorKind::Throttled => "throttled by the server",
            WriteErrorKind::Server => "server error",
            WriteErrorKind::Timeout => "timed out",
            WriteErrorKind::Connect => "cannot connect",
            WriteErrorKind::Transport => "exchange failed",
            WriteErrorKind::Rejected => "unexpected response",
        }
    }
}

/// A failed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteError {
    /// What kind of failure.
    pub kind: WriteErrorKind,
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// The server's message (the `message` of an InfluxDB JSON error, else the body, cut to
    /// 1 KiB), or the client's description of a failure without a response.
    pub message: String,
    /// The write endpoint, with its query (no token is ever in it).
    pub url: String,
    /// The bucket written to.
    pub bucket: String,
    /// Attempts made, this one included.
    pub attempts: u32,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "influxdb write to {} (bucket {:?}) failed after {} attempt{}: {}",
            self.url,
            self.bucket,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.kind.describe()
        )?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for WriteError {}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The database accepted the batch.
    Written {
        /// Its status, 204 from InfluxDB.
        status: u16,
    },
    /// It did not; [`WriteErrorKind::is_retryable`] says whether to try again.
    Failed {
        /// What went wrong (`attempts` is 1).
        error: WriteError,
        /// The wait the server asked for with `Retry-After`, already capped at
        /// [`WriterConfig::retry_after_max`].
        retry_after: Option<Duration>,
    },
}

/// A batch [`Writer::write`] got stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReport {
    /// Attempts made, the successful one included.
    pub attempts: u32,
    /// The status of the successful response.
    pub status: u16,
    /// Total time spent waiting between attempts.
    pub waited: Duration,
    /// Time from the first request to the success.
    pub elapsed: Duration,
}

/// An InfluxDB v2 write client for one bucket. Cheap to share: the connection pool is inside.
#[derive(Clone, Debug)]
pub struct Writer {
    client: reqwest::Client,
    endpoint: Url,
    bucket: String,
    max_retries: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    retry_after_max: Duration,
}

impl Writer {
    /// Checks the configuration and builds the client. No request is made.
    pub fn new(config: WriterConfig) -> Result<Writer, WriterConfigError> {
        let url = config.url.clone();
        let mut endpoint = Url::parse(&config.url).map_err(|e| WriterConfigError::Url {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        if endpoint.scheme() != "http" {
            return Err(WriterConfigError::Scheme {
                scheme: endpoint.scheme().to_owned(),
                url,
            });
        }
        for (what, value) in [("org", &config.org), ("bucket", &config.bucket)] {
            if value.is_empty() {
                return Err(WriterConfigError::Empty { url, what });
            }
        }
        if config.timeout.is_zero() {
            return Err(WriterConfigError::ZeroTimeout { url });
        }

        // Appending to the base URL's path keeps a reverse proxy's prefix
        // (`http://host/influx` → `http://host/influx/api/v2/write`).
        let path = format!("{}/api/v2/write", endpoint.path().trim_end_matches('/'));
        endpoint.set_path(&path);
        endpoint
            .query_pairs_mut()
            .clear()
            .append_pair("org", &config.org)
            .append_pair("bucket", &config.bucket)
            .append_pair("precision", WRITE_PRECISION);

        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(token) = &config.token {
            let mut value = HeaderValue::from_str(&format!("Token {}", token.expose()))
                .map_err(|_| WriterConfigError::Token { url: url.clone() })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }

        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            // A redirected POST would be replayed as a GET without its body by default; a
            // redirect is a configuration problem to report, not to follow.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WriterConfigError::Client {
                url: url.clone(),
                reason: e.to_string(),
            })?;

        Ok(Writer {
            client,
            endpoint,
            bucket: config.bucket,
            max_retries: config.max_retries,
            backoff_base: config.backoff_base,
            backoff_max: config.backoff_max,
            retry_after_max: config.retry_after_max,
        })
    }

    /// The write endpoint, with its query.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// Writes `body` (line protocol, timestamps in milliseconds), retrying what can be retried
    /// up to [`WriterConfig::max_retries`] times.
    pub async fn write(&self, body: &str) -> Result<WriteReport, WriteError> {
        // One copy for all attempts: `Bytes` clones by reference count.
        let body = Bytes::copy_from_slice(body.as_bytes());
        let started = Instant::now();
        let mut waited = Duration::ZERO;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.attempt(body.clone()).await {
                Attempt::Written { status } => {
                    return Ok(WriteReport {
                        attempts,
                        status,
                        waited,
                        elapsed: started.elapsed(),
                    });
                }
                Attempt::Failed {
                    mut error,
                    retry_after,
                } => {
                    error.attempts = attempts;
                    if !error.kind.is_retryable() || attempts > self.max_retries {
                        return Err(error);
                    }
                    let wait = retry_after.unwrap_or_else(|| self.backoff(attempts));
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
            }
        }
    }

    /// Makes one attempt to write `body`, for a caller that owns the retry loop.
    pub async fn try_write(&self, body: &str) -> Attempt {
        self.attempt(Bytes::copy_from_slice(body.as_bytes())).await
    }

    /// The wait before retry `retry` (1 for the first), with jitter: uniformly in the upper
    /// half of the nominal `backoff_base · 2^(retry-1)`, capped at `backoff_max`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        let nominal = self
            .backoff_base
            .saturating_mul(1 << doublings)
            .min(self.backoff_max);
        let half = nominal / 2;
        let jitter_nanos = fastrand::u64(0..=u64::try_from(half.as_nanos()).unwrap_or(u64::MAX));
        half + Duration::from_nanos(jitter_nanos)
    }

    async fn attempt(&self, body: Bytes) -> Attempt {
        let response = match self
            .client
            .post(self.endpoint.clone())
            .body(body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => {
                let kind = transport_kind(&e);
                return self.failed(kind, None, describe(e), None);
            }
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Written {
                status: status.as_u16(),
            };
        }
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
                .map(|wait| wait.min(self.retry_after_max)),
            _ => None,
        };
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let kind = match status.as_u16() {
            400 => WriteErrorKind::Malformed,
            401 | 403 => WriteErrorKind::Auth,
            413 => WriteErrorKind::TooLarge,
            429 | 503 => WriteErrorKind::Throttled,
            500..=599 => WriteErrorKind::Server,
            _ => WriteErrorKind::Rejected,
        };
        let mut message = match response.bytes().await {
            Ok(bytes) => server_message(&bytes),
            // The status already says what happened; a body cut short only loses detail.
            Err(e) => format!("(response body unreadable: {})", describe(e)),
        };
        if let Some(location) = location {
            message = format!("redirected to {location}; {message}");
        }
        self.failed(kind, Some(status.as_u16()), message, retry_after)
    }

    fn failed(
        &self,
        kind: WriteErrorKind,
        status: Option<u16>,
        message: String,
        retry_after: Option<Duration>,
    ) -> Attempt {
        Attempt::Failed {
            error: WriteError {
                kind,
                status,
                message,
                url: self.endpoint.to_string(),
                bucket: self.bucket.clone(),
                attempts: 1,
            },
            retry_after,
        }
    }
}

fn transport_kind(e: &reqwest::Error) -> WriteErrorKind {
    if e.is_timeout() {
        WriteErrorKind::Timeout
    } else if e.is_connect() {
        WriteErrorKind::Connect
    } else {
        WriteErrorKind::Transport
    }
}

/// reqwest's own message is generic ("error sending request"); the cause (connection
/// refused, reset) is what an operator needs. The URL is dropped because the error already
/// names it once.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// InfluxDB answers errors with `{"code": "...", "message": "..."}`; other servers and
/// proxies send text or HTML, kept as it is but cut short.
fn server_message(body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body)
        && let Some(serde_json::Value::String(message)) = map.get("message")
    {
        return truncate(message.trim());
    }
    truncate(String::from_utf8_lossy(body).trim())
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_LEN {
        return text.to_owned();
    }
    let mut end = MAX_MESSAGE_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A `Retry-After` value: delay seconds or an HTTP date, relative to `now`. A date in the past
/// means no wait; anything else unparseable means the header is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WriterConfig {
        WriterConfig {
            url: "http://127.0.0.1:8086/".into(),
            org: "city".into(),
            bucket: "sensing & more".into(),
            token: None,
            timeout: Duration::from_secs(1),
            max_retries: 3,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
            retry_after_max: Duration::from_secs(5),
        }
    }

    #[test]
    fn endpoint_encodes_the_query_and_keeps_a_path_prefix() {
        let w = Writer::new(config()).unwrap();
        assert_eq!(
            w.endpoint(),
            "http://127.0.0.1:8086/api/v2/write?org=city&bucket=sensing+%26+more&precision=ms"
        );
        let w = Writer::new(WriterConfig {
            url: "http://gw/influx/".into(),
            ..config()
        })
        .unwrap();
        assert!(w.endpoint().starts_with("http://gw/influx/api/v2/write?"));
    }

    #[test]
    fn bad_configurations_are_refused_naming_the_url() {
        let err = Writer::new(WriterConfig {
            url: "https://db:8086".into(),
            ..config()
        })
        .unwrap_err();
        assert!(matches!(err, WriterConfigError::Scheme { .. }), "{err}");
        assert!(err.to_string().contains("https://db:8086"), "{err}");
        let err = Writer::new(WriterConfig {
            url: "not a url".into(),
            ..config()
        })
        .unwrap_err();
        assert!(matches!(err, WriterConfigError::Url { .. }), "{err}");
        let err = Writer::new(WriterConfig {
            bucket: String::new(),
            ..config()
        })
        .unwrap_err();
        assert!(err.to_string().contains("bucket is empty"), "{err}");
        let err = Writer::new(WriterConfig {
            token: Some(Secret::new("a\nb")),
            ..config()
        })
        .unwrap_err();
        assert!(matches!(err, WriterConfigError::Token { .. }), "{err}");
        assert!(!err.to_string().contains("a\nb"));
    }

    #[test]
    fn backoff_doubles_within_the_upper_half_and_is_capped() {
        let w = Writer::new(config()).unwrap();
        for _ in 0..200 {
            let first = w.backoff(1);
            assert!((50..=100).contains(&first.as_millis()), "{first:?}");
            let second = w.backoff(2);
            assert!((100..=200).contains(&second.as_millis()), "{second:?}");
            let capped = w.backoff(40);
            assert!((175..=350).contains(&capped.as_millis()), "{capped:?}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn server_messages_are_extracted_and_cut_short() {
        assert_eq!(
            server_message(
                br#"{"code":"invalid","message":"unable to parse 'x': missing fields"}"#
            ),
            "unable to parse 'x': missing fields"
        );
        assert_eq!(server_message(b"  plain text\n"), "plain text");
        let long = "é".repeat(MAX_MESSAGE_LEN);
        let cut = server_message(long.as_bytes());
        assert!(cut.len() <= MAX_MESSAGE_LEN + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn errors_name_url_bucket_status_and_message() {
        let error = WriteError {
            kind: WriteErrorKind::Malformed,
            status: Some(400),
            message: "bad line".into(),
            url: "http://db/api/v2/write?org=o&bucket=b&precision=ms".into(),
            bucket: "b".into(),
            attempts: 1,
        };
        let text = error.to_string();
        for part in [
            "http://db/api/v2/write",
            "\"b\"",
            "HTTP 400",
            "bad line",
            "1 attempt:",
        ] {
            assert!(text.contains(part), "{text:?} lacks {part:?}");
        }
        assert!(!error.kind.is_retryable());
        assert!(WriteErrorKind::Throttled.is_retryable());
    }
}
