//! `tianzhong flash --node ID --config FILE --user NAME`: a node updated through the running
//! gateway of that configuration rather than over a port of the command's own.
//!
//! A Modbus RTU bus's serial port is held (locked) by the gateway polling it, so the command
//! cannot open it while the gateway runs; the gateway's bus task carries transfers between
//! its polls instead ([`crate::sources::modbus::lend`]). So the command starts a one-node
//! campaign through the gateway's API — the node alone as its canary, halting on its failure,
//! audited under the engineer who ran it — and follows it to the end:
//!
//! | step | request |
//! |---|---|
//! | log in | `POST /api/login` as `--user`, password from `TIANZHONG_PASSWORD` |
//! | start | `POST /api/campaigns`: the image, `nodes: [ID]`, `canary: 1`, `max_failures: 0` |
//! | follow | `GET /api/campaigns/{id}` every half second: the node's bytes sent, then its state |
//!
//! It works for a Modbus TCP node as well (the gateway then connects to it directly). Without
//! `--user`, a command that finds the port held says so and what to do ([`busy_hint`]).

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// Environment variable holding the password of `--user`.
pub const PASSWORD_ENV: &str = "TIANZHONG_PASSWORD";
/// How often the campaign is looked at.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// How the node's update through the gateway went, as the gateway reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViaReport {
    /// The campaign started for it.
    pub campaign: u64,
    /// The version the node runs now.
    pub version: String,
}

async fn call(
    client: &reqwest::Client,
    http: SocketAddr,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let mut r = client
        .request(method, format!("http://{http}{path}"))
        .timeout(Duration::from_secs(30));
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = r
        .send()
        .await
        .map_err(|e| format!("the gateway's API at http://{http}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("the gateway's API at http://{http}: {e}"))?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// What an error answer says.
fn said(v: &Value) -> String {
    v.get("error")
        .and_then(Value::as_str)
        .map_or_else(|| v.to_string(), str::to_owned)
}

/// Updates `node` to `image` through the gateway whose API is at `http`, logged in as `user`;
/// `progress` gets the bytes the node has and the image's size while the image goes over.
pub async fn flash_through_gateway(
    http: SocketAddr,
    user: &str,
    password: &str,
    node: &str,
    image: &[u8],
    mut progress: impl FnMut(usize, usize),
) -> Result<ViaReport, String> {
    let client = reqwest::Client::new();
    let (status, v) = call(
        &client,
        http,
        reqwest::Method::POST,
        "/api/login",
        None,
        Some(json!({"user": user, "password": password})),
    )
    .await?;
    if status != 200 {
        return Err(format!("logging in as {user}: {} ({status})", said(&v)));
    }
    let token = v["token"]
        .as_str()
        .ok_or_else(|| format!("logging in as {user}: no token in {v}"))?
        .to_owned();
    let body = json!({
        "image_base64": base64::engine::general_purpose::STANDARD.encode(image),
        "nodes": [node],
        "canary": 1,
        "waves": [],
        "max_failures": 0,
        "reason": format!("tianzhong flash --node {node}"),
    });
    let (status, v) = call(
        &client,
        http,
        reqwest::Method::POST,
        "/api/campaigns",
        Some(&token),
        Some(body),
    )
    .await?;
    let campaign = match (status, v["id"].as_u64()) {
        (201, Some(id)) => id,
        (403, _) => {
            return Err(format!(
                "{user} may not start campaigns: an engineer's account is needed ({})",
                said(&v)
            ));
        }
        _ => {
            return Err(format!(
                "the gateway refused the update: {} ({status})",
                said(&v)
            ));
        }
    };
    let path = format!("/api/campaigns/{campaign}");
    loop {
        let (status, v) = call(
            &client,
            http,
            reqwest::Method::GET,
            &path,
            Some(&token),
            None,
        )
        .await?;
        if status != 200 {
            return Err(format!("campaign {campaign}: {} ({status})", said(&v)));
        }
        let n = v["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["node"] == node))
            .ok_or_else(|| format!("campaign {campaign} does not list node {node}"))?;
        if let (Some(done), Some(total)) = (n["done"].as_u64(), n["total"].as_u64()) {
            progress(done as usize, total as usize);
        }
        match n["state"].as_str() {
            Some("updated") => {
                return Ok(ViaReport {
                    campaign,
                    version: n["version"].as_str().unwrap_or("?").to_owned(),
                });
            }
            Some("failed") | Some("skipped") => {
                return Err(format!(
                    "campaign {campaign}: node {node} {}: {}",
                    n["state"].as_str().unwrap_or("?"),
                    n["reason"].as_str().unwrap_or("no reason given")
                ));
            }
            _ => {}
        }
        if v["status"] != "running" && v["active"] == false {
            return Err(format!(
                "campaign {campaign} ended {} with node {node} {}",
                v["status"], n["state"]
            ));
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// Runs `tianzhong flash --user`: `image` to `node` through the gateway of `config`, with a
/// progress bar on standard error.
pub fn run(
    user: &str,
    node: &str,
    config: &std::path::Path,
    image: &[u8],
) -> std::process::ExitCode {
    use std::io::Write as _;
    use std::process::ExitCode;
    let http = match crate::config::load(config) {
        Ok(c) => match c.gateway.http_listen {
            Some(a) => a,
            None => {
                eprintln!(
                    "error: the gateway of {} serves no API (http_listen = \"off\"): stop it \
                     and flash without --user",
                    config.display()
                );
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(password) = std::env::var(PASSWORD_ENV) else {
        eprintln!("error: --user {user}: put the password in {}", PASSWORD_ENV);
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    let result = runtime.block_on(flash_through_gateway(
        http,
        user,
        &password,
        node,
        image,
        |done, total| {
            let p = crate::flash::Progress {
                done,
                total,
                sent: done,
                elapsed: started.elapsed(),
            };
            eprint!("\r{}", p.line());
            let _ = std::io::stderr().flush();
        },
    ));
    eprintln!();
    match result {
        Ok(r) => {
            println!(
                "node {node} runs {} (campaign {} on the gateway at {http})",
                r.version, r.campaign
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// What to do when the node's serial port is busy: the bus a running gateway polls lends its
/// line to campaigns, so the node is updated through the gateway.
pub fn busy_hint(node: &str, config: &std::path::Path, unit: u8) -> String {
    let bus = crate::config::load(config)
        .ok()
        .and_then(|c| {
            c.devices
                .iter()
                .find(|d| d.id.as_str() == node)
                .map(|d| d.bus.clone())
        })
        .unwrap_or_else(|| "?".into());
    format!(
        "node {node} is unit {} on Modbus RTU bus {bus}. A gateway polling that bus keeps \
         polling it during a transfer and lends the line to campaigns: update the node \
         through the gateway with `--user ENGINEER` (password in {}), which starts a one-node \
         campaign, or stop the gateway and run this command again.",
        unit, PASSWORD_ENV
    )
}
