//! Talking to a running gateway's HTTP API as the console would: log in, call with a bearer
//! token, follow a firmware campaign until it settles.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A free loopback address (the port is released for the caller to bind).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

/// A gateway's HTTP API at `http`.
pub struct Api {
    /// Where the gateway listens.
    pub http: SocketAddr,
    /// The HTTP client.
    pub client: reqwest::Client,
}

impl Api {
    /// The API of a gateway listening on `http`.
    pub fn new(http: SocketAddr) -> Api {
        Api {
            http,
            client: reqwest::Client::new(),
        }
    }

    /// `method path` with `token`, and `body` as JSON: the status and the answer (JSON, or the
    /// text as a JSON string).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .client
            .request(
                method.parse().unwrap(),
                format!("http://{}{path}", self.http),
            )
            .timeout(Duration::from_secs(30))
            .header("authorization", format!("Bearer {token}"));
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Logs `user` in: its token.
    pub async fn login(&self, user: &str, password: &str) -> String {
        let resp = self
            .client
            .post(format!("http://{}/api/login", self.http))
            .header("content-type", "application/json")
            .body(json!({"user": user, "password": password}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "login {user}");
        let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// Polls the campaign until it no longer runs and nothing is in flight.
    pub async fn wait_settled(&self, id: u64, token: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let (status, v) = self
                .call("GET", &format!("/api/campaigns/{id}"), token, None)
                .await;
            assert_eq!(status, 200, "{v}");
            if v["status"] != "running" && v["active"] == false {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "campaign {id} still running after {limit:?}: {}",
                v["counts"]
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
