//! `vnca serve`: protocol validation, the simulation's erase brush, and the server end to
//! end over real sockets on 127.0.0.1 (page, WebSocket frames in order, erase, malformed
//! and oversized messages, the session cap, foreign origins, several clients at once).
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tch::Device;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use vnca::config::Config;
use vnca::model::Vnca;
use vnca::serve::protocol::{
    decode_frame, encode_frame, parse_client_message, ClientMsg, FrameHeader, ACK_WINDOW,
    FLAG_GROWING, MAX_MESSAGE_BYTES,
};
use vnca::serve::sim::Sim;
use vnca::serve::snapshot::growth_steps;
use vnca::serve::{self, ModelSnapshot, ServeOptions, SessionOptions};
use vnca::shipped::ModelSource;

// ---- helpers ---------------------------------------------------------------------------

/// The tiny preset with its zero-initialised output layer made small and random, so the
/// cells actually change from step to step (an untrained model's NCA is the identity).
fn tiny_model(seed: i64) -> (Vnca, Config) {
    let cfg = Config::preset("tiny-test").unwrap();
    let model = Vnca::new(&cfg.model, Device::Cpu, 0);
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for (_, mut t) in model.vs.variables() {
            if t.abs().max().double_value(&[]) == 0.0 {
                let r = t.randn_like() * 0.05;
                t.copy_(&r);
            }
        }
    });
    (model, cfg)
}

fn snapshot(name: &str, seed: i64) -> ModelSnapshot {
    let (model, cfg) = tiny_model(seed);
    ModelSnapshot::from_model(name, &model, &cfg)
}

/// Options for the protocol tests: an endless stream of frames, also after the growth
/// of these models, which were not trained to heal (by default they stop there).
fn options(max_sessions: usize, batch: usize) -> ServeOptions {
    ServeOptions {
        session: SessionOptions {
            default_batch: batch,
            max_batch: 16,
            default_speed: 60.0,
            run_past_growth: true,
            ..Default::default()
        },
        max_sessions,
    }
}

async fn start(models: Vec<ModelSnapshot>, opts: ServeOptions) -> SocketAddr {
    let router = serve::router(models, opts).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve::serve(listener, router));
    addr
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("websocket handshake")
        .0
}

#[derive(Debug)]
enum Got {
    Text(Value),
    Frame(FrameHeader, Vec<u8>),
    Closed(Option<u16>),
}

async fn next(ws: &mut Ws) -> Got {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message within 20 s");
        match m {
            None | Some(Err(_)) => return Got::Closed(None),
            Some(Ok(Message::Text(t))) => return Got::Text(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Binary(b))) => {
                let (h, px) = decode_frame(&b).expect("a well-formed frame");
                return Got::Frame(h, px.to_vec());
            }
            Some(Ok(Message::Close(c))) => return Got::Closed(c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => continue,
        }
    }
}

/// The next text message of type `kind`, skipping frames (panics on other texts).
async fn text_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        match next(ws).await {
            Got::Text(v) if v["type"] == kind => return v,
            Got::Text(v) => panic!("expected `{kind}`, got {v}"),
            Got::Frame(..) => continue,
            Got::Closed(c) => panic!("closed ({c:?}) while waiting for `{kind}`"),
        }
    }
}

/// The next frame, skipping status messages (panics on errors).
async fn frame(ws: &mut Ws) -> (FrameHeader, Vec<u8>) {
    loop {
        match next(ws).await {
            Got::Frame(h, p) => return (h, p),
            Got::Text(v) if v["type"] == "error" => panic!("error: {v}"),
            Got::Text(_) => continue,
            Got::Closed(c) => panic!("closed ({c:?}) while waiting for a frame"),
        }
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_string().into()))
        .await
        .unwrap();
}

/// Pause, and return once the pause took effect (later frames are edits or single steps).
async fn pause(ws: &mut Ws) {
    send(ws, r#"{"type":"pause"}"#).await;
    loop {
        let v = text_of(ws, "status").await;
        if v["playing"] == false {
            return;
        }
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text[9..12].parse().unwrap();
    (code, text)
}

// ---- protocol --------------------------------------------------------------------------

#[test]
fn valid_messages_parse() {
    let ok = [
        (r#"{"type":"play"}"#, ClientMsg::Play),
        (r#"{"type":"pause"}"#, ClientMsg::Pause),
        (r#"{"type":"step"}"#, ClientMsg::Step),
        (r#"{"type":"restart"}"#, ClientMsg::Restart),
        (r#"{"type":"ack"}"#, ClientMsg::Ack),
        (
            r#"{"type":"speed","steps_per_second":12.5}"#,
            ClientMsg::Speed(12.5),
        ),
        (
            r#"{"type":"erase","sample":3,"x":16,"y":15.5,"radius":4}"#,
            ClientMsg::Erase {
                sample: 3,
                x: 16.0,
                y: 15.5,
                radius: 4.0,
            },
        ),
        (r#"{"type":"new_latents"}"#, ClientMsg::NewLatents(None)),
        (
            r#"{"type":"new_latents","seed":7}"#,
            ClientMsg::NewLatents(Some(7)),
        ),
        (
            r#"{"type":"interpolate","t":0.25}"#,
            ClientMsg::Interpolate(0.25),
        ),
        (r#"{"type":"model","index":1}"#, ClientMsg::Model(1)),
        (r#"{"type":"batch","n":9}"#, ClientMsg::Batch(9)),
    ];
    for (text, want) in ok {
        assert_eq!(parse_client_message(text).unwrap(), want, "{text}");
    }
}

#[test]
fn malformed_and_oversized_messages_are_rejected_with_a_reason() {
    let big = format!(
        r#"{{"type":"play","pad":"{}"}}"#,
        "x".repeat(MAX_MESSAGE_BYTES)
    );
    let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
    let bad: Vec<(&str, &str)> = vec![
        ("", "not valid JSON"),
        ("hello", "not valid JSON"),
        ("{\"type\":\"play\"", "not valid JSON"),
        (&deep, "not valid JSON"),
        ("[1,2]", "JSON object"),
        ("42", "JSON object"),
        ("{}", "must have a `type`"),
        (r#"{"type":3}"#, "`type` must be a string"),
        (r#"{"type":"explode"}"#, "unknown message type"),
        (r#"{"type":"play","extra":1}"#, "unknown field `extra`"),
        (r#"{"type":"speed"}"#, "needs the field `steps_per_second`"),
        (
            r#"{"type":"speed","steps_per_second":"fast"}"#,
            "finite number",
        ),
        (r#"{"type":"speed","steps_per_second":0}"#, "must be in"),
        (r#"{"type":"speed","steps_per_second":1e9}"#, "must be in"),
        (
            r#"{"type":"speed","steps_per_second":1e999}"#,
            "not valid JSON",
        ),
        (
            r#"{"type":"erase","sample":-1,"x":1,"y":1,"radius":2}"#,
            "non-negative integer",
        ),
        (
            r#"{"type":"erase","sample":1.5,"x":1,"y":1,"radius":2}"#,
            "non-negative integer",
        ),
        (
            r#"{"type":"erase","sample":0,"x":1,"radius":2}"#,
            "needs the field `y`",
        ),
        (
            r#"{"type":"erase","sample":0,"x":null,"y":1,"radius":2}"#,
            "finite number",
        ),
        (
            r#"{"type":"erase","sample":0,"x":1,"y":1,"radius":0}"#,
            "`radius`",
        ),
        (
            r#"{"type":"erase","sample":0,"x":1,"y":1,"radius":1000}"#,
            "`radius`",
        ),
        (r#"{"type":"interpolate","t":1.5}"#, "must be in [0, 1]"),
        (r#"{"type":"interpolate","t":[0.5]}"#, "finite number"),
        (r#"{"type":"batch","n":0}"#, "at least 1"),
        (
            r#"{"type":"batch","n":99999999999999999999999}"#,
            "non-negative integer",
        ),
        (r#"{"type":"model","index":"0"}"#, "non-negative integer"),
        (
            r#"{"type":"new_latents","seed":-3}"#,
            "non-negative integer",
        ),
        (&big, "too large"),
    ];
    for (text, want) in bad {
        let e = parse_client_message(text).expect_err(&text[..text.len().min(80)]);
        assert!(
            e.0.contains(want),
            "`{}`: got `{}`, expected it to mention `{want}`",
            &text[..text.len().min(80)],
            e.0
        );
        assert!(e.0.len() < 300, "error messages stay short: {}", e.0);
    }
}

#[test]
fn frames_round_trip_and_truncated_frames_are_refused() {
    let h = FrameHeader {
        channels: 1,
        n: 2,
        size: 4,
        grid: 2,
        generation: 7,
        step: 123_456,
        flags: FLAG_GROWING,
    };
    let px: Vec<u8> = (0..32).collect();
    let bytes = encode_frame(&h, &px);
    assert_eq!(&bytes[..4], b"VNCA");
    let (h2, px2) = decode_frame(&bytes).unwrap();
    assert_eq!((h2, px2), (h, &px[..]));
    assert!(decode_frame(&bytes[..bytes.len() - 1]).is_err());
    assert!(decode_frame(&bytes[..10]).is_err());
    let mut wrong = bytes.clone();
    wrong[0] = b'X';
    assert!(decode_frame(&wrong).is_err());
}

// ---- the simulation ------------------------------------------------------------------

#[test]
fn sim_grows_on_schedule_and_the_brush_zeroes_only_its_cells() {
    let (model, cfg) = tiny_model(1);
    let mut sim = Sim::new(model, 2, 0);
    let f = sim.frame(true);
    assert_eq!((f.header.n, f.header.size, f.header.grid), (2, 32, 2));
    let mut grids = Vec::new();
    while sim.growing() {
        assert!(sim.advance());
        grids.push(sim.frame(true).header.grid);
    }
    assert_eq!(grids.len(), growth_steps(&cfg));
    assert_eq!(grids, [2, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32]);
    assert!(sim.advance(), "steps go on at full size");
    let before = sim.frame(false).pixels;
    // Radius 3 around the centre of the image: the cells whose centres are within 3 px.
    let erased = sim.erase(1, 16.0, 16.0, 3.0);
    assert!((24..=32).contains(&erased), "{erased} cells");
    let after = sim.frame(false).pixels;
    let plane = 32 * 32;
    assert_eq!(before[..plane], after[..plane], "sample 0 untouched");
    for y in 0..32 {
        for x in 0..32 {
            let (cx, cy) = (x as f64 + 0.5 - 16.0, y as f64 + 0.5 - 16.0);
            let p = plane + y * 32 + x;
            if cx * cx + cy * cy <= 9.0 {
                // A zero state renders as sigmoid(0) = 0.5.
                assert_eq!(after[p], 128, "erased cell ({x}, {y})");
            } else {
                assert_eq!(after[p], before[p], "cell ({x}, {y}) outside the brush");
            }
        }
    }
    // During growth the brush maps onto the centred, smaller grid.
    sim.restart();
    assert_eq!(sim.step_count(), 0);
    assert_eq!(
        sim.erase(0, 16.0, 16.0, 1.0),
        4,
        "the 2x2 seed: all four cells"
    );
    assert_eq!(
        sim.erase(0, 2.0, 2.0, 3.0),
        0,
        "a corner is outside the seed"
    );
    assert_eq!(sim.erase(5, 16.0, 16.0, 3.0), 0, "no such sample");
}

#[test]
fn sim_runs_the_non_doubling_decoder_on_the_full_grid() {
    let mut cfg = Config::preset("mnist-nondoubling-damage-small").unwrap();
    let m = &mut cfg.model;
    (m.z_dim, m.hidden, m.encoder_width, m.min_steps, m.max_steps) = (8, 16, 4, 3, 5);
    let model = Vnca::new(&cfg.model, Device::Cpu, 0);
    let snap = ModelSnapshot::from_model("nd", &model, &cfg);
    let info = snap.info();
    assert_eq!(
        (info.decoder, info.growth_steps, info.image_size),
        ("non-doubling", 5, 28)
    );
    let mut sim = Sim::new(snap.instantiate(Device::Cpu).unwrap(), 3, 0);
    for _ in 0..4 {
        assert!((3..=5).contains(&sim.growth_len()));
        let f = sim.frame(true);
        assert_eq!(
            (f.header.grid, f.header.size, f.pixels.len()),
            (28, 28, 3 * 28 * 28)
        );
        let mut n = 0;
        while sim.growing() {
            assert!(sim.advance());
            n += 1;
        }
        assert_eq!(n, sim.growth_len());
        assert_eq!(sim.erase(0, 14.0, 14.0, 2.0), 12);
        sim.restart();
    }
}

// ---- the server ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_page_offline_and_health() {
    let addr = start(vec![snapshot("m", 1)], options(4, 4)).await;
    let (code, text) = http_get(addr, "/").await;
    assert_eq!(code, 200);
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html"));
    assert!(lower.contains("content-security-policy"));
    let body = &text[text.find("\r\n\r\n").unwrap()..];
    assert!(body.contains("<canvas") && body.contains("/ws"));
    assert!(body.contains("not to heal or to persist"));
    assert!(body.contains("id=\"pad\""), "the drawing pad");
    for external in ["http://", "https://", "<link", "src=\"//", "@import"] {
        assert!(!body.contains(external), "the page refers to `{external}`");
    }
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(http_get(addr, "/nope").await.0, 404);
    // A plain GET on the WebSocket endpoint is refused, not a crash.
    let (code, _) = http_get(addr, "/ws").await;
    assert!((400..500).contains(&code), "{code}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_in_order_through_growth_and_after() {
    let addr = start(vec![snapshot("m", 1)], options(4, 3)).await;
    let mut ws = connect(addr).await;
    let hello = text_of(&mut ws, "hello").await;
    assert_eq!(hello["version"], 1);
    assert_eq!(hello["models"][0]["name"], "m");
    assert_eq!(hello["models"][0]["growth_steps"], 14);
    assert_eq!(hello["models"][0]["decoder"], "doubling");
    assert_eq!(hello["limits"]["max_message_bytes"], MAX_MESSAGE_BYTES);
    assert_eq!(hello["limits"]["max_batch"], 16);
    let status = text_of(&mut ws, "status").await;
    assert_eq!(status["playing"], true);
    assert_eq!(status["batch"], 3);
    let mut steps = Vec::new();
    let mut generation = None;
    while steps.len() < 25 {
        let (h, px) = frame(&mut ws).await;
        assert_eq!((h.n, h.size, h.channels), (3, 32, 1));
        assert_eq!(px.len(), 3 * 32 * 32);
        assert_eq!(*generation.get_or_insert(h.generation), h.generation);
        assert_eq!(h.flags & FLAG_GROWING != 0, (h.step as usize) < 14, "{h:?}");
        steps.push(h.step);
    }
    assert_eq!(
        steps,
        (0..25).collect::<Vec<u32>>(),
        "one frame per update, in order"
    );
    // A new growth is a new generation and starts again at the seed.
    send(&mut ws, r#"{"type":"new_latents","seed":3}"#).await;
    loop {
        let (h, _) = frame(&mut ws).await;
        if h.generation != generation.unwrap() {
            assert!(h.generation > generation.unwrap());
            assert!(h.step <= 1 && h.grid == 2, "{h:?}");
            break;
        }
    }
}

/// The next message within `wait`, or None.
async fn maybe_next(ws: &mut Ws, wait: Duration) -> Option<Got> {
    tokio::time::timeout(wait, next(ws)).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_acks_is_never_more_than_the_window_ahead() {
    let addr = start(vec![snapshot("m", 1)], options(4, 2)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?ack=1"))
        .await
        .unwrap();
    text_of(&mut ws, "hello").await;
    text_of(&mut ws, "status").await;
    // At 60 steps/s the session would send 30 frames in 0.5 s; without acks it stops
    // after ACK_WINDOW of them.
    let mut steps = Vec::new();
    while let Some(g) = maybe_next(&mut ws, Duration::from_millis(1500)).await {
        match g {
            Got::Frame(h, _) => steps.push(h.step),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(steps, (0..ACK_WINDOW as u32).collect::<Vec<_>>());
    // Each ack lets exactly one more frame out, the next step.
    for want in ACK_WINDOW as u32..ACK_WINDOW as u32 + 3 {
        send(&mut ws, r#"{"type":"ack"}"#).await;
        match next(&mut ws).await {
            Got::Frame(h, _) => assert_eq!(h.step, want),
            other => panic!("{other:?}"),
        }
        assert!(maybe_next(&mut ws, Duration::from_millis(300))
            .await
            .is_none());
    }
    // Commands still work while the window is full: pause answers with a status.
    send(&mut ws, r#"{"type":"pause"}"#).await;
    assert_eq!(text_of(&mut ws, "status").await["playing"], false);

    // A client that did not ask for flow control is not held back, and its acks are
    // ignored (no error reply, frames keep coming).
    let mut plain = connect(addr).await;
    text_of(&mut plain, "hello").await;
    send(&mut plain, r#"{"type":"ack"}"#).await;
    let mut frames = 0;
    while frames < 3 * ACK_WINDOW {
        match next(&mut plain).await {
            Got::Frame(..) => frames += 1,
            Got::Text(v) => assert_eq!(v["type"], "status", "{v}"),
            Got::Closed(c) => panic!("closed {c:?}"),
        }
    }
}

/// The server side of a connection to port `port` in /proc/net/tcp: its `tr:tm->when`
/// field (timer kind: 00 none, 01 retransmit, 02 keepalive, ...; jiffies left).
fn server_socket_timer(port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = f.get(1)?.rsplit(':').next()?;
        let established = f.get(3) == Some(&"01");
        (established && u16::from_str_radix(local_port, 16).ok()? == port).then(|| f[5].to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_have_tcp_keepalive() {
    // A vanished peer of a paused session sends and receives nothing; only keepalive
    // probes notice it. Its timer shows in the kernel's socket table once all is quiet.
    let addr = start(vec![snapshot("m", 1)], options(4, 1)).await;
    let mut ws = connect(addr).await;
    text_of(&mut ws, "hello").await;
    pause(&mut ws).await;
    let mut timer = None;
    for _ in 0..50 {
        timer = server_socket_timer(addr.port());
        if timer.as_deref().is_some_and(|t| t.starts_with("02:")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let timer = timer.expect("the server's socket in /proc/net/tcp");
    assert!(
        timer.starts_with("02:"),
        "no keepalive timer: tr:tm->when = {timer}"
    );
}

/// Reads frames until the growth is over, then pauses; returns the last frame.
async fn grown_and_paused(ws: &mut Ws) -> (FrameHeader, Vec<u8>) {
    text_of(ws, "hello").await;
    loop {
        let (h, _) = frame(ws).await;
        if h.flags & FLAG_GROWING == 0 {
            break;
        }
    }
    pause(ws).await;
    send(ws, r#"{"type":"step"}"#).await;
    frame(ws).await
}

fn region_diff(a: &[u8], b: &[u8], sample: usize, cx: f64, cy: f64, r: f64) -> (u64, u64) {
    let plane = 32 * 32;
    let (mut inside, mut outside) = (0u64, 0u64);
    for (i, (&p, &q)) in a.iter().zip(b).enumerate() {
        let (s, y, x) = (i / plane, (i % plane) / 32, i % 32);
        let d = (p as i64 - q as i64).unsigned_abs();
        let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
        if s == sample && dx * dx + dy * dy <= r * r {
            inside += d;
        } else {
            outside += d;
        }
    }
    (inside, outside)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_changes_the_frame_and_the_cells_go_on() {
    let addr = start(vec![snapshot("m", 2)], options(4, 4)).await;
    let mut ws = connect(addr).await;
    let (h0, before) = grown_and_paused(&mut ws).await;
    send(
        &mut ws,
        r#"{"type":"erase","sample":2,"x":16,"y":16,"radius":5}"#,
    )
    .await;
    let (h1, after) = frame(&mut ws).await;
    assert_eq!(
        (h1.step, h1.generation),
        (h0.step, h0.generation),
        "an edit shows at once, same step"
    );
    let (inside, outside) = region_diff(&before, &after, 2, 16.0, 16.0, 5.0);
    assert!(inside > 0, "the erased cells changed");
    assert_eq!(outside, 0, "nothing else changed");
    // The next steps run from the damaged state.
    send(&mut ws, r#"{"type":"play"}"#).await;
    let mut last = h1.step;
    for _ in 0..5 {
        let (h, _) = frame(&mut ws).await;
        assert!(h.step > last || (h.step == last && last == h1.step));
        last = h.step;
    }
    assert!(last > h1.step);
}

/// Sends each text and expects one error reply containing its phrase.
async fn expect_errors(ws: &mut Ws, cases: &[(&str, &str)]) {
    for (text, want) in cases {
        send(ws, text).await;
        let e = text_of(ws, "error").await;
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains(want),
            "{msg} (for {})",
            &text[..text.len().min(60)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_an_error_reply_and_the_session_goes_on() {
    let addr = start(vec![snapshot("m", 1)], options(4, 2)).await;
    let mut ws = connect(addr).await;
    text_of(&mut ws, "hello").await;
    pause(&mut ws).await;
    let too_big = format!(r#"{{"type":"play","pad":"{}"}}"#, "x".repeat(5000));
    let cases = [
        ("garbage", "not valid JSON"),
        (r#"{"type":"warp"}"#, "unknown message type"),
        (r#"{"type":"speed","steps_per_second":-1}"#, "must be in"),
        (too_big.as_str(), "too large"),
        // Session-dependent ranges.
        (
            r#"{"type":"erase","sample":7,"x":1,"y":1,"radius":2}"#,
            "out of range",
        ),
        (
            r#"{"type":"erase","sample":0,"x":99,"y":1,"radius":2}"#,
            "must be in [0, 32]",
        ),
        (r#"{"type":"model","index":3}"#, "out of range"),
        (r#"{"type":"batch","n":17}"#, "too large"),
    ];
    expect_errors(&mut ws, &cases).await;
    ws.send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    let e = text_of(&mut ws, "error").await;
    assert!(e["message"].as_str().unwrap().contains("binary"));
    // Still alive: a step gives a frame, a batch change gives frames of the new size.
    send(&mut ws, r#"{"type":"step"}"#).await;
    let (h, _) = frame(&mut ws).await;
    assert_eq!(h.n, 2);
    send(&mut ws, r#"{"type":"batch","n":5}"#).await;
    let (h, px) = frame(&mut ws).await;
    assert_eq!((h.n, px.len()), (5, 5 * 32 * 32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_message_closes_only_its_connection() {
    let addr = start(vec![snapshot("m", 1)], options(4, 2)).await;
    let mut ws = connect(addr).await;
    text_of(&mut ws, "hello").await;
    let huge = "x".repeat(200 * 1024);
    let _ = ws.send(Message::Text(huge.into())).await;
    let closed = loop {
        match next(&mut ws).await {
            Got::Closed(c) => break c,
            _ => continue,
        }
    };
    assert!(matches!(closed, None | Some(1009)), "{closed:?}");
    let mut again = connect(addr).await;
    text_of(&mut again, "hello").await;
    frame(&mut again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_clients_run_independent_sessions() {
    let addr = start(vec![snapshot("m", 1)], options(8, 2)).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut ws = connect(addr).await;
        text_of(&mut ws, "hello").await;
        clients.push(ws);
    }
    // Pausing one does not pause the others.
    pause(&mut clients[0]).await;
    let tasks: Vec<_> = clients
        .into_iter()
        .skip(1)
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut last = None;
                for _ in 0..10 {
                    let (h, _) = frame(&mut ws).await;
                    if let Some(l) = last {
                        assert!(h.step > l);
                    }
                    last = Some(h.step);
                }
                last.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap() >= 9);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_the_cap_get_a_clear_error_and_a_slot_frees_on_close() {
    let addr = start(vec![snapshot("m", 1)], options(2, 1)).await;
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    text_of(&mut a, "hello").await;
    text_of(&mut b, "hello").await;
    let mut c = connect(addr).await;
    let e = text_of(&mut c, "error").await;
    assert!(
        e["message"].as_str().unwrap().contains("server is full"),
        "{e}"
    );
    assert!(matches!(next(&mut c).await, Got::Closed(Some(1013))));
    a.close(None).await.unwrap();
    drop(a);
    // The slot frees once the session's thread has ended.
    let mut ok = false;
    for _ in 0..50 {
        let mut d = connect(addr).await;
        if let Got::Text(v) = next(&mut d).await {
            if v["type"] == "hello" {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a new client gets a session after one left");
    frame(&mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_are_refused_and_our_own_page_is_accepted() {
    let addr = start(vec![snapshot("m", 1)], options(4, 1)).await;
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "http://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", format!("http://{addr}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    text_of(&mut ws, "hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_models_and_interpolating_regrow() {
    let dir = tempfile::tempdir().unwrap();
    // One model through a checkpoint file, as `vnca serve --checkpoint` loads it.
    let (model, cfg) = tiny_model(4);
    let path = dir.path().join("best.safetensors");
    let meta = vnca::checkpoint::Meta {
        config: Some(cfg.to_toml()),
        state: None,
    };
    vnca::checkpoint::save(&path, &model, &Default::default(), &meta).unwrap();
    let mut models = serve::load_models(&[ModelSource::File(path)], Device::Cpu).unwrap();
    assert_eq!(
        models[0].name,
        dir.path().file_name().unwrap().to_string_lossy() + "/best"
    );
    models.push(snapshot("other", 5));
    let addr = start(models, options(4, 2)).await;
    let mut ws = connect(addr).await;
    let hello = text_of(&mut ws, "hello").await;
    assert_eq!(hello["models"].as_array().unwrap().len(), 2);
    let (h0, _) = frame(&mut ws).await;
    send(&mut ws, r#"{"type":"model","index":1}"#).await;
    loop {
        let s = text_of(&mut ws, "status").await;
        if s["model"] == 1 {
            assert!(s["generation"].as_u64().unwrap() > h0.generation as u64);
            break;
        }
    }
    frame(&mut ws).await;
    pause(&mut ws).await;
    send(&mut ws, r#"{"type":"interpolate","t":0}"#).await;
    let (_, a) = frame(&mut ws).await;
    send(&mut ws, r#"{"type":"interpolate","t":1}"#).await;
    let (hb, b) = frame(&mut ws).await;
    assert_eq!(hb.step, 0);
    assert_ne!(
        a, b,
        "the two ends of the interpolation are different latents"
    );
    send(&mut ws, r#"{"type":"interpolate","t":0}"#).await;
    let (_, a2) = frame(&mut ws).await;
    assert_eq!(a, a2, "t = 0 is z_a again");
}

#[test]
fn the_command_fails_clearly_without_a_checkpoint() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vnca"))
        .args([
            "serve",
            "--checkpoint",
            "/nonexistent/model.safetensors",
            "--port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && err.contains("/nonexistent/model.safetensors"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vnca"))
        .args(["serve", "--checkpoint", "x.safetensors", "--batch", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

// ---- growth's end, drawings, the slider's morph -------------------------------------------

/// A small non-doubling model with pool and damage training in its config: one that the
/// session treats as trained to heal.
fn healing_snapshot() -> ModelSnapshot {
    let mut cfg = Config::preset("mnist-nondoubling-damage-small").unwrap();
    let m = &mut cfg.model;
    (m.z_dim, m.hidden, m.encoder_width, m.min_steps, m.max_steps) = (8, 16, 4, 3, 5);
    assert!(cfg.train.pool.is_some());
    let model = Vnca::new(&cfg.model, Device::Cpu, 0);
    ModelSnapshot::from_model("healer", &model, &cfg)
}

/// Frames until the first one past growth; returns the statuses seen on the way.
async fn through_growth(ws: &mut Ws) -> Vec<Value> {
    let mut statuses = Vec::new();
    loop {
        match next(ws).await {
            Got::Frame(h, _) if h.flags & FLAG_GROWING == 0 => return statuses,
            Got::Frame(..) => {}
            Got::Text(v) if v["type"] == "status" => statuses.push(v),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_not_trained_to_heal_stops_after_growth_and_a_healer_runs_on() {
    let mut opts = options(4, 2);
    opts.session.run_past_growth = false; // the default
    let addr = start(vec![snapshot("grower", 1), healing_snapshot()], opts).await;
    let mut ws = connect(addr).await;
    let hello = text_of(&mut ws, "hello").await;
    assert_eq!(
        (&hello["models"][0]["heals"], &hello["models"][1]["heals"]),
        (&Value::Bool(false), &Value::Bool(true))
    );
    assert_eq!(
        hello["models"][0]["erased_rgb"],
        serde_json::json!([128, 128, 128])
    );
    let statuses = through_growth(&mut ws).await;
    let s = statuses.last().expect("a status as growth ends");
    assert_eq!(
        (s["playing"].as_bool(), s["phase"].as_str()),
        (Some(false), Some("grown"))
    );
    assert!(s["notice"].as_str().unwrap().contains("stops here"), "{s}");
    assert!(
        maybe_next(&mut ws, Duration::from_millis(500))
            .await
            .is_none(),
        "nothing more after growth"
    );
    // Step by hand past the training: allowed, and said.
    send(&mut ws, r#"{"type":"step"}"#).await;
    assert_eq!(text_of(&mut ws, "status").await["phase"], "past training");
    // The healer runs on by itself after its growth, in the phase "healing".
    send(&mut ws, r#"{"type":"model","index":1}"#).await;
    send(&mut ws, r#"{"type":"play"}"#).await;
    let mut last = loop {
        if let Got::Frame(h, _) = next(&mut ws).await {
            if h.n == 2 && h.size == 28 && h.flags & FLAG_GROWING == 0 {
                break h.step;
            }
        }
    };
    for _ in 0..5 {
        let (h, _) = frame(&mut ws).await;
        assert!(h.step > last);
        last = h.step;
    }
    send(&mut ws, r#"{"type":"pause"}"#).await;
    assert_eq!(text_of(&mut ws, "status").await["phase"], "healing");
}

/// A 28x28 drawing: a vertical bar (a "1"), grey levels.
fn bar() -> Vec<u8> {
    let mut px = vec![0u8; 28 * 28];
    for y in 4..24 {
        for x in 12..16 {
            px[y * 28 + x] = 255;
        }
    }
    px
}

fn draw_msg(size: usize, pixels: &[u8], extra: &str) -> String {
    format!(
        r#"{{"type":"draw","size":{size},"pixels":{}{extra}}}"#,
        serde_json::to_string(pixels).unwrap()
    )
}

#[test]
fn a_drawing_is_binarized_and_padded_as_the_training_data() {
    let (model, _) = tiny_model(1);
    let x = serve::drawing::model_input(&model, &bar(), 28).unwrap();
    assert_eq!(x.size(), [1, 1, 32, 32]);
    let v = vnca::checkpoint::to_f32_vec(&x);
    // Full ink binarizes to 1 (P = 255/255), background to 0; two rows and columns of
    // zero padding on each side (28 -> 32, as dataset::to_model_input pads MNIST).
    let at = |y: usize, x: usize| v[y * 32 + x];
    assert_eq!((at(10, 15), at(10, 10), at(0, 0)), (1.0, 0.0, 0.0));
    assert_eq!(v.iter().filter(|&&p| p == 1.0).count(), 20 * 4);
    assert!(serve::drawing::model_input(&model, &[0; 784], 28)
        .unwrap_err()
        .contains("empty"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drawing_grows_as_one_sample_and_bad_drawings_get_one_error_each() {
    let addr = start(vec![snapshot("m", 1)], options(4, 3)).await;
    let mut ws = connect(addr).await;
    let hello = text_of(&mut ws, "hello").await;
    assert_eq!(hello["models"][0]["draw_size"], 28);
    pause(&mut ws).await;
    let pad = format!(r#","pad":"{}""#, "x".repeat(2000));
    let too_big = draw_msg(28, &[255; 28 * 28], &pad);
    let cases = [
        (draw_msg(28, &[0; 784], ""), "empty"),
        (draw_msg(27, &[255; 27 * 27], ""), "takes 28x28"),
        (draw_msg(28, &[255; 10], ""), "784"),
        (
            r#"{"type":"draw","size":28,"pixels":[300]}"#.to_string(),
            "integers in [0, 255]",
        ),
        (
            draw_msg(28, &bar(), r#","test_digit":10000"#),
            "out of range",
        ),
        (
            draw_msg(28, &bar(), r#","z":"mode""#),
            "\"mean\" or \"sample\"",
        ),
        (too_big, "too large"),
    ];
    let cases: Vec<(&str, &str)> = cases.iter().map(|(t, w)| (t.as_str(), *w)).collect();
    expect_errors(&mut ws, &cases).await;
    // The session goes on: a good drawing becomes one sample growing from its seed, and
    // the slider's other end is the test digit asked for.
    let test = vnca::shipped::mnist_test().unwrap();
    send(&mut ws, &draw_msg(28, &bar(), r#","test_digit":7"#)).await;
    let s = text_of(&mut ws, "status").await;
    assert_eq!(
        (s["source"].as_str(), s["batch"].as_u64()),
        (Some("drawing"), Some(1))
    );
    assert_eq!(s["test_digit"]["index"], 7);
    assert_eq!(s["test_digit"]["label"], test.label(7).unwrap());
    let (h, px) = frame(&mut ws).await;
    assert_eq!((h.n, h.step, h.grid, px.len()), (1, 0, 2, 32 * 32));
    // The mean is deterministic: the same drawing grows the same seed.
    send(
        &mut ws,
        &draw_msg(28, &bar(), r#","test_digit":7,"z":"mean""#),
    )
    .await;
    // Frames of the first growth may still be in flight: the new growth starts at step 0.
    let px2 = loop {
        let (h2, p) = frame(&mut ws).await;
        if h2.step == 0 {
            break p;
        }
    };
    assert_eq!(px, px2);
    // New latents go back to samples of the prior.
    send(&mut ws, r#"{"type":"new_latents"}"#).await;
    let s = text_of(&mut ws, "status").await;
    assert_eq!(
        (s["source"].as_str(), s["batch"].as_u64()),
        (Some("prior"), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slider_morphs_finished_growths_instead_of_restarting_them() {
    let addr = start(vec![snapshot("m", 3)], options(4, 2)).await;
    let mut ws = connect(addr).await;
    let (h0, _) = grown_and_paused(&mut ws).await;
    let mut pictures = Vec::new();
    for t in ["0.5", "0.6", "0.5"] {
        send(&mut ws, &format!(r#"{{"type":"interpolate","t":{t}}}"#)).await;
        let (h, px) = frame(&mut ws).await;
        assert_eq!(
            (h.step, h.grid, h.flags & FLAG_GROWING),
            (14, 32, 0),
            "{h:?}"
        );
        assert!(h.generation > h0.generation);
        pictures.push(px);
    }
    assert_ne!(pictures[0], pictures[1], "the picture moves with t");
    assert_eq!(
        pictures[0], pictures[2],
        "and comes back with it (same noise)"
    );
}
