//! Whether an upstream answer is billable: HTTP 200 (checked by the caller) and a
//! complete JSON object whose `Response` object has no `Error` key (Tencent bills no
//! API-level error). An incremental scanner that keeps only a few bytes of state and
//! can be fed in pieces, so an answer is never copied; inside strings it jumps with
//! memchr. Anything it cannot read as that shape is not billable: the gateway never
//! invents a call. Must not allocate per byte or look at anything but the answer.

/// Where the scanner is in the JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lexer {
    /// Between tokens.
    Between,
    /// Inside a string; `key` when it is an object key at depth 1 or 2.
    InString { escaped: bool, key: bool },
}

const KEY_CAPACITY: usize = 16;

#[derive(Debug, Clone)]
pub struct BillableScanner {
    lexer: Lexer,
    depth: u32,
    /// For the innermost two object levels: whether the next string is a key.
    expect_key: bool,
    /// The key being read (only the first bytes matter: "Response", "Error").
    key: [u8; KEY_CAPACITY],
    key_len: usize,
    key_truncated: bool,
    /// The depth-1 key whose value is being read is "Response".
    in_response: bool,
    saw_response_object: bool,
    saw_error: bool,
    /// Something that is not JSON of the expected shape was seen.
    malformed: bool,
    finished_top_level: bool,
}

impl Default for BillableScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl BillableScanner {
    pub fn new() -> Self {
        Self {
            lexer: Lexer::Between,
            depth: 0,
            expect_key: false,
            key: [0; KEY_CAPACITY],
            key_len: 0,
            key_truncated: false,
            in_response: false,
            saw_response_object: false,
            saw_error: false,
            malformed: false,
            finished_top_level: false,
        }
    }

    /// Feeds the next bytes of the answer.
    pub fn feed(&mut self, mut data: &[u8]) {
        if self.malformed {
            return;
        }
        while !data.is_empty() {
            match self.lexer {
                Lexer::InString { escaped, key } => {
                    if escaped {
                        self.lexer = Lexer::InString { escaped: false, key };
                        if key {
                            self.push_key_byte(data[0]);
                        }
                        data = &data[1..];
                        continue;
                    }
                    match memchr::memchr2(b'"', b'\\', data) {
                        None => {
                            if key {
                                self.push_key_bytes(data);
                            }
                            return;
                        }
                        Some(at) => {
                            if key {
                                self.push_key_bytes(&data[..at]);
                            }
                            if data[at] == b'\\' {
                                self.lexer = Lexer::InString { escaped: true, key };
                            } else {
                                self.lexer = Lexer::Between;
                                if key {
                                    self.end_key();
                                }
                            }
                            data = &data[at + 1..];
                        }
                    }
                }
                Lexer::Between => {
                    let byte = data[0];
                    data = &data[1..];
                    self.token(byte);
                    if self.malformed {
                        return;
                    }
                }
            }
        }
    }

    fn push_key_byte(&mut self, byte: u8) {
        self.push_key_bytes(&[byte]);
    }

    /// Keeps what fits of a key's bytes; a longer key is marked, never matched.
    fn push_key_bytes(&mut self, bytes: &[u8]) {
        let room = KEY_CAPACITY - self.key_len;
        let taken = bytes.len().min(room);
        self.key[self.key_len..self.key_len + taken].copy_from_slice(&bytes[..taken]);
        self.key_len += taken;
        self.key_truncated |= bytes.len() > room;
    }

    fn key_is(&self, name: &[u8]) -> bool {
        !self.key_truncated && &self.key[..self.key_len] == name
    }

    fn end_key(&mut self) {
        match self.depth {
            1 => self.in_response = self.key_is(b"Response"),
            2 if self.in_response && self.key_is(b"Error") => self.saw_error = true,
            _ => {}
        }
        self.expect_key = false;
    }

    fn token(&mut self, byte: u8) {
        if self.finished_top_level {
            if !byte.is_ascii_whitespace() {
                self.malformed = true;
            }
            return;
        }
        match byte {
            b'"' => {
                let key = self.expect_key && (self.depth == 1 || self.depth == 2);
                if key {
                    self.key_len = 0;
                    self.key_truncated = false;
                } else if self.expect_key {
                    self.expect_key = false;
                }
                self.lexer = Lexer::InString { escaped: false, key };
            }
            b'{' => {
                if self.depth == 0 && self.finished_top_level {
                    self.malformed = true;
                }
                if self.depth == 1 && self.in_response {
                    self.saw_response_object = true;
                }
                self.depth += 1;
                self.expect_key = true;
            }
            b'[' => {
                if self.depth == 0 {
                    self.malformed = true;
                }
                self.depth += 1;
                self.expect_key = false;
            }
            b'}' | b']' => {
                if self.depth == 0 {
                    self.malformed = true;
                    return;
                }
                self.depth -= 1;
                if self.depth == 1 {
                    // Back in the top-level object: the Response value (if it was) is done.
                    self.in_response = false;
                }
                if self.depth == 0 {
                    self.finished_top_level = true;
                }
                self.expect_key = false;
            }
            b',' => {
                // After a comma inside an object comes a key; inside an array a value.
                // Arrays never sit at depth 1 or 2 in the shape that matters, and keys
                // deeper than 2 are not read, so expecting a key is always safe.
                self.expect_key = true;
            }
            b':' => self.expect_key = false,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => {
                if self.depth == 0 {
                    self.malformed = true;
                }
            }
        }
    }

    /// The verdict once the whole answer has been fed.
    pub fn is_billable(&self) -> bool {
        !self.malformed
            && self.lexer == Lexer::Between
            && self.finished_top_level
            && self.saw_response_object
            && !self.saw_error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(text: &str) -> bool {
        let mut s = BillableScanner::new();
        s.feed(text.as_bytes());
        s.is_billable()
    }

    fn verdict_in_pieces(text: &str, piece: usize) -> bool {
        let mut s = BillableScanner::new();
        for chunk in text.as_bytes().chunks(piece) {
            s.feed(chunk);
        }
        s.is_billable()
    }

    #[test]
    fn success_answers_are_billable_errors_are_not() {
        let cases = [
            (r#"{"Response":{"Result":"0","RequestId":"x"}}"#, true),
            (
                r#"{"Response":{"Error":{"Code":"FailedOperation.ImageDecodeFailed","Message":"m"},"RequestId":"x"}}"#,
                false,
            ),
            (r#"{"Response":{"RequestId":"x","Error":{"Code":"c"}}}"#, false),
            (
                r#" { "Response" : { "Sim" : "91", "Error2": 1, "X": {"Error": 1} } } "#,
                true,
            ),
            (
                r#"{"Response":{"Description":"has \"Error\" inside","List":[{"Error":1}]}}"#,
                true,
            ),
            (r#"{"Other":{"Error":1},"Response":{"Result":"0"}}"#, true),
            (r#"{"Response":{"Result":"0"},"Error":{}}"#, true),
            (r#"{"Response":{"Res\u0075lt":"0","Err\"or":1}}"#, true),
            // Keys longer than the scanner keeps: never taken for a shorter one.
            (r#"{"ResponseResponseResponse":{"Result":"0"}}"#, false),
            (r#"{"Response":{"ErrorErrorErrorErrorError":{"Code":"c"}}}"#, true),
            (r#"{"Response":{"Error_sixteen_byt":{"Code":"c"}}}"#, true),
            (r#"{"Response":{"Error_seventeen_b":1,"Error":{"Code":"c"}}}"#, false),
            (r#"{"Response":"text"}"#, false),
            (r#"{"Result":"0"}"#, false),
            (r#"{"Response":{"Result":"0"}"#, false),
            (r#"{"Response":{"Result":"0"}} trailing"#, false),
            (r#"[{"Response":{}}]"#, false),
            ("<html>502 Bad Gateway</html>", false),
            ("", false),
        ];
        for (text, billable) in cases {
            assert_eq!(verdict(text), billable, "{text}");
            for piece in [1, 2, 3, 7] {
                assert_eq!(verdict_in_pieces(text, piece), billable, "{text} in pieces of {piece}");
            }
        }
    }

    #[test]
    fn a_5_mib_answer_is_scanned_without_buffering() {
        let image = "A".repeat(5 << 20);
        let text = format!(r#"{{"Response":{{"BestFrameBase64":"{image}","Result":"Success","RequestId":"x"}}}}"#);
        assert!(verdict_in_pieces(&text, 16 * 1024));
        let text = format!(r#"{{"Response":{{"BestFrameBase64":"{image}","Error":{{"Code":"x"}}}}}}"#);
        assert!(!verdict_in_pieces(&text, 16 * 1024));
    }
}
