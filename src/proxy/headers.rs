//! Hop-by-hop header handling (RFC 9110 §7.6.1) for both directions of the proxy.
//! Must not touch end-to-end headers: the upstream's answer passes through unchanged.

use crate::proxy::fields::{Known, RequestFields, folded_equal};
use http::{HeaderMap, HeaderName, HeaderValue};

/// The header names a request's `Connection` header lists, as sent. The usual
/// `keep-alive` and `close` are skipped, so the usual answer is an empty, unallocated
/// list.
pub fn connection_named(fields: &RequestFields) -> Vec<&[u8]> {
    fields
        .all(Known::Connection)
        .flat_map(list_items)
        .filter(|token| names_a_header(token))
        .collect()
}

/// The items of a comma-separated field value (`Connection`, ...), trimmed.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// A `Connection` token other than the usual `keep-alive` and `close`: it names a
/// header that is hop-by-hop for this message.
fn names_a_header(token: &[u8]) -> bool {
    !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") && !token.eq_ignore_ascii_case(b"close")
}

/// An answer's end-to-end header fields as HTTP/1.1 lines (`Name: value\r\n`), in the
/// upstream's order and spelling. The HTTP/1.1 server writes them on as they are; only
/// HTTP/2 needs a `HeaderMap` (`append_to`). Building a map per answer, with a copy of
/// every value, was 6% of a call's instructions. Left out: the hop-by-hop fields,
/// those the answer's `Connection` header names, and `Content-Length`, since the
/// server states the length of the whole body it sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassedHeaders {
    /// A `Vec`, not `Bytes`: the lines' length is only known once they are written,
    /// and `Bytes::from` a `Vec` with spare capacity allocates a second time.
    lines: Vec<u8>,
    has_date: bool,
}

impl PassedHeaders {
    /// From the fields `httparse` read (so names are tokens and values hold no CR/LF).
    pub fn from_fields(fields: &[httparse::Header<'_>]) -> Self {
        // Tokens of `Connection` other than the usual keep-alive/close: rare, so the
        // list is only allocated when there are some.
        let mut named: Vec<&[u8]> = Vec::new();
        let mut length = 0;
        for field in fields {
            length += field.name.len() + field.value.len() + 4;
            if folded_equal(field.name.as_bytes(), b"connection") {
                named.extend(list_items(field.value).filter(|token| names_a_header(token)));
            }
        }
        let mut lines = Vec::with_capacity(length);
        let mut has_date = false;
        for field in fields {
            let name = field.name.as_bytes();
            let known = Known::of(name);
            if known.is_some_and(|k| k == Known::ContentLength || k.is_hop_by_hop())
                || named.iter().any(|token| token.eq_ignore_ascii_case(name))
            {
                continue;
            }
            has_date |= known == Some(Known::Date);
            lines.extend_from_slice(name);
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(field.value);
            lines.extend_from_slice(b"\r\n");
        }
        PassedHeaders { lines, has_date }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.lines
    }

    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// Adds the fields to `headers` (names lowercased; values copied, HTTP/2 only).
    pub fn append_to(&self, headers: &mut HeaderMap) {
        for line in self.lines.split(|b| *b == b'\n') {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(&line[colon + 2..line.len() - 1]),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_end_to_end_fields_and_leaves_out_hop_by_hop_and_connection_named_ones() {
        let fields = [
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic x"),
            ("Content-Length", "2"),
            ("X-TC-Action", "LivenessCompare"),
            ("Content-Type", "application/json"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
        ];
        let fields: Vec<httparse::Header<'_>> = fields
            .iter()
            .map(|(name, value)| httparse::Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        let passed = PassedHeaders::from_fields(&fields);
        assert_eq!(
            passed.as_bytes(),
            b"X-TC-Action: LivenessCompare\r\nContent-Type: application/json\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n"
        );
        assert!(!passed.has_date());
        let mut map = HeaderMap::new();
        passed.append_to(&mut map);
        assert_eq!(map.len(), 4);
        assert_eq!(map["x-tc-action"], "LivenessCompare");
        assert_eq!(map["content-type"], "application/json");
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        let dated = PassedHeaders::from_fields(&[httparse::Header {
            name: "Date",
            value: b"Thu, 26 Nov 2026 16:00:00 GMT",
        }]);
        assert!(dated.has_date());
    }
}
