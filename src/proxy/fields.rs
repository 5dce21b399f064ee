//! A request's header fields as the pipeline reads them: the head's bytes, each
//! field's position in them, and where the first of each header the gateway acts on
//! is, found once as the head is taken. Lookups of those are an index, not a hash;
//! other names are found by a scan. The HTTP/1.1 server builds it from the parsed head
//! without copying a value; HTTP/2 builds it from hyper's `HeaderMap`. A `HeaderMap`
//! per request (hashing every name, two allocations) was the largest share of
//! parsing's cost. Must not decide anything about a request: it only holds fields.
//!
//! Values hold no control byte but HTAB (httparse's rule, and `HeaderValue`'s), so a
//! value that is ASCII is visible ASCII.

use bytes::Bytes;
use http::HeaderMap;
use std::ops::Range;

/// The header names the pipeline reads, the hop-by-hop ones the forwarder drops, and
/// those the SDKs send (so a signed one is found without a scan). Fewer than 32: a
/// bit each in `RequestFields::repeated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Known {
    Host,
    Accept,
    Expect,
    Connection,
    UserAgent,
    XTcToken,
    XTcAction,
    XTcRegion,
    ContentType,
    XTcVersion,
    Authorization,
    XTcLanguage,
    ContentLength,
    XTcTimestamp,
    AcceptEncoding,
    TransferEncoding,
    XTcRequestClient,
    XTcContentSha256,
    KeepAlive,
    ProxyConnection,
    Te,
    Trailer,
    Upgrade,
    ProxyAuthorization,
    /// Read in the upstream's answers (`headers::PassedHeaders`).
    Date,
}

/// Each known name and its lower-case spelling, in the enum's order (a test checks it).
static KNOWN: [(Known, &str); Known::COUNT] = [
    (Known::Host, "host"),
    (Known::Accept, "accept"),
    (Known::Expect, "expect"),
    (Known::Connection, "connection"),
    (Known::UserAgent, "user-agent"),
    (Known::XTcToken, "x-tc-token"),
    (Known::XTcAction, "x-tc-action"),
    (Known::XTcRegion, "x-tc-region"),
    (Known::ContentType, "content-type"),
    (Known::XTcVersion, "x-tc-version"),
    (Known::Authorization, "authorization"),
    (Known::XTcLanguage, "x-tc-language"),
    (Known::ContentLength, "content-length"),
    (Known::XTcTimestamp, "x-tc-timestamp"),
    (Known::AcceptEncoding, "accept-encoding"),
    (Known::TransferEncoding, "transfer-encoding"),
    (Known::XTcRequestClient, "x-tc-requestclient"),
    (Known::XTcContentSha256, "x-tc-content-sha256"),
    (Known::KeepAlive, "keep-alive"),
    (Known::ProxyConnection, "proxy-connection"),
    (Known::Te, "te"),
    (Known::Trailer, "trailer"),
    (Known::Upgrade, "upgrade"),
    (Known::ProxyAuthorization, "proxy-authorization"),
    (Known::Date, "date"),
];

impl Known {
    const COUNT: usize = Known::Date as usize + 1;

    pub fn lowercase(self) -> &'static str {
        KNOWN[self as usize].1
    }

    /// The known header `name` (a field name token, in any case) is, found by its
    /// length and one comparison.
    pub fn of(name: &[u8]) -> Option<Known> {
        use Known::*;
        let candidates: &[Known] = match name.len() {
            2 => &[Te],
            4 => &[Host, Date],
            6 => &[Accept, Expect],
            7 => &[Trailer, Upgrade],
            10 => &[Connection, UserAgent, XTcToken, KeepAlive],
            11 => &[XTcAction, XTcRegion],
            12 => &[ContentType, XTcVersion],
            13 => &[Authorization, XTcLanguage],
            14 => &[ContentLength, XTcTimestamp],
            15 => &[AcceptEncoding],
            16 => &[ProxyConnection],
            17 => &[TransferEncoding],
            18 => &[XTcRequestClient],
            19 => &[XTcContentSha256, ProxyAuthorization],
            _ => return None,
        };
        // The last byte tells most candidates of one length apart before the whole
        // name is compared.
        let last = name[name.len() - 1] | 0x20;
        candidates.iter().copied().find(|known| {
            let lowercase = known.lowercase().as_bytes();
            lowercase[lowercase.len() - 1] == last && folded_equal(name, lowercase)
        })
    }

    /// Connection-level fields (RFC 9110 §7.6.1): never forwarded.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Known::Connection
                | Known::KeepAlive
                | Known::ProxyConnection
                | Known::Te
                | Known::Trailer
                | Known::TransferEncoding
                | Known::Upgrade
                | Known::ProxyAuthorization
        )
    }
}

/// `name`, a field name token, equals `lowercase` (letters, digits and `-`) without
/// regard to case. Setting bit 0x20 lowercases a letter and leaves `-` and digits
/// alone; of the other token characters none becomes a lowercase letter, a digit or
/// `-`. Without an early exit the loop is vectorised: a third of
/// `eq_ignore_ascii_case`'s cost here.
pub fn folded_equal(name: &[u8], lowercase: &[u8]) -> bool {
    name.len() == lowercase.len()
        && name
            .iter()
            .zip(lowercase)
            .fold(0u8, |differs, (a, b)| differs | ((a | 0x20) ^ b))
            == 0
}

const NOT_KNOWN: u8 = u8::MAX;

#[derive(Clone, Copy)]
struct Field {
    name_start: u32,
    name_length: u32,
    value_start: u32,
    value_length: u32,
    known: u8,
}

pub struct RequestFields {
    /// The bytes the fields are positions in: the request head on HTTP/1.1.
    text: Bytes,
    fields: Vec<Field>,
    /// For each known name, 1 + the index of its first field; 0 when absent.
    first: [u16; Known::COUNT],
    /// A bit per known name sent more than once.
    repeated: u32,
}

impl Default for RequestFields {
    fn default() -> Self {
        RequestFields {
            text: Bytes::new(),
            fields: Vec::new(),
            first: [0; Known::COUNT],
            repeated: 0,
        }
    }
}

impl RequestFields {
    /// Empties the list for the next request's fields at positions in `text`, keeping
    /// its allocation (the HTTP/1.1 server keeps one list per connection).
    pub fn reset(&mut self, text: Bytes) {
        self.text = text;
        self.fields.clear();
        self.first = [0; Known::COUNT];
        self.repeated = 0;
    }

    /// Adds the field whose name and value are at these positions of the text; returns
    /// which known header it is.
    pub fn push(&mut self, name: Range<usize>, value: Range<usize>) -> Option<Known> {
        let known = Known::of(&self.text[name.clone()]);
        let index = self.fields.len();
        if let Some(known) = known {
            let slot = &mut self.first[known as usize];
            if *slot == 0 {
                // More fields than u16 holds are refused long before (max_headers).
                *slot = u16::try_from(index + 1).unwrap_or(u16::MAX);
            } else {
                self.repeated |= 1 << known as u32;
            }
        }
        self.fields.push(Field {
            name_start: name.start as u32,
            name_length: name.len() as u32,
            value_start: value.start as u32,
            value_length: value.len() as u32,
            known: known.map_or(NOT_KNOWN, |k| k as u8),
        });
        known
    }

    /// The fields of an HTTP/2 request, copied into one buffer.
    pub fn from_header_map(headers: &HeaderMap) -> Self {
        Self::from_pairs(
            headers
                .iter()
                .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
        )
    }

    /// Fields given as names and values apart, copied into one buffer.
    fn from_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut text = Vec::new();
        let mut positions = Vec::new();
        for (name, value) in pairs {
            let name_start = text.len();
            text.extend_from_slice(name);
            let value_start = text.len();
            text.extend_from_slice(value);
            positions.push((name_start..value_start, value_start..text.len()));
        }
        let mut fields = RequestFields {
            text: Bytes::from(text),
            fields: Vec::with_capacity(positions.len()),
            ..RequestFields::default()
        };
        for (name, value) in positions {
            fields.push(name, value);
        }
        fields
    }

    /// The value of the field pushed last (empty when there is none).
    pub fn last_value(&self) -> &[u8] {
        self.fields.last().map_or(&[], |field| self.value_of(field))
    }

    fn name_of(&self, field: &Field) -> &[u8] {
        let start = field.name_start as usize;
        &self.text[start..start + field.name_length as usize]
    }

    fn value_of(&self, field: &Field) -> &[u8] {
        let start = field.value_start as usize;
        &self.text[start..start + field.value_length as usize]
    }

    /// The first value of a known header.
    pub fn get(&self, known: Known) -> Option<&[u8]> {
        match self.first[known as usize] {
            0 => None,
            at => Some(self.value_of(&self.fields[at as usize - 1])),
        }
    }

    /// The first value of a known header, if it is visible ASCII (as
    /// `HeaderValue::to_str` has it).
    pub fn get_str(&self, known: Known) -> Option<&str> {
        self.get(known).and_then(visible_ascii)
    }

    pub fn contains(&self, known: Known) -> bool {
        self.first[known as usize] != 0
    }

    /// Whether a known header was sent more than once.
    pub fn is_repeated(&self, known: Known) -> bool {
        self.repeated & (1 << known as u32) != 0
    }

    /// Every value of a known header, in order.
    pub fn all(&self, known: Known) -> impl Iterator<Item = &[u8]> {
        let from = (self.first[known as usize] as usize).saturating_sub(1);
        let present = self.contains(known);
        self.fields[from..]
            .iter()
            .filter(move |field| present && field.known == known as u8)
            .map(|field| self.value_of(field))
    }

    /// The first value of the header named `lowercase` (known or not).
    pub fn find(&self, lowercase: &str) -> Option<&[u8]> {
        if let Some(known) = Known::of(lowercase.as_bytes()) {
            return self.get(known);
        }
        self.fields
            .iter()
            .find(|field| field.known == NOT_KNOWN && self.name_of(field).eq_ignore_ascii_case(lowercase.as_bytes()))
            .map(|field| self.value_of(field))
    }

    /// Every field in order: its name as sent, its value, and which known header it is.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], Option<Known>)> {
        self.fields.iter().map(|field| {
            let known = (field.known != NOT_KNOWN).then(|| KNOWN[field.known as usize].0);
            (self.name_of(field), self.value_of(field), known)
        })
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// A field value as text when it is visible ASCII (HTAB and space allowed).
pub fn visible_ascii(value: &[u8]) -> Option<&str> {
    // ASCII suffices: values hold no control bytes but HTAB (see the module's header).
    // SAFETY: ASCII is UTF-8; `from_utf8` would check every byte a second time.
    value
        .is_ascii()
        .then(|| unsafe { std::str::from_utf8_unchecked(value) })
}

impl crate::tc3::SignedHeaders for RequestFields {
    fn signed_value(&self, name: &str) -> Option<&[u8]> {
        self.find(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields_of(lines: &[(&str, &str)]) -> RequestFields {
        RequestFields::from_pairs(lines.iter().map(|(name, value)| (name.as_bytes(), value.as_bytes())))
    }

    #[test]
    fn every_known_name_is_found_in_any_case_and_by_its_index() {
        for (index, (known, _)) in KNOWN.iter().enumerate() {
            assert_eq!(*known as usize, index);
            let name = known.lowercase();
            assert_eq!(Known::of(name.as_bytes()), Some(*known), "{name}");
            assert_eq!(Known::of(name.to_uppercase().as_bytes()), Some(*known), "{name}");
            assert!(
                http::HeaderName::from_static(name).as_str() == name,
                "{name} is a valid name"
            );
        }
        assert_eq!(Known::of(b"X_TC_Action"), None);
        assert_eq!(Known::of(b"x-tc-actions"), None);
        assert_eq!(Known::of(b"vary"), None);
        assert_eq!(Known::of(b"hosT"), Some(Known::Host));
    }

    #[test]
    fn lookups_find_first_values_repeats_and_unknown_names() {
        let fields = fields_of(&[
            ("Host", "example.com"),
            ("X-TC-Action", "LivenessCompare"),
            ("X-Custom", "one"),
            ("x-tc-action", "Other"),
            ("X-CUSTOM", "two"),
            ("Connection", "keep-alive"),
            ("connection", "x-custom"),
            ("X-Bin", "caf\u{e9}"),
        ]);
        assert_eq!(fields.len(), 8);
        assert_eq!(fields.get(Known::Host), Some(&b"example.com"[..]));
        assert_eq!(fields.get_str(Known::XTcAction), Some("LivenessCompare"));
        assert!(fields.is_repeated(Known::XTcAction));
        assert!(!fields.is_repeated(Known::Host));
        assert!(!fields.contains(Known::ContentType));
        assert_eq!(fields.get(Known::ContentType), None);
        assert_eq!(fields.find("x-custom"), Some(&b"one"[..]));
        assert_eq!(fields.find("x-tc-action"), Some(&b"LivenessCompare"[..]));
        assert_eq!(fields.find("x-missing"), None);
        assert_eq!(fields.find("x-bin").and_then(visible_ascii), None);
        let connection: Vec<&[u8]> = fields.all(Known::Connection).collect();
        assert_eq!(connection, [&b"keep-alive"[..], b"x-custom"]);
        assert_eq!(fields.all(Known::Expect).count(), 0);
        let names: Vec<(&[u8], Option<Known>)> = fields.iter().map(|(name, _, known)| (name, known)).collect();
        assert_eq!(names[1], (&b"X-TC-Action"[..], Some(Known::XTcAction)));
        assert_eq!(names[2], (&b"X-Custom"[..], None));
    }

    #[test]
    fn a_header_map_gives_the_same_fields() {
        let mut map = HeaderMap::new();
        map.append("content-type", "application/json".parse().unwrap());
        map.append("x-tc-action", "A".parse().unwrap());
        map.append("x-tc-action", "B".parse().unwrap());
        map.append("x-other", "1".parse().unwrap());
        let fields = RequestFields::from_header_map(&map);
        assert_eq!(fields.len(), 4);
        assert_eq!(fields.get_str(Known::ContentType), Some("application/json"));
        assert!(fields.is_repeated(Known::XTcAction));
        assert_eq!(fields.all(Known::XTcAction).collect::<Vec<_>>(), [&b"A"[..], b"B"]);
        assert_eq!(fields.find("x-other"), Some(&b"1"[..]));
    }
}
