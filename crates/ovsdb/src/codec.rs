//! JSON-RPC framing for OVSDB (RFC 7047 §4): messages are JSON objects
//! sent back to back, with no length and no separator, so the decoder
//! must find where each one ends.
//!
//! serde_json's stream deserializer reports a cut message as an EOF
//! error, but it has to start again from the message's first byte on
//! every read, which is quadratic for a large message that arrives in
//! many reads (a big `initial` state). So a small scanner walks each byte
//! once, tracking string and bracket nesting, and only the span of
//! complete messages goes to `serde_json::Deserializer::from_slice(..)
//! .into_iter::<Value>()`. The unconsumed tail (a message cut short) is
//! kept for the next read.

use std::collections::VecDeque;

use serde_json::Value;

use crate::error::CodecError;

/// The default bound on one message: 64 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

/// A streaming decoder of back-to-back JSON objects.
///
/// Feed it bytes in any pieces; it yields the same messages, in the same
/// order, as for the whole stream at once. An error is final: the
/// decoder keeps refusing until [`Decoder::reset`].
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    buf: Vec<u8>,
    /// Offset in the stream of `buf[0]`.
    base: u64,
    /// `buf[..scanned]` has been scanned.
    scanned: usize,
    /// `buf[..complete]` holds only whole messages (and whitespace).
    complete: usize,
    /// Where the message being scanned starts, if one is open.
    open_at: Option<usize>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    ready: VecDeque<Value>,
    failed: Option<CodecError>,
}

impl Decoder {
    /// A decoder that refuses any message longer than `max_message`
    /// bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            buf: Vec::new(),
            base: 0,
            scanned: 0,
            complete: 0,
            open_at: None,
            depth: 0,
            in_string: false,
            escaped: false,
            ready: VecDeque::new(),
            failed: None,
        }
    }

    /// Forgets everything, for a new connection.
    pub fn reset(&mut self) {
        *self = Self::new(self.max_message);
    }

    /// The bytes held for a message not yet complete.
    pub fn pending_len(&self) -> usize {
        self.buf.len()
    }

    /// Takes more bytes. The messages they complete become available from
    /// [`Decoder::next_message`]; messages that came before a fault are
    /// still delivered, then the fault is returned (now and on every later
    /// call).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), CodecError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(data);
        let scan_fault = self.scan();
        let parse_fault = self.parse_complete();
        // A fault found by serde_json comes first in the stream: the
        // scanner only looks past messages it thinks are whole.
        if let Some(e) = parse_fault.or(scan_fault) {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            return Err(e);
        }
        self.compact();
        Ok(())
    }

    /// The next whole message, in stream order.
    pub fn next_message(&mut self) -> Option<Value> {
        self.ready.pop_front()
    }

    /// Walks the new bytes, noting where messages end.
    fn scan(&mut self) -> Option<CodecError> {
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            match self.open_at {
                None => match b {
                    b' ' | b'\t' | b'\n' | b'\r' => {
                        // Whitespace between messages counts as consumed.
                        if self.complete == i {
                            self.complete = i + 1;
                        }
                    }
                    b'{' | b'[' => {
                        self.open_at = Some(i);
                        self.depth = 1;
                    }
                    _ => {
                        self.scanned = i;
                        return Some(CodecError::NotAnObject {
                            byte: b,
                            offset: self.base + i as u64,
                        });
                    }
                },
                Some(start) => {
                    if i - start >= self.max_message {
                        self.scanned = i;
                        return Some(CodecError::TooLarge {
                            limit: self.max_message,
                        });
                    }
                    if self.in_string {
                        if self.escaped {
                            self.escaped = false;
                        } else if b == b'\\' {
                            self.escaped = true;
                        } else if b == b'"' {
                            self.in_string = false;
                        }
                    } else {
                        match b {
                            b'"' => self.in_string = true,
                            b'{' | b'[' => self.depth += 1,
                            b'}' | b']' => {
                                self.depth -= 1;
                                if self.depth == 0 {
                                    self.open_at = None;
                                    self.complete = i + 1;
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            i += 1;
        }
        self.scanned = i;
        None
    }

    /// Parses every whole message in `buf[..complete]`.
    fn parse_complete(&mut self) -> Option<CodecError> {
        if self.complete == 0 {
            return None;
        }
        let mut stream =
            serde_json::Deserializer::from_slice(&self.buf[..self.complete]).into_iter::<Value>();
        loop {
            match stream.next() {
                None => break None,
                Some(Ok(v)) => self.ready.push_back(v),
                // The scanner saw the brackets close, so a cut message
                // (`is_eof`) cannot happen here; any error, EOF included,
                // means the bytes are not JSON.
                Some(Err(e)) => break Some(CodecError::Syntax(e.to_string())),
            }
        }
    }

    /// Drops the consumed prefix of the buffer.
    fn compact(&mut self) {
        let n = self.complete;
        if n == 0 {
            return;
        }
        self.buf.drain(..n);
        self.base += n as u64;
        self.scanned -= n;
        self.complete = 0;
        if let Some(s) = self.open_at.as_mut() {
            *s -= n;
        }
    }
}

/// Appends `msg` as JSON text to `out` (RFC 7047 §4: no framing of its
/// own).
pub fn encode(msg: &Value, out: &mut Vec<u8>) {
    // Writing a `Value` into a `Vec` cannot fail: its map keys are
    // strings, and `Vec`'s `Write` never errors.
    let _ = serde_json::to_writer(out, msg);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn drain(d: &mut Decoder) -> Vec<Value> {
        std::iter::from_fn(|| d.next_message()).collect()
    }

    /// What a stream fed in `chunks` decodes to: the messages, and whether
    /// it ended in a fault.
    fn run(chunks: &[&[u8]], max: usize) -> (Vec<Value>, Option<CodecError>) {
        let mut d = Decoder::new(max);
        let mut out = Vec::new();
        for c in chunks {
            let r = d.feed(c);
            out.extend(drain(&mut d));
            if let Err(e) = r {
                return (out, Some(e));
            }
        }
        (out, None)
    }

    #[test]
    fn back_to_back_messages_with_no_separator() {
        // As ovsdb-server 3.1 writes them: no newline between messages.
        let wire = br#"{"id":"echo","method":"echo","params":[]}{"id":0,"result":["Open_vSwitch","_Server"],"error":null}"#;
        let (msgs, err) = run(&[wire], DEFAULT_MAX_MESSAGE);
        assert!(err.is_none());
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0]["method"], "echo");
        assert_eq!(msgs[1]["result"][1], "_Server");
    }

    #[test]
    fn a_cut_message_waits_for_its_tail() {
        let mut d = Decoder::new(DEFAULT_MAX_MESSAGE);
        d.feed(br#"{"a":"x}{]\"y"#).unwrap();
        assert!(d.next_message().is_none());
        assert!(d.pending_len() > 0);
        d.feed(br#"","b":[1,{"c":2}]} {"#).unwrap();
        assert_eq!(
            d.next_message(),
            Some(json!({"a": "x}{]\"y", "b": [1, {"c": 2}]}))
        );
        assert_eq!(d.pending_len(), 1);
        d.feed(b"}\n").unwrap();
        assert_eq!(d.next_message(), Some(json!({})));
        assert_eq!(d.pending_len(), 0);
    }

    #[test]
    fn faults_are_final_and_come_after_the_good_messages() {
        let (msgs, err) = run(&[br#"{"ok":1} 17 {"never":2}"#], 1000);
        assert_eq!(msgs, vec![json!({"ok": 1})]);
        assert_eq!(
            err,
            Some(CodecError::NotAnObject {
                byte: b'1',
                offset: 9
            })
        );

        let (msgs, err) = run(&[br#"{"ok":1}{"bad":tru}"#], 1000);
        assert_eq!(msgs.len(), 1);
        assert!(matches!(err, Some(CodecError::Syntax(_))));

        let mut d = Decoder::new(1000);
        assert!(d.feed(b"}").is_err());
        assert!(d.feed(b"{}").is_err(), "a fault stays until reset");
        d.reset();
        d.feed(b"{}").unwrap();
        assert_eq!(d.next_message(), Some(json!({})));

        // Invalid UTF-8 inside a string.
        let (_, err) = run(&[b"{\"a\":\"\xff\"}"], 1000);
        assert!(matches!(err, Some(CodecError::Syntax(_))));
        // Nesting deeper than serde_json's limit is an error, not a stack
        // overflow.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let (_, err) = run(&[deep.as_bytes()], DEFAULT_MAX_MESSAGE);
        assert!(matches!(err, Some(CodecError::Syntax(_))), "{err:?}");
    }

    #[test]
    fn a_message_over_the_limit_is_refused_before_its_end() {
        let mut d = Decoder::new(100);
        d.feed(br#"{"a":""#).unwrap();
        let long = vec![b'x'; 200];
        assert_eq!(d.feed(&long), Err(CodecError::TooLarge { limit: 100 }));
        assert!(d.pending_len() == 0, "the buffer is released");
        // Exactly at the limit is fine.
        let msg = format!(r#"{{"a":"{}"}}"#, "x".repeat(92));
        assert_eq!(msg.len(), 100);
        let (msgs, err) = run(&[msg.as_bytes()], 100);
        assert!(err.is_none() && msgs.len() == 1);
        let (_, err) = run(&[msg.as_bytes()], 99);
        assert_eq!(err, Some(CodecError::TooLarge { limit: 99 }));
    }

    #[test]
    fn a_large_message_in_small_reads_is_linear() {
        // 8 MiB in 4 KiB reads: 2,048 reads. A decoder that re-parsed from
        // the message start would parse about 8 GiB; this one scans each
        // byte once (it takes well under a second in a debug build).
        let rows: Vec<Value> = (0..40_000)
            .map(|i| json!({"name": format!("vx{i}"), "options": ["map", [["remote_ip", "192.0.2.1"], ["psk", "x".repeat(150)]]]}))
            .collect();
        let mut wire = Vec::new();
        encode(&json!({"id": 1, "result": rows, "error": null}), &mut wire);
        assert!(wire.len() > 8 << 20);
        let mut d = Decoder::new(DEFAULT_MAX_MESSAGE);
        let t = std::time::Instant::now();
        for c in wire.chunks(4096) {
            d.feed(c).unwrap();
        }
        let v = d.next_message().unwrap();
        assert_eq!(v["result"].as_array().unwrap().len(), 40_000);
        eprintln!("{} bytes in 4 KiB reads: {:?}", wire.len(), t.elapsed());
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
    }

    /// Arbitrary JSON, objects at the top.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            // Reals that print and parse back exactly (serde_json without
            // its float_roundtrip feature may be one ulp off otherwise).
            any::<i32>().prop_map(|i| json!(f64::from(i) / 8.0)),
            ".*".prop_map(Value::String),
            "[\"{}\\[\\]\\\\ a]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn split(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut last = 0;
        for c in cuts {
            out.push(data[last..c].to_vec());
            last = c;
        }
        out.push(data[last..].to_vec());
        out
    }

    proptest! {
        /// Messages encoded back to back, cut anywhere, decode to the same
        /// messages.
        #[test]
        fn encoded_messages_survive_any_split(
            msgs in proptest::collection::vec(
                proptest::collection::btree_map("[a-z]{1,3}", json_value(), 0..4), 1..5),
            spaces in proptest::collection::vec(prop_oneof![Just(""), Just(" "), Just("\n")], 5),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let msgs: Vec<Value> = msgs.into_iter().map(|m| Value::Object(m.into_iter().collect())).collect();
            let mut wire = Vec::new();
            for (m, s) in msgs.iter().zip(spaces.iter().cycle()) {
                encode(m, &mut wire);
                wire.extend_from_slice(s.as_bytes());
            }
            let chunks = split(&wire, &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let (got, err) = run(&refs, DEFAULT_MAX_MESSAGE);
            prop_assert!(err.is_none(), "{:?}", err);
            prop_assert_eq!(got, msgs);
        }

        /// Any bytes, cut anywhere, decode exactly as the whole: the same
        /// messages, then the same fault (or none). No panic.
        #[test]
        fn any_bytes_split_anywhere_decode_as_whole(
            data in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                proptest::collection::vec(prop_oneof![
                    Just(b'{'), Just(b'}'), Just(b'['), Just(b']'), Just(b'"'),
                    Just(b'\\'), Just(b':'), Just(b','), Just(b' '), Just(b'1'), Just(b'a'),
                ], 0..200),
            ],
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            max in 1usize..64,
        ) {
            let whole = run(&[&data], max);
            let chunks = split(&data, &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let parts = run(&refs, max);
            prop_assert_eq!(parts.0, whole.0);
            prop_assert_eq!(parts.1.is_some(), whole.1.is_some());
        }
    }
}
