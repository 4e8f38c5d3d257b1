//! HTTP and WebSocket: `GET /` the page, `GET /healthz` "ok", `GET /ws` a session.
//!
//! Each WebSocket connection gets its own session thread (libtorch work never runs on the
//! async runtime); the connection task parses and validates messages and forwards them,
//! and writes what the session sends back. Sessions are capped by a semaphore: a client
//! beyond the cap gets an error message and a close with code 1013 (try again later).
use super::protocol::{parse_client_message, ClientMsg, ServerMsg, HARD_MAX_MESSAGE_BYTES};
use super::session::{self, Outgoing, SessionOptions};
use super::snapshot::ModelSnapshot;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The page, with its script and style inline (no external resources).
pub const PAGE: &str = include_str!("page.html");

/// Client messages queued for a busy session before further ones are refused.
const COMMAND_QUEUE: usize = 256;
/// Messages queued from a session to its connection (backpressure: a slow client slows
/// its own session down instead of growing a buffer).
const OUTGOING_QUEUE: usize = 4;
/// A client that accepts no message for this long is dropped (its session slot frees).
/// Not shorter: a client that reads, only slowly, takes data in bursts as its kernel
/// reopens the TCP receive window; behind a client reading 4 KiB a second one write
/// waited 30-33 s on loopback (tests/serve_load.rs), and 30 s used to drop it.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Kernel send buffer of each connection (Linux doubles it for bookkeeping); see `serve`.
const SEND_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub session: SessionOptions,
    /// Most sessions (WebSocket connections) at once.
    pub max_sessions: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            session: SessionOptions::default(),
            max_sessions: 16,
        }
    }
}

struct App {
    models: Arc<Vec<ModelSnapshot>>,
    opts: ServeOptions,
    sessions: Arc<Semaphore>,
    next_id: AtomicU64,
}

/// The routes, serving `models` (at least one).
pub fn router(models: Vec<ModelSnapshot>, opts: ServeOptions) -> anyhow::Result<Router> {
    anyhow::ensure!(!models.is_empty(), "no model to serve");
    anyhow::ensure!(opts.max_sessions >= 1, "max sessions must be at least 1");
    anyhow::ensure!(
        opts.session.max_batch >= 1 && opts.session.max_batch <= u16::MAX as usize,
        "max batch must be in [1, 65535]"
    );
    let app = Arc::new(App {
        models: Arc::new(models),
        sessions: Arc::new(Semaphore::new(opts.max_sessions)),
        opts,
        next_id: AtomicU64::new(1),
    });
    Ok(Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/ws", get(ws_handler))
        .with_state(app))
}

/// Serves `router` on `listener` until the future fails (it does not end by itself).
///
/// Every accepted connection gets a small kernel send buffer (`SEND_BUFFER_BYTES`)
/// instead of Linux's autotuned one (up to 4 MiB): behind a client that reads slower
/// than the frames come, a 4 MiB buffer holds a thousand small frames, minutes of
/// stale pictures. With 64 KiB, the session's blocking send slows the simulation to
/// the client's pace after a few frames, so what the client sees stays recent.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        // Best effort: a socket that refuses the options still works, only less smoothly.
        let _ = tcp.set_nodelay(true);
        let sock = socket2::SockRef::from(&*tcp);
        let _ = sock.set_send_buffer_size(SEND_BUFFER_BYTES);
        let _ = sock.set_tcp_keepalive(&keepalive());
    });
    axum::serve(listener, router).await
}

/// TCP keepalive: a peer that vanishes without closing (a laptop that sleeps, a network
/// that drops) is noticed after about 60 + 6 x 10 s of silence, and its session slot
/// frees, also when its session is paused and nothing is being sent to it.
fn keepalive() -> socket2::TcpKeepalive {
    let t = socket2::TcpKeepalive::new().with_time(std::time::Duration::from_secs(60));
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
    let t = t
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(6);
    t
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// A browser always sends Origin on a WebSocket handshake: accept only our own page's
/// (so another web site open in the same browser cannot drive sessions here). Clients
/// that send no Origin (not browsers) are accepted.
fn origin_allowed(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

async fn ws_handler(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "WebSocket connections are accepted only from this server's own page",
        )
            .into_response();
    }
    let permit = app.sessions.clone().try_acquire_owned().ok();
    // `/ws?ack=1`: the client acks its frames (flow control, protocol.rs).
    let acks = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "ack=1"));
    ws.max_message_size(HARD_MAX_MESSAGE_BYTES)
        .max_frame_size(HARD_MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| connection(socket, app, permit, acks))
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

fn error_text(message: impl Into<String>) -> Message {
    Message::Text(ServerMsg::error(message).to_json().into())
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

async fn connection(
    socket: WebSocket,
    app: Arc<App>,
    permit: Option<OwnedSemaphorePermit>,
    acks: bool,
) {
    let (mut sink, mut stream) = socket.split();
    let Some(permit) = permit else {
        let max = app.opts.max_sessions;
        let _ = sink
            .send(error_text(format!(
                "the server is full: {max} sessions are open (its limit); close another tab and reload"
            )))
            .await;
        let _ = sink.send(close(close_code::AGAIN, "server full")).await;
        return;
    };
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Outgoing>(OUTGOING_QUEUE);
    let (cmd_tx, cmd_rx) = std::sync::mpsc::sync_channel::<ClientMsg>(COMMAND_QUEUE);
    let (models, opts, thread_out) = (app.models.clone(), app.opts.session.clone(), out_tx.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("vnca-session-{id}"))
        .spawn(move || {
            let _permit = permit; // the slot frees when the session ends
            let report = thread_out.clone();
            let run = std::panic::AssertUnwindSafe(|| {
                session::run(models, opts, acks, cmd_rx, thread_out);
            });
            if let Err(p) = std::panic::catch_unwind(run) {
                let msg = format!("internal error in the simulation: {}", panic_text(&*p));
                let _ = report.blocking_send(Outgoing::Text(ServerMsg::error(msg).to_json()));
                let _ = report
                    .blocking_send(Outgoing::Close(close_code::ERROR, "internal error".into()));
            }
        });
    if let Err(e) = spawned {
        let _ = sink
            .send(error_text(format!("cannot start a session: {e}")))
            .await;
        let _ = sink.send(close(close_code::ERROR, "no session")).await;
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(o) = out_rx.recv().await {
            let (msg, last) = match o {
                Outgoing::Text(t) => (Message::Text(t.into()), false),
                Outgoing::Binary(b) => (Message::Binary(b.into()), false),
                Outgoing::Close(code, reason) => (close(code, &reason), true),
            };
            // A client that stops reading for this long is dropped (its session ends).
            let sent = tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await;
            if !matches!(sent, Ok(Ok(()))) || last {
                break;
            }
        }
    });
    let reply = |text: String| {
        let out = out_tx.clone();
        async move {
            out.send(Outgoing::Text(ServerMsg::error(text).to_json()))
                .await
                .is_ok()
        }
    };
    while let Some(m) = stream.next().await {
        let parsed = match m {
            Ok(Message::Text(t)) => parse_client_message(t.as_str()).map_err(|e| e.0),
            Ok(Message::Binary(_)) => {
                Err("binary messages are not accepted: send JSON text messages".into())
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) => break,
            Err(e) => {
                // Too large for the WebSocket layer, or broken: the connection ends.
                reply(format!("connection closed: {e}")).await;
                break;
            }
        };
        let ok = match parsed {
            Ok(cmd) => match cmd_tx.try_send(cmd) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    reply("too many messages queued; this one was dropped".into()).await
                }
                Err(TrySendError::Disconnected(_)) => false,
            },
            Err(e) => reply(e).await,
        };
        if !ok {
            break;
        }
    }
    drop(cmd_tx); // the session thread sees the disconnect and ends
    drop(out_tx);
    let _ = writer.await;
}
