//! The operator console: a single-page application in plain HTML, CSS and JavaScript (ES
//! modules, no build step, nothing fetched from elsewhere), embedded in the binary and served
//! beside the API.
//!
//! | path | what |
//! |---|---|
//! | `GET /` | `index.html`, the page |
//! | `GET /console/{file}` | its scripts, style sheet and icon |
//!
//! Every response says `Cache-Control: no-cache` (the browser revalidates, so a new gateway
//! binary's console is used at once) and carries a content security policy that allows only
//! the gateway's own origin: no inline script, no other host.
//!
//! The page talks only to the JSON API (see [`crate::http`]): it logs in with
//! `POST /api/login`, keeps the token in the tab's `sessionStorage`, and follows
//! `GET /api/stream` with `fetch` (an `EventSource` cannot send the `Authorization` header).
//! Its views are hash routes: `#/overview`, `#/alarms`, `#/rules`, `#/data` (where the data
//! went: `GET /api/completeness`, and for engineers `GET /api/outbox/dead-letters`, fetched
//! every few seconds while shown), `#/campaigns` and `#/campaigns/{id}` (firmware campaigns
//! and one campaign's nodes, from `GET /api/campaigns…` every 2 s while shown; engineers
//! only: other roles see why), `#/node/{id}`. Every visible string comes from one
//! dictionary per language (`i18n.js`, Chinese and English); quantity names come from the
//! API's `label_zh` / `label_en`.

use axum::Router;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file: its name under `/console/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!("../console/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// The page.
const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

/// Everything under `/console/`.
const ASSETS: &[Asset] = &[
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("i18n.js", JS),
    asset!("stream.js", JS),
    asset!("chart.js", JS),
    asset!("dom.js", JS),
    asset!("icon.svg", "image/svg+xml"),
];

/// Only the gateway's own origin; SVG charts are built with the DOM, not inline markup.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                      img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                      base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn serve(asset: &Asset) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
        ],
        asset.bytes,
    )
        .into_response()
}

async fn index() -> Response {
    serve(&INDEX)
}

async fn file(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => serve(a),
        None => (
            StatusCode::NOT_FOUND,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no console file `{name}`\n"),
        )
            .into_response(),
    }
}

/// The console's routes, to merge into the gateway's router (any state: they need none).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/console/{file}", get(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of `attr="…"` in `html`.
    fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
        let needle = format!("{attr}=\"");
        html.match_indices(&needle)
            .filter_map(|(i, _)| {
                let rest = &html[i + needle.len()..];
                rest.find('"').map(|end| &rest[..end])
            })
            .collect()
    }

    /// Relative module specifiers (`from './x.js'`, `import('./x.js')`) in a script.
    fn imports(js: &str) -> Vec<String> {
        let mut out = Vec::new();
        for quote in ['\'', '"'] {
            let needle = format!("{quote}./");
            for (i, _) in js.match_indices(&needle) {
                let rest = &js[i + 1..];
                if let Some(end) = rest.find(quote) {
                    let spec = &rest[..end];
                    if spec.ends_with(".js") {
                        out.push(spec.trim_start_matches("./").to_owned());
                    }
                }
            }
        }
        out
    }

    fn text_of(name: &str) -> &'static str {
        let a = ASSETS
            .iter()
            .chain([&INDEX])
            .find(|a| a.name == name)
            .unwrap();
        std::str::from_utf8(a.bytes).unwrap()
    }

    /// The keys of the dictionary `const {lang} = { … };` in i18n.js.
    fn dictionary_keys(lang: &str) -> std::collections::BTreeSet<String> {
        let js = text_of("i18n.js");
        let start = js.find(&format!("const {lang} = {{")).unwrap();
        let body = &js[start..start + js[start..].find("\n};").unwrap()];
        body.lines()
            .filter_map(|l| l.trim().strip_prefix('\''))
            .filter_map(|l| l.split_once("':").map(|(k, _)| k.to_owned()))
            .collect()
    }

    /// Literal keys in `t('…')` and `data-i18n…="…"` uses.
    fn used_keys() -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for name in ["app.js", "index.html"] {
            let text = text_of(name);
            for needle in [
                "t('",
                "data-i18n=\"",
                "data-i18n-title=\"",
                "data-i18n-placeholder=\"",
            ] {
                for (i, _) in text.match_indices(needle) {
                    // `t(` itself, not `get(` or `select(`.
                    let before = text[..i].chars().next_back().unwrap_or(' ');
                    if needle == "t('" && (before.is_alphanumeric() || "_.$".contains(before)) {
                        continue;
                    }
                    let rest = &text[i + needle.len()..];
                    let end = rest.find(['\'', '"']).unwrap();
                    out.insert(rest[..end].to_owned());
                }
            }
        }
        out
    }

    #[test]
    fn chinese_and_english_say_the_same_things() {
        let (en, zh) = (dictionary_keys("en"), dictionary_keys("zh"));
        assert!(en.len() > 100, "{en:?}");
        let only_en: Vec<_> = en.difference(&zh).collect();
        let only_zh: Vec<_> = zh.difference(&en).collect();
        assert!(only_en.is_empty(), "missing in zh: {only_en:?}");
        assert!(only_zh.is_empty(), "missing in en: {only_zh:?}");
        let unknown: Vec<_> = used_keys()
            .into_iter()
            .filter(|k| !en.contains(k))
            .collect();
        assert!(
            unknown.is_empty(),
            "used but not in the dictionaries: {unknown:?}"
        );
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String, Vec<u8>) {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        let header = |h: &str| {
            r.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (ct, cc) = (header("content-type"), header("cache-control"));
        (
            r.status().as_u16(),
            ct,
            cc,
            r.bytes().await.unwrap().to_vec(),
        )
    }

    #[tokio::test]
    async fn every_asset_the_page_references_is_served() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, routes::<()>()).await.unwrap();
        });

        let (status, ct, cc, body) = get(addr, "/").await;
        assert_eq!(status, 200);
        assert!(ct.starts_with("text/html"), "{ct}");
        assert_eq!(cc, "no-cache");
        let html = String::from_utf8(body).unwrap();

        let mut referenced: Vec<String> = attribute_values(&html, "src")
            .into_iter()
            .chain(attribute_values(&html, "href"))
            .filter(|v| !v.starts_with('#'))
            .map(str::to_owned)
            .collect();
        assert!(
            referenced.iter().any(|r| r.ends_with(".js")),
            "the page loads a script: {referenced:?}"
        );
        assert!(
            referenced.iter().any(|r| r.ends_with(".css")),
            "the page loads a style sheet: {referenced:?}"
        );
        let mut seen = std::collections::HashSet::new();
        while let Some(path) = referenced.pop() {
            if !seen.insert(path.clone()) {
                continue;
            }
            assert!(
                path.starts_with("/console/"),
                "`{path}`: the page refers only to its own files under /console/"
            );
            let (status, ct, cc, body) = get(addr, &path).await;
            assert_eq!(status, 200, "{path}");
            assert_eq!(cc, "no-cache", "{path}");
            let expected = match path.rsplit('.').next() {
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                Some("svg") => "image/svg+xml",
                other => panic!("{path}: unexpected kind {other:?}"),
            };
            assert!(ct.starts_with(expected), "{path}: {ct}");
            assert!(!body.is_empty(), "{path}");
            if path.ends_with(".js") {
                let js = String::from_utf8(body).unwrap();
                for m in imports(&js) {
                    referenced.push(format!("/console/{m}"));
                }
            }
        }
        // Every embedded file is reachable from the page (none is dead weight).
        for a in ASSETS {
            assert!(
                seen.contains(&format!("/console/{}", a.name)),
                "{} is embedded but nothing refers to it",
                a.name
            );
        }

        let (status, _, _, _) = get(addr, "/console/nope.js").await;
        assert_eq!(status, 404);
        let (status, _, _, _) = get(addr, "/console/..%2Fsrc%2Flib.rs").await;
        assert_eq!(status, 404);
    }
}
