//! Property tests of the readers of the web UI (`vnca serve`): the client-message parser
//! [`parse_client_message`] (untrusted text from any browser tab) and the frame decoder
//! [`decode_frame`] (what a client does with the server's binary messages).
//!
//! * `parse_client_message` never panics, whatever the text: arbitrary Unicode and
//!   control characters, JSON-like token soup with huge numbers, `NaN`/`Infinity` spelled
//!   out, lone surrogates, nesting far beyond serde_json's recursion limit, and strings up
//!   to the WebSocket layer's hard limit ([`HARD_MAX_MESSAGE_BYTES`]);
//! * every refusal is a [`ProtocolError`] whose text is one short line (no line breaks or
//!   other control characters, at most [`MAX_ERROR_CHARS`] characters), and every message
//!   over [`MAX_MESSAGE_BYTES`] is refused as too large;
//! * every accepted message is of the `type` the text says, and its fields are within the
//!   documented limits (speed in [MIN_SPEED, MAX_SPEED], radius in (0, MAX_RADIUS], t in
//!   [0, 1], coordinates finite, batch at least 1);
//! * every valid message (any key order, whitespace, number spelling) is accepted as
//!   exactly the message it says;
//! * `decode_frame` never panics on arbitrary bytes or on mutated frames, accepts only
//!   frames whose length matches their header, and round-trips `encode_frame` for any
//!   header and pixels.
//!
//! Cases per property: [`DEFAULT_CASES`], or `PROPTEST_CASES=N` (see docs/RELIABILITY.md).

use proptest::prelude::*;
use serde_json::Value;
use vnca::serve::protocol::{
    decode_frame, encode_frame, parse_client_message, ClientMsg, FrameHeader, Posterior,
    ProtocolError, HARD_MAX_MESSAGE_BYTES, HEADER_BYTES, MAGIC, MAX_DRAW_SIZE, MAX_MESSAGE_BYTES,
    MAX_RADIUS, MAX_SPEED, MIN_SPEED, VERSION,
};

// ---------------------------------------------------------------------------------------
// Configuration and checks.

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 4096;

/// An error reply is shown in the page's status line: it must stay short.
const MAX_ERROR_CHARS: usize = 300;

fn config() -> ProptestConfig {
    vnca_fuzzing::config(DEFAULT_CASES)
}

/// The text shown for an input in a failure message (inputs can be 64 KiB).
fn shown(text: &str) -> String {
    let head: String = text.chars().take(120).collect();
    if head.len() < text.len() {
        format!("{head:?}... ({} bytes)", text.len())
    } else {
        format!("{head:?}")
    }
}

/// A refusal: non-empty, one line, short.
fn check_error(e: &ProtocolError, text: &str) -> Result<(), TestCaseError> {
    let m = &e.0;
    prop_assert!(!m.trim().is_empty(), "empty error for {}", shown(text));
    prop_assert!(
        !m.chars()
            .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')),
        "error is not one line: {m:?} for {}",
        shown(text)
    );
    prop_assert!(
        m.chars().count() <= MAX_ERROR_CHARS,
        "error of {} characters: {m:?} for {}",
        m.chars().count(),
        shown(text)
    );
    prop_assert_eq!(e.to_string(), m.clone(), "Display is the message");
    Ok(())
}

/// The `type` a message of this variant has.
fn kind_of(m: &ClientMsg) -> &'static str {
    match m {
        ClientMsg::Play => "play",
        ClientMsg::Pause => "pause",
        ClientMsg::Step => "step",
        ClientMsg::Speed(_) => "speed",
        ClientMsg::Erase { .. } => "erase",
        ClientMsg::NewLatents(_) => "new_latents",
        ClientMsg::Interpolate(_) => "interpolate",
        ClientMsg::Restart => "restart",
        ClientMsg::Model(_) => "model",
        ClientMsg::Batch(_) => "batch",
        ClientMsg::Ack => "ack",
        ClientMsg::Draw { .. } => "draw",
    }
}

/// An accepted message: small enough, a JSON object of the type it was parsed as, and
/// every field within the documented limits.
fn check_accepted(m: &ClientMsg, text: &str) -> Result<(), TestCaseError> {
    prop_assert!(text.len() <= MAX_MESSAGE_BYTES, "accepted {}", shown(text));
    let v: Value = serde_json::from_str(text).map_err(|e| {
        TestCaseError::fail(format!("accepted invalid JSON ({e}): {}", shown(text)))
    })?;
    prop_assert_eq!(
        v.get("type").and_then(Value::as_str),
        Some(kind_of(m)),
        "{:?} from {}",
        m,
        shown(text)
    );
    match *m {
        ClientMsg::Speed(s) => prop_assert!(
            s.is_finite() && (MIN_SPEED..=MAX_SPEED).contains(&s),
            "speed {s} from {}",
            shown(text)
        ),
        ClientMsg::Erase { x, y, radius, .. } => prop_assert!(
            x.is_finite() && y.is_finite() && radius > 0.0 && radius <= MAX_RADIUS,
            "{m:?} from {}",
            shown(text)
        ),
        ClientMsg::Interpolate(t) => {
            prop_assert!((0.0..=1.0).contains(&t), "t = {t} from {}", shown(text))
        }
        ClientMsg::Batch(n) => prop_assert!(n >= 1, "batch 0 from {}", shown(text)),
        ClientMsg::Draw { size, .. } => prop_assert!(
            (1..=MAX_DRAW_SIZE as usize).contains(&size),
            "draw size {size} from {}",
            shown(text)
        ),
        _ => {}
    }
    Ok(())
}

/// Parses `text` (which must not panic) and checks the outcome either way.
fn check_parse(text: &str) -> Result<(), TestCaseError> {
    parse_checked(text).map(|_| ())
}

/// [`check_parse`], returning the outcome.
fn parse_checked(text: &str) -> Result<Result<ClientMsg, ProtocolError>, TestCaseError> {
    let r = std::panic::catch_unwind(|| parse_client_message(text))
        .map_err(|_| TestCaseError::fail(format!("panicked on {}", shown(text))))?;
    match &r {
        Ok(m) => check_accepted(m, text)?,
        Err(e) => {
            check_error(e, text)?;
            if text.len() > MAX_MESSAGE_BYTES {
                prop_assert!(e.0.contains("too large"), "{e} for {}", shown(text));
            }
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// Strategies for client messages.

const TYPES: &[&str] = &[
    "play",
    "pause",
    "step",
    "speed",
    "erase",
    "new_latents",
    "interpolate",
    "restart",
    "model",
    "batch",
    "ack",
];

const FIELDS: &[&str] = &[
    "steps_per_second",
    "sample",
    "x",
    "y",
    "radius",
    "seed",
    "t",
    "index",
    "n",
];

/// A JSON string literal of `s` (properly escaped).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Text with control characters, line separators, quotes, backslashes, non-BMP
/// characters and plain ASCII.
fn nasty_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::char::range('a', 'z'),
            2 => any::<char>(),
            1 => prop::sample::select(vec![
                '\n', '\r', '\t', '\0', '\u{7f}', '\u{85}', '\u{2028}', '\u{2029}', '"', '\\',
                '`', '\u{feff}', '\u{1f600}', '\u{301}', '\u{202e}', 'é',
            ]),
        ],
        0..max,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

/// A number spelled as a client might send it, valid JSON or not.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "0", "-0", "0.0", "-0.0", "1", "-1", "0.5", "0.4999999999999999", "60",
            "60.000000000001", "64", "64.00000000000001", "1e-320", "5e-324", "1e308",
            "-1e308", "1.7976931348623157e308", "1e309", "1e999", "-1e999", "1e-999",
            "18446744073709551615", "18446744073709551616", "-9223372036854775808",
            "99999999999999999999999999999", "1E2", "1e+2", "2.5e-1",
            // Not JSON numbers:
            "NaN", "-NaN", "nan", "Infinity", "-Infinity", "inf", "+1", "01", "1.", ".5",
            "0x10", "1_000", "--1", "1e", "1e+", "\u{0661}",
        ])
        .prop_map(String::from),
        2 => any::<f64>().prop_map(|x| format!("{x}")),
        2 => any::<f64>().prop_map(|x| format!("{x:e}")),
        1 => any::<i64>().prop_map(|x| x.to_string()),
        1 => any::<u64>().prop_map(|x| x.to_string()),
        2 => (-100.0f64..100.0).prop_map(|x| format!("{x}")),
        2 => (0u32..100).prop_map(|x| x.to_string()),
        2 => (0u32..3).prop_map(|x| x.to_string()),
    ]
}

/// A JSON-ish value: numbers, literals, strings (with escapes, lone surrogates), and
/// arrays and objects of these.
fn value_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        6 => number_text(),
        1 => prop::sample::select(vec![
            "true", "false", "null", "\"\"", "\"0\"", "\"\\u0000\"", "\"\\ud800\"",
            "\"\\udc00\\ud800\"", "\"\\uD83D\\uDE00\"", "\"\\x\"", "\"a\nb\"", "undefined",
            "{}", "[]",
        ])
        .prop_map(String::from),
        1 => nasty_text(20).prop_map(|s| quoted(&s)),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((key_text(), inner), 0..4).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

/// An object key: a real field name, `type`, or anything.
fn key_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(quoted),
        1 => Just(quoted("type")),
        2 => nasty_text(60).prop_map(|s| quoted(&s)),
    ]
}

/// A `type` value: a real one, a near miss, anything, or not a string.
fn type_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(TYPES).prop_map(quoted),
        1 => prop::sample::select(vec!["PLAY", "play ", " erase", "new-latents", "", "error"])
            .prop_map(quoted),
        2 => nasty_text(80).prop_map(|s| quoted(&s)),
        1 => value_text(),
    ]
}

#[derive(Clone, Debug)]
enum Damage {
    None,
    /// Keep the first `n` bytes (at a character boundary).
    Truncate(usize),
    /// Insert a fragment at byte `at` (at a character boundary).
    Insert(usize, String),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        6 => Just(Damage::None),
        1 => any::<usize>().prop_map(Damage::Truncate),
        1 => (
            any::<usize>(),
            prop::sample::select(vec!["{", "}", "[", "]", ",", ":", "\"", "\\", " ", "\n", "\0"]),
        )
            .prop_map(|(at, s)| Damage::Insert(at, s.to_string())),
    ]
}

fn boundary(s: &str, raw: usize) -> usize {
    let mut i = raw % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The fields each message type takes.
fn fields_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "speed" => &["steps_per_second"],
        "erase" => &["sample", "x", "y", "radius"],
        "new_latents" => &["seed"],
        "interpolate" => &["t"],
        "model" => &["index"],
        "batch" => &["n"],
        _ => &[],
    }
}

/// Assembles an object from its members (a `type` member first or last), with `ws` as
/// whitespace, then damages it.
fn assemble(
    mut parts: Vec<String>,
    ty: Option<String>,
    type_last: bool,
    ws: &str,
    dmg: Damage,
) -> String {
    if let Some(t) = ty {
        let t = format!("\"type\":{ws}{t}");
        if type_last {
            parts.push(t);
        } else {
            parts.insert(0, t);
        }
    }
    let text = format!("{ws}{{{}}}{ws}", parts.join(&format!(",{ws}")));
    match dmg {
        Damage::None => text,
        Damage::Truncate(n) => text[..boundary(&text, n)].to_string(),
        Damage::Insert(at, s) => {
            let i = boundary(&text, at);
            format!("{}{s}{}", &text[..i], &text[i..])
        }
    }
}

fn whitespace() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", " ", "\n", "\t ", "\r\n"])
}

/// Message-shaped text: an object with (usually) a `type` and fields, sometimes damaged.
/// Mostly a real type with its own fields holding odd numbers (some of them valid),
/// sometimes one field missing or extra ones; otherwise any keys and values.
fn message_text() -> impl Strategy<Value = String> {
    let typed = (
        prop::sample::select(TYPES),
        prop::collection::vec(prop_oneof![8 => number_text(), 1 => value_text()], 4),
        prop::option::weighted(0.15, any::<prop::sample::Index>()),
        prop::collection::vec((key_text(), value_text()), 0..2),
        any::<bool>(),
        whitespace(),
        damage(),
    )
        .prop_map(|(kind, values, drop, extra, type_last, ws, dmg)| {
            let names = fields_of(kind);
            let mut parts: Vec<String> = names
                .iter()
                .zip(&values)
                .map(|(k, v)| format!("\"{k}\"{ws}:{ws}{v}"))
                .collect();
            if let Some(i) = drop.filter(|_| !parts.is_empty()) {
                parts.remove(i.index(parts.len()));
            }
            // Extra members only now and then (most messages should get past them).
            if extra.len() == 1 {
                parts.extend(extra.iter().map(|(k, v)| format!("{k}:{v}")));
            }
            assemble(parts, Some(quoted(kind)), type_last, ws, dmg)
        });
    let any_fields = (
        prop::option::weighted(0.9, type_text()),
        prop::collection::vec((key_text(), value_text()), 0..5),
        any::<bool>(),
        whitespace(),
        damage(),
    )
        .prop_map(|(ty, fields, type_last, ws, dmg)| {
            let parts = fields
                .into_iter()
                .map(|(k, v)| format!("{k}{ws}:{ws}{v}"))
                .collect();
            assemble(parts, ty, type_last, ws, dmg)
        });
    prop_oneof![3 => typed, 2 => any_fields]
}

/// A valid message, and its text (fields in any order, numbers spelled various ways).
fn valid_message() -> impl Strategy<Value = (ClientMsg, String)> {
    let interior = |lo: f64, hi: f64| {
        prop_oneof![
            1 => Just(lo),
            1 => Just(hi),
            6 => lo..hi,
        ]
    };
    let msg = prop_oneof![
        Just(ClientMsg::Play),
        Just(ClientMsg::Pause),
        Just(ClientMsg::Step),
        Just(ClientMsg::Restart),
        interior(MIN_SPEED, MAX_SPEED).prop_map(ClientMsg::Speed),
        (
            0usize..100_000,
            -1e6f64..1e6,
            -1e6f64..1e6,
            prop_oneof![
                Just(MAX_RADIUS),
                Just(f64::MIN_POSITIVE),
                1e-3f64..MAX_RADIUS
            ],
        )
            .prop_map(|(sample, x, y, radius)| ClientMsg::Erase {
                sample,
                x,
                y,
                radius
            }),
        prop::option::of(any::<u64>()).prop_map(ClientMsg::NewLatents),
        interior(0.0, 1.0).prop_map(ClientMsg::Interpolate),
        any::<u32>().prop_map(|i| ClientMsg::Model(i as usize)),
        (1u32..=u32::MAX).prop_map(|n| ClientMsg::Batch(n as usize)),
        (
            1..=MAX_DRAW_SIZE as usize,
            prop::collection::vec(any::<u8>(), 0..64),
            any::<bool>(),
            prop::option::of(0usize..1_000_000),
        )
            .prop_map(|(size, pixels, mean, test_digit)| ClientMsg::Draw {
                size,
                pixels,
                z: if mean {
                    Posterior::Mean
                } else {
                    Posterior::Sample
                },
                test_digit
            }),
    ];
    (
        msg,
        any::<bool>(),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(m, exp, rot, spaced)| {
            let num = |x: f64| {
                if exp {
                    format!("{x:e}")
                } else {
                    format!("{x}")
                }
            };
            let mut fields: Vec<(String, String)> = match &m {
                ClientMsg::Speed(s) => vec![("steps_per_second".into(), num(*s))],
                ClientMsg::Erase {
                    sample,
                    x,
                    y,
                    radius,
                } => vec![
                    ("sample".into(), sample.to_string()),
                    ("x".into(), num(*x)),
                    ("y".into(), num(*y)),
                    ("radius".into(), num(*radius)),
                ],
                ClientMsg::NewLatents(Some(s)) => vec![("seed".into(), s.to_string())],
                ClientMsg::Interpolate(t) => vec![("t".into(), num(*t))],
                ClientMsg::Model(i) => vec![("index".into(), i.to_string())],
                ClientMsg::Batch(n) => vec![("n".into(), n.to_string())],
                ClientMsg::Draw {
                    size,
                    pixels,
                    z,
                    test_digit,
                } => {
                    let mut f = vec![
                        ("size".into(), size.to_string()),
                        ("pixels".into(), serde_json::to_string(pixels).unwrap()),
                        ("z".into(), serde_json::to_string(z).unwrap()),
                    ];
                    if let Some(k) = test_digit {
                        f.push(("test_digit".into(), k.to_string()));
                    }
                    f
                }
                _ => vec![],
            };
            fields.push(("type".into(), quoted(kind_of(&m))));
            let k = rot.index(fields.len());
            fields.rotate_left(k);
            let sep = if spaced { ", " } else { "," };
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{k}\":{}{v}", if spaced { " " } else { "" }))
                .collect();
            (m, format!("{{{}}}", body.join(sep)))
        })
}

/// The same message with every float within a relative 1e-15 (serde_json's default float
/// parser may be one ulp off the shortest representation Rust prints).
fn close_to(a: &ClientMsg, b: &ClientMsg) -> bool {
    let near = |x: f64, y: f64| x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs());
    match (a, b) {
        (ClientMsg::Speed(x), ClientMsg::Speed(y)) => near(*x, *y),
        (ClientMsg::Interpolate(x), ClientMsg::Interpolate(y)) => near(*x, *y),
        (
            ClientMsg::Erase {
                sample: s1,
                x: x1,
                y: y1,
                radius: r1,
            },
            ClientMsg::Erase {
                sample: s2,
                x: x2,
                y: y2,
                radius: r2,
            },
        ) => s1 == s2 && near(*x1, *x2) && near(*y1, *y2) && near(*r1, *r2),
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------
// Properties of the client-message parser.

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_survives_odd_drawings(
        size in number_text(),
        pixels in prop::collection::vec(prop_oneof![4 => (0u32..300).prop_map(|v| v.to_string()), 1 => value_text()], 0..40),
        z in value_text(),
    ) {
        let text = format!(r#"{{"type":"draw","size":{size},"pixels":[{}],"z":{z}}}"#, pixels.join(","));
        check_parse(&text)?;
    }

    #[test]
    fn parse_survives_arbitrary_text(text in "\\PC{0,400}") {
        check_parse(&text)?;
    }

    #[test]
    fn parse_survives_control_characters_and_odd_unicode(text in nasty_text(400)) {
        check_parse(&text)?;
    }

    #[test]
    fn parse_survives_lossy_utf8_of_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_parse(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn parse_survives_message_shaped_text(text in message_text()) {
        check_parse(&text)?;
    }

    #[test]
    fn parse_survives_deep_nesting(
        depth in prop_oneof![1usize..200, 200usize..HARD_MAX_MESSAGE_BYTES / 2],
        open in prop::sample::select(vec!["[", "{\"a\":", "{\"type\":"]),
        close in any::<bool>(),
        field in prop::sample::select(FIELDS),
    ) {
        // Inside a real message and at the top level.
        let close_with = if open == "[" { "]" } else { "}" };
        let nest = |d: usize| {
            let mut s = open.repeat(d);
            s.push('0');
            if close {
                s.push_str(&close_with.repeat(d));
            }
            s
        };
        let inner = nest(depth.min((HARD_MAX_MESSAGE_BYTES - 64) / open.len()));
        check_parse(&inner)?;
        let msg = format!("{{\"type\":\"speed\",\"{field}\":{inner}}}");
        check_parse(&msg)?;
    }

    #[test]
    fn parse_refuses_every_message_over_the_limit_and_only_those(
        (m, text) in valid_message(),
        pad_len in prop_oneof![
            0usize..64,
            (MAX_MESSAGE_BYTES - 96)..(MAX_MESSAGE_BYTES + 32),
            (MAX_MESSAGE_BYTES + 32)..HARD_MAX_MESSAGE_BYTES,
        ],
        pad in prop::sample::select(vec![" ", "\t", "\n", "\r\n", "\u{a0}", "é", "\u{1f600}"]),
        before in any::<bool>(),
    ) {
        // Padding as JSON whitespace (valid) or, for non-whitespace, inside the text.
        let filler = pad.repeat(pad_len / pad.len().max(1) + 1);
        let filler = &filler[..boundary(&filler, pad_len)];
        let ws = filler.chars().all(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
        let padded = if before { format!("{filler}{text}") } else { format!("{text}{filler}") };
        let r = parse_checked(&padded)?;
        if padded.len() > MAX_MESSAGE_BYTES {
            prop_assert!(r.is_err(), "{} bytes accepted", padded.len());
        } else if ws {
            let got = r.map_err(|e| TestCaseError::fail(format!("{e} for {}", shown(&padded))))?;
            prop_assert!(close_to(&got, &m), "{:?} != {:?}", got, m);
        }
    }

    #[test]
    fn parse_survives_long_strings_anywhere(
        len in prop_oneof![0usize..64, 1000usize..HARD_MAX_MESSAGE_BYTES],
        c in prop::sample::select(vec!['x', '"', '\\', '\n', '\0', 'é', '\u{1f600}', '\u{2028}']),
        place in 0usize..4,
    ) {
        let long: String = std::iter::repeat_n(c, len).collect();
        let text = match place {
            // The raw string itself, a long `type`, a long unknown key, a long string value.
            0 => long,
            1 => format!("{{\"type\":{}}}", quoted(&long)),
            2 => format!("{{\"type\":\"play\",{}:1}}", quoted(&long)),
            _ => format!("{{\"type\":\"speed\",\"steps_per_second\":{}}}", quoted(&long)),
        };
        check_parse(&text)?;
    }

    #[test]
    fn parse_accepts_every_valid_message_exactly((m, text) in valid_message()) {
        let got = parse_checked(&text)?
            .map_err(|e| TestCaseError::fail(format!("{e} for {text}")))?;
        prop_assert!(close_to(&got, &m), "{:?} != {:?} from {}", got, m, text);
    }

    #[test]
    fn parse_checks_ranges_with_arbitrary_numbers(
        kind in prop::sample::select(vec!["speed", "erase", "interpolate", "batch", "model", "new_latents"]),
        a in number_text(),
        b in number_text(),
    ) {
        let text = match kind {
            "speed" => format!("{{\"type\":\"speed\",\"steps_per_second\":{a}}}"),
            "erase" => format!("{{\"type\":\"erase\",\"sample\":0,\"x\":{a},\"y\":3,\"radius\":{b}}}"),
            "interpolate" => format!("{{\"type\":\"interpolate\",\"t\":{a}}}"),
            "batch" => format!("{{\"type\":\"batch\",\"n\":{a}}}"),
            "model" => format!("{{\"type\":\"model\",\"index\":{a}}}"),
            _ => format!("{{\"type\":\"new_latents\",\"seed\":{a}}}"),
        };
        check_parse(&text)?;
    }
}

// ---------------------------------------------------------------------------------------
// Strategies and properties of frames.

/// Any header whose pixel count stays small: small dimensions, or one of them zero and
/// the others anything.
fn header() -> impl Strategy<Value = FrameHeader> {
    let dims = prop_oneof![
        3 => (0u8..4, 0u16..5, 0u16..12),
        1 => (Just(0u8), any::<u16>(), any::<u16>()),
        1 => (any::<u8>(), Just(0u16), any::<u16>()),
        1 => (any::<u8>(), any::<u16>(), Just(0u16)),
    ];
    (dims, any::<u16>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |((channels, n, size), grid, generation, step, flags)| FrameHeader {
            channels,
            n,
            size,
            grid,
            generation,
            step,
            flags,
        },
    )
}

fn frame() -> impl Strategy<Value = (FrameHeader, Vec<u8>)> {
    header().prop_flat_map(|h| (Just(h), prop::collection::vec(any::<u8>(), h.pixel_bytes())))
}

/// Decodes `bytes` (which must not panic); what is accepted re-encodes to the same bytes.
fn check_decode(bytes: &[u8]) -> Result<Option<FrameHeader>, TestCaseError> {
    let r = std::panic::catch_unwind(|| decode_frame(bytes).map(|(h, px)| (h, px.to_vec())))
        .map_err(|_| TestCaseError::fail(format!("panicked on {} bytes", bytes.len())))?;
    match r {
        Ok((h, px)) => {
            prop_assert!(bytes.len() >= HEADER_BYTES);
            prop_assert_eq!(&bytes[..4], &MAGIC[..]);
            prop_assert_eq!(bytes[4], VERSION);
            prop_assert_eq!(px.len(), h.pixel_bytes());
            prop_assert_eq!(px.len(), bytes.len() - HEADER_BYTES);
            prop_assert!(encode_frame(&h, &px) == bytes, "re-encodes differently");
            Ok(Some(h))
        }
        Err(e) => {
            check_error(&e, "<frame>")?;
            Ok(None)
        }
    }
}

#[derive(Clone, Debug)]
enum FrameEdit {
    Set(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
    /// Overwrite one of the little-endian u16 dimension fields (n, size, grid).
    Dim(usize, u16),
}

fn frame_edit() -> impl Strategy<Value = FrameEdit> {
    prop_oneof![
        3 => (0usize..HEADER_BYTES + 8, any::<u8>()).prop_map(|(i, b)| FrameEdit::Set(i, b)),
        2 => any::<usize>().prop_map(FrameEdit::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..8).prop_map(FrameEdit::Extend),
        2 => (0usize..3, any::<u16>()).prop_map(|(i, v)| FrameEdit::Dim(i, v)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frames_round_trip((h, px) in frame()) {
        let bytes = encode_frame(&h, &px);
        prop_assert_eq!(bytes.len(), HEADER_BYTES + px.len());
        let (h2, px2) = decode_frame(&bytes)
            .map_err(|e| TestCaseError::fail(format!("{e} for {h:?}")))?;
        prop_assert_eq!(h2, h);
        prop_assert_eq!(px2, &px[..]);
        prop_assert_eq!(check_decode(&bytes)?, Some(h));
        // One byte more or less is refused.
        prop_assert_eq!(check_decode(&bytes[..bytes.len() - 1])?, None);
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert_eq!(check_decode(&longer)?, None);
    }

    #[test]
    fn decode_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_decode(&bytes)?;
    }

    #[test]
    fn decode_survives_arbitrary_headers_after_the_magic(
        rest in prop::collection::vec(any::<u8>(), 0..(HEADER_BYTES + 64)),
        version in prop_oneof![3 => Just(VERSION), 1 => any::<u8>()],
    ) {
        let mut bytes = MAGIC.to_vec();
        bytes.push(version);
        bytes.extend_from_slice(&rest);
        check_decode(&bytes)?;
    }

    #[test]
    fn decode_survives_edited_frames(
        (h, px) in frame(),
        edits in prop::collection::vec(frame_edit(), 1..4),
    ) {
        let mut bytes = encode_frame(&h, &px);
        for e in edits {
            match e {
                FrameEdit::Set(i, b) => {
                    if let Some(x) = bytes.get_mut(i) {
                        *x = b;
                    }
                }
                FrameEdit::Truncate(n) => bytes.truncate(n % (bytes.len() + 1)),
                FrameEdit::Extend(more) => bytes.extend(more),
                FrameEdit::Dim(i, v) => {
                    let at = 6 + 2 * i;
                    if bytes.len() >= at + 2 {
                        bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        check_decode(&bytes)?;
    }
}

/// The message-shaped generator is not vacuous: it reaches every kind of message, and
/// both acceptance and the parser's different refusals.
#[test]
fn message_shaped_text_reaches_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = message_text();
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    let reasons = [
        "not valid JSON",
        "must have a `type`",
        "`type` must be a string",
        "unknown message type",
        "unknown field",
        "needs the field",
        "must be a finite number",
        "must be in",
        "must be a non-negative integer",
        "must be at least 1",
    ];
    let mut refusals = std::collections::BTreeMap::<&str, usize>::new();
    let total = 4000;
    for _ in 0..total {
        let text = strategy.new_tree(&mut runner).unwrap().current();
        match parse_client_message(&text) {
            Ok(m) => *kinds.entry(kind_of(&m)).or_default() += 1,
            Err(e) => {
                let reason = reasons
                    .iter()
                    .find(|r| e.0.contains(*r))
                    .unwrap_or(&"other");
                *refusals.entry(reason).or_default() += 1;
            }
        }
    }
    let accepted: usize = kinds.values().sum();
    eprintln!("accepted {accepted} of {total}: {kinds:?}\nrefused: {refusals:?}");
    assert_eq!(kinds.len(), TYPES.len(), "kinds accepted: {kinds:?}");
    assert!(
        accepted * 20 >= total,
        "only {accepted} of {total} accepted"
    );
    for r in reasons {
        assert!(
            refusals.contains_key(r),
            "never refused with `{r}`: {refusals:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Cases the properties found, kept as plain tests.

#[test]
fn names_echoed_in_errors_stay_on_one_line() {
    for text in [
        "{\"type\":\"play\",\"a\\nb\":1}",
        "{\"type\":\"pl\\r\\nay\"}",
        "{\"type\":\"\\u2028\"}",
        "{\"type\":\"erase\",\"\\u0000\":1}",
    ] {
        let e = parse_client_message(text).unwrap_err();
        assert!(
            !e.0.chars()
                .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')),
            "{:?} for {text}",
            e.0
        );
    }
}

#[test]
fn out_of_range_numbers_are_shown_short() {
    for text in [
        r#"{"type":"speed","steps_per_second":1e308}"#,
        r#"{"type":"speed","steps_per_second":-1.7976931348623157e308}"#,
        r#"{"type":"speed","steps_per_second":1e-300}"#,
        r#"{"type":"interpolate","t":-5e-324}"#,
        r#"{"type":"erase","sample":0,"x":1,"y":1,"radius":1e300}"#,
        r#"{"type":"erase","sample":0,"x":1,"y":1,"radius":-1e-300}"#,
    ] {
        let e = parse_client_message(text).unwrap_err();
        assert!(e.0.len() <= MAX_ERROR_CHARS, "{} bytes: {}", e.0.len(), e.0);
        assert!(e.0.contains("must be in"), "{}", e.0);
    }
    // Ordinary values are still shown as written.
    let e = parse_client_message(r#"{"type":"speed","steps_per_second":0.25}"#).unwrap_err();
    assert!(e.0.ends_with("got 0.25"), "{}", e.0);
}
