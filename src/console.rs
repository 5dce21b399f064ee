//! The web consoles, embedded in the binary: the tenants' console under `/console/` on
//! the data listener and the operators' under `/ui/` on the admin listener. Serves
//! static HTML, CSS and JavaScript only, with a strict Content-Security-Policy; the
//! pages call the same JSON APIs as the SDKs and the CLI, with the API key or admin
//! token kept in the tab's sessionStorage and sent in the Authorization header (never
//! in a URL or a cookie, so there is nothing for CSRF to ride on). Must not hold
//! business logic or read any state: it has nothing to serve but files.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const CSS: Asset = Asset {
    name: "console.css",
    content_type: "text/css; charset=utf-8",
    body: include_str!("../console/console.css"),
};
const COMMON_JS: Asset = Asset {
    name: "common.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../console/common.js"),
};
const FAVICON: Asset = Asset {
    name: "favicon.svg",
    content_type: "image/svg+xml",
    body: include_str!("../console/favicon.svg"),
};
const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

const TENANT: [Asset; 5] = [
    Asset {
        name: "",
        content_type: HTML,
        body: include_str!("../console/tenant.html"),
    },
    Asset {
        name: "tenant.js",
        content_type: JS,
        body: include_str!("../console/tenant.js"),
    },
    CSS,
    COMMON_JS,
    FAVICON,
];

const OPERATOR: [Asset; 5] = [
    Asset {
        name: "",
        content_type: HTML,
        body: include_str!("../console/operator.html"),
    },
    Asset {
        name: "operator.js",
        content_type: JS,
        body: include_str!("../console/operator.js"),
    },
    CSS,
    COMMON_JS,
    FAVICON,
];

/// Which console a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Console {
    /// `/console/` on the data listener.
    Tenant,
    /// `/ui/` on the admin listener.
    Operator,
}

impl Console {
    fn prefix(self) -> &'static str {
        match self {
            Console::Tenant => "/console",
            Console::Operator => "/ui",
        }
    }

    fn assets(self) -> &'static [Asset] {
        match self {
            Console::Tenant => &TENANT,
            Console::Operator => &OPERATOR,
        }
    }
}

/// The console's answer to a GET or HEAD of `path` (the servers drop a HEAD's body),
/// or `None` when it is not the console's: another method, or a path outside the
/// console, `/favicon.ico`, and (on the data listener) the operators' `/ui`.
pub fn serve<B: From<Bytes>>(console: Console, method: &Method, path: &str) -> Option<Response<B>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    if path == "/favicon.ico" {
        return Some(with_policy(asset_response(&FAVICON)));
    }
    if console == Console::Tenant && (path == "/ui" || path.starts_with("/ui/")) {
        // An operator who typed the data listener's address: say where the page is.
        return Some(with_policy(plain(
            StatusCode::NOT_FOUND,
            "The operators' console is on the admin listener (listen.admin), under /ui/.\n",
        )));
    }
    let rest = path.strip_prefix(console.prefix())?;
    if rest.is_empty() {
        // `/console` → `/console/`, so the pages' relative links resolve.
        let mut response = Response::new(B::from(Bytes::new()));
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        response.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_static(match console {
                Console::Tenant => "/console/",
                Console::Operator => "/ui/",
            }),
        );
        return Some(response);
    }
    let name = rest.strip_prefix('/')?;
    let response = match console.assets().iter().find(|a| a.name == name) {
        Some(asset) => asset_response(asset),
        None => plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    Some(with_policy(response))
}

fn asset_response<B: From<Bytes>>(asset: &Asset) -> Response<B> {
    let mut response = Response::new(B::from(Bytes::from_static(asset.body.as_bytes())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    response
}

fn plain<B: From<Bytes>>(status: StatusCode, text: &'static str) -> Response<B> {
    let mut response = Response::new(B::from(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn with_policy<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    // Only our own files, no inline script, no framing (clickjacking), no referrer.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn pages_are_served_with_a_strict_policy_and_nothing_else_is() {
        let page: Response<Full<Bytes>> = serve(Console::Tenant, &Method::GET, "/console/").unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert!(
            page.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let redirect: Response<Full<Bytes>> = serve(Console::Operator, &Method::GET, "/ui").unwrap();
        assert_eq!(redirect.headers()[header::LOCATION], "/ui/");
        let missing: Response<Full<Bytes>> = serve(Console::Tenant, &Method::GET, "/console/../Cargo.toml").unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        // The operator's script is not on the tenants' listener.
        let other: Response<Full<Bytes>> = serve(Console::Tenant, &Method::GET, "/console/operator.js").unwrap();
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
        assert!(serve::<Full<Bytes>>(Console::Tenant, &Method::GET, "/consoles").is_none());
        assert!(serve::<Full<Bytes>>(Console::Tenant, &Method::GET, "/").is_none());
    }

    #[test]
    fn head_favicon_and_the_operators_path_on_the_data_listener() {
        let head: Response<Full<Bytes>> = serve(Console::Tenant, &Method::HEAD, "/console/").unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        assert!(serve::<Full<Bytes>>(Console::Tenant, &Method::POST, "/console/").is_none());
        for console in [Console::Tenant, Console::Operator] {
            let icon: Response<Full<Bytes>> = serve(console, &Method::GET, "/favicon.ico").unwrap();
            assert_eq!(
                (icon.status(), &icon.headers()[header::CONTENT_TYPE]),
                (StatusCode::OK, &HeaderValue::from_static("image/svg+xml"))
            );
        }
        for path in ["/ui", "/ui/", "/ui/operator.js"] {
            let page: Response<Full<Bytes>> = serve(Console::Tenant, &Method::GET, path).unwrap();
            assert_eq!(page.status(), StatusCode::NOT_FOUND, "{path}");
        }
        assert!(serve::<Full<Bytes>>(Console::Tenant, &Method::GET, "/uix").is_none());
    }
}
