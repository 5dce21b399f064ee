//! The web consoles, embedded in the binary: the tenants' console under `/console/` on
//! the data listener and the operators' under `/ui/` on the admin listener. Serves
//! static HTML, CSS and JavaScript only, with a strict Content-Security-Policy; the
//! pages call the same JSON APIs as the SDKs and the CLI, with the API key or admin
//! token kept in the tab's sessionStorage and sent in the Authorization header (never
//! in a URL or a cookie, so there is nothing for CSRF to ride on). Must not hold
//! business logic or read any state: it has nothing to serve but files.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

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
const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

const TENANT: [Asset; 4] = [
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
];

const OPERATOR: [Asset; 4] = [
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

/// The console's answer to a GET of `path`, or `None` when `path` is not the console's.
pub fn serve<B: From<Bytes>>(console: Console, path: &str) -> Option<Response<B>> {
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
    let asset = console.assets().iter().find(|a| a.name == name);
    let mut response = match asset {
        Some(asset) => {
            let mut response = Response::new(B::from(Bytes::from_static(asset.body.as_bytes())));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
            response
        }
        None => {
            let mut response = Response::new(B::from(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
    };
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
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn pages_are_served_with_a_strict_policy_and_nothing_else_is() {
        let page: Response<Full<Bytes>> = serve(Console::Tenant, "/console/").unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert!(
            page.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let redirect: Response<Full<Bytes>> = serve(Console::Operator, "/ui").unwrap();
        assert_eq!(redirect.headers()[header::LOCATION], "/ui/");
        let missing: Response<Full<Bytes>> = serve(Console::Tenant, "/console/../Cargo.toml").unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        // The operator's script is not on the tenants' listener.
        let other: Response<Full<Bytes>> = serve(Console::Tenant, "/console/operator.js").unwrap();
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
        assert!(serve::<Full<Bytes>>(Console::Tenant, "/consoles").is_none());
        assert!(serve::<Full<Bytes>>(Console::Tenant, "/").is_none());
    }
}
