//! A loopback relay between llama.cpp's RPC client and one remote `rpc-server`, so that a
//! server that cannot be reached or goes away is an error pardec reports instead of the end
//! of the host process.
//!
//! Why it exists: ggml-rpc's client calls `GGML_ABORT` when it cannot connect, when the
//! handshake fails, and on any failed send or receive, and it does those on its own dispatcher
//! thread, where no exception handler or abort callback can turn them into an error. Its
//! `send()` also raises SIGPIPE on a closed socket, which kills a C host that did not ignore
//! it. So llama.cpp is pointed at this relay on 127.0.0.1 instead, which
//! - greets the server itself before llama.cpp sees it (a server that is down or speaks
//!   another protocol version is refused by [`Relay::make_ready`] with the reason);
//! - then passes every message through unchanged;
//! - and once the server is gone, keeps answering llama.cpp's client with well-formed
//!   made-up answers (`wire::made_up_answer`) while counting the loss, which the model checks
//!   after every decode (`super::RemoteLink::check`): the decode's result is discarded and
//!   the session stops with the text so far.
//!
//! One relay serves one server for the life of the process (llama.cpp caches its devices and
//! buffer types by endpoint, so the relay's endpoint must keep meaning the same server); it
//! costs a listening socket and one thread, plus a thread per connection llama.cpp opens.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::socket::{prepare, send_all};
use super::wire::{self, Answer};

/// How long connecting to a server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server may take to answer the handshake. `rpc-server` serves one client at a
/// time, so a server busy with another client does not answer at all.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests up to this size are read whole and sent in one write; larger ones (tensor data,
/// graphs) are streamed through in pieces of this size.
const PIECE: usize = 256 * 1024;

/// Every relay of the process, by the server endpoint it relays to.
static RELAYS: Lazy<Mutex<Vec<Arc<Relay>>>> = Lazy::new(|| Mutex::new(Vec::new()));

/// The relay to `server` ("host:port"), started on first use.
pub(crate) fn relay_for(server: &str) -> Result<Arc<Relay>, String> {
    let mut relays = RELAYS.lock();
    if let Some(relay) = relays.iter().find(|r| r.shared.server == server) {
        return Ok(relay.clone());
    }
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("cannot open the local relay socket: {e}"))?;
    let local = listener.local_addr().map_err(|e| format!("cannot read the local relay socket's address: {e}"))?;
    let shared = Arc::new(Shared {
        server: server.to_string(),
        losses: AtomicU64::new(0),
        last_loss: Mutex::new(String::new()),
        live: AtomicUsize::new(0),
        live_with_server: AtomicUsize::new(0),
        greeted: Mutex::new(None),
    });
    let accepting = shared.clone();
    std::thread::Builder::new()
        .name(format!("pardec-rpc-relay {server}"))
        .spawn(move || accept_loop(listener, accepting))
        .map_err(|e| format!("cannot start the relay thread: {e}"))?;
    let relay = Arc::new(Relay { local: local.to_string(), shared });
    relays.push(relay.clone());
    Ok(relay)
}

/// The relay of one server.
pub(crate) struct Relay {
    /// "127.0.0.1:port": the endpoint llama.cpp is given.
    local: String,
    shared: Arc<Shared>,
}

struct Shared {
    /// The server, as the caller named it.
    server: String,
    /// Connections to the server lost so far (or that could not be made for a client).
    losses: AtomicU64,
    /// Why the last one was lost.
    last_loss: Mutex<String>,
    /// Connections from llama.cpp open now, and how many of them still reach the server.
    live: AtomicUsize,
    live_with_server: AtomicUsize,
    /// A connection already greeted by `make_ready`, for the next connection from llama.cpp.
    greeted: Mutex<Option<Greeted>>,
}

/// A connection to the server after a successful handshake.
struct Greeted {
    stream: TcpStream,
    version: [u8; 3],
}

impl Relay {
    /// The endpoint to give llama.cpp.
    pub(crate) fn local_endpoint(&self) -> &str {
        &self.local
    }

    /// The server this relays to.
    pub(crate) fn server(&self) -> &str {
        &self.shared.server
    }

    /// Connections to the server lost so far: a model compares it with the count at its load.
    pub(crate) fn losses(&self) -> u64 {
        self.shared.losses.load(Ordering::SeqCst)
    }

    /// Why the last connection was lost.
    pub(crate) fn last_loss(&self) -> String {
        self.shared.last_loss.lock().clone()
    }

    /// Makes sure llama.cpp's next use of the server will reach it: a connection llama.cpp
    /// holds still reaches it, or a new one is made and greeted now (and kept for llama.cpp).
    /// Errors say why not: unreachable, no handshake answer, another protocol version.
    pub(crate) fn make_ready(&self) -> Result<(), String> {
        let shared = &self.shared;
        if shared.live.load(Ordering::SeqCst) > 0 {
            // llama.cpp shares one connection per endpoint between models.
            return if shared.live_with_server.load(Ordering::SeqCst) > 0 {
                Ok(())
            } else {
                Err(format!(
                    "the connection to {} was lost earlier ({}) and a model loaded through it is \
                     still alive: free it first",
                    shared.server,
                    self.last_loss()
                ))
            };
        }
        let mut greeted = shared.greeted.lock();
        if greeted.is_none() {
            *greeted = Some(connect_and_greet(&shared.server)?);
        }
        Ok(())
    }
}

impl Shared {
    fn lose(&self, why: String) {
        *self.last_loss.lock() = why;
        self.losses.fetch_add(1, Ordering::SeqCst);
    }
}

/// Connects to `server` and performs the HELLO handshake as llama.cpp's client would.
fn connect_and_greet(server: &str) -> Result<Greeted, String> {
    let addrs: Vec<SocketAddr> =
        server.to_socket_addrs().map_err(|e| format!("cannot resolve RPC server {server}: {e}"))?.collect();
    let mut last_error = None;
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        format!(
            "cannot connect to RPC server {server}: {} (is `pardec rpc-server` running there?)",
            last_error.map_or_else(|| "no address".to_string(), |e| e.to_string())
        )
    })?;
    prepare(&stream)
        .and_then(|()| super::socket::detect_dead_peer(&stream))
        .map_err(|e| format!("cannot set up the connection to {server}: {e}"))?;
    let failed = |e: io::Error| {
        if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            format!(
                "RPC server {server} did not answer the handshake within {} s (it serves one \
                 client at a time: is another process using it?)",
                HELLO_TIMEOUT.as_secs()
            )
        } else {
            format!("handshake with RPC server {server} failed: {e}")
        }
    };
    stream.set_read_timeout(Some(HELLO_TIMEOUT)).map_err(failed)?;
    send_all(&stream, &wire::hello_request()).map_err(failed)?;
    let mut size = [0u8; 8];
    stream.read_exact(&mut size).map_err(failed)?;
    if u64::from_le_bytes(size) != wire::HELLO_RESPONSE_SIZE as u64 {
        return Err(format!(
            "{server} answered the handshake with a message of another size: not an RPC server of this version"
        ));
    }
    let mut hello = [0u8; wire::HELLO_RESPONSE_SIZE];
    stream.read_exact(&mut hello).map_err(failed)?;
    let version = [hello[0], hello[1], hello[2]];
    if !wire::client_accepts(version) {
        return Err(format!(
            "RPC server {server} speaks protocol {}.{}.{}; this build's client needs {}.x with x <= {}",
            version[0],
            version[1],
            version[2],
            wire::PROTO_MAJOR,
            wire::PROTO_MINOR
        ));
    }
    stream.set_read_timeout(answer_timeout()).map_err(failed)?;
    Ok(Greeted { stream, version })
}

/// How long a server may take to answer a request (`PARDEC_RPC_TIMEOUT_S`, read when a
/// connection is made; unset or 0: as long as it takes). A server that takes longer is lost,
/// as one that closed the connection: for a server process that hangs while its machine stays
/// up, which TCP keepalive cannot see. Off by default because one answer covers a whole
/// graph (a long prompt on a slow server can take minutes).
fn answer_timeout() -> Option<Duration> {
    let seconds: f64 = std::env::var("PARDEC_RPC_TIMEOUT_S").ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds > 0.0).then(|| Duration::from_secs_f64(seconds.min(1e9)))
}

/// A read from the server, with a timeout said as one.
fn read_answer(up: &TcpStream, bytes: &mut [u8]) -> io::Result<()> {
    read_exact(up, bytes).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no answer within {:.0} s (PARDEC_RPC_TIMEOUT_S): the server is hung or overloaded",
                answer_timeout().unwrap_or_default().as_secs_f64()
            ),
        ),
        _ => e,
    })
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        // Only llama.cpp in this process is meant to connect; the socket is bound to loopback.
        let spawned = client.try_clone().map(|own| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("pardec-rpc-relay-conn".to_string())
                .spawn(move || serve_client(own, &shared))
        });
        if !matches!(spawned, Ok(Ok(_))) {
            // No thread for it: serve it here rather than drop it, which llama.cpp's client
            // would take for a failed handshake and abort on. llama.cpp holds one connection
            // per endpoint at a time, so the next waits only for this one to close.
            serve_client(client, &shared);
        }
    }
}

/// Which side of the relay an I/O error came from.
enum Failure {
    Client,
    Server(io::Error),
}

/// The client side failed or closed: the connection ends.
struct ClientGone;

/// Records that the server of this connection is gone. This happens before llama.cpp gets
/// the made-up answer, so the decode it is part of is already known to be lost when it ends.
fn lose_server(server: &mut Option<TcpStream>, shared: &Shared, e: io::Error) {
    if server.take().is_some() {
        shared.live_with_server.fetch_sub(1, Ordering::SeqCst);
    }
    shared.lose(format!("connection to RPC server {} lost: {e}", shared.server));
}

/// Relays one connection from llama.cpp until llama.cpp closes it.
fn serve_client(client: TcpStream, shared: &Shared) {
    if prepare(&client).is_err() {
        return;
    }
    shared.live.fetch_add(1, Ordering::SeqCst);
    let greeted = shared.greeted.lock().take();
    let greeted = match greeted {
        Some(g) => Ok(g),
        None => connect_and_greet(&shared.server),
    };
    let (mut server, version) = match greeted {
        Ok(g) => (Some(g.stream), g.version),
        Err(why) => {
            shared.lose(why);
            (None, [wire::PROTO_MAJOR, wire::PROTO_MINOR, 0])
        }
    };
    if server.is_some() {
        shared.live_with_server.fetch_add(1, Ordering::SeqCst);
    }
    let mut buffer = vec![0u8; PIECE];
    while relay_one(&client, &mut server, shared, version, &mut buffer).is_ok() {}
    if server.is_some() {
        shared.live_with_server.fetch_sub(1, Ordering::SeqCst);
    }
    shared.live.fetch_sub(1, Ordering::SeqCst);
}

/// Relays one request and its answer. A server failure is recorded and the exchange with
/// llama.cpp still completed (the rest of the request read, the answer made up).
fn relay_one(
    client: &TcpStream,
    server: &mut Option<TcpStream>,
    shared: &Shared,
    version: [u8; 3],
    buffer: &mut [u8],
) -> Result<(), ClientGone> {
    let client_gone = |_| ClientGone;
    let mut header = [0u8; wire::REQUEST_HEADER_SIZE];
    read_exact(client, &mut header).map_err(client_gone)?;
    let cmd = header[0];
    let size = u64::from_le_bytes(header[1..].try_into().expect("8 bytes"));
    if cmd == wire::CMD_HELLO {
        // The relay greeted the server already; llama.cpp gets the server's version.
        drain(client, size, buffer).map_err(client_gone)?;
        return send_answer(client, &wire::hello_answer(version)).map_err(client_gone);
    }
    if cmd >= wire::CMD_COUNT {
        // Not this protocol version's client: close, as rpc-server does.
        return Err(ClientGone);
    }
    let small = size <= PIECE as u64;
    let mut request = Vec::new();
    if small {
        request.reserve(header.len() + size as usize);
        request.extend_from_slice(&header);
        request.resize(header.len() + size as usize, 0);
        read_exact(client, &mut request[header.len()..]).map_err(client_gone)?;
    }
    let tail_len = wire::tail_needed(cmd);
    let tail = if small && tail_len as u64 <= size { &request[request.len() - tail_len..] } else { &[][..] };
    let Some(answer) = wire::answer(cmd, tail) else {
        return Err(ClientGone);
    };
    if let Some(up) = server.as_ref() {
        let sent = if small {
            send_all(up, &request).map_err(Failure::Server)
        } else {
            stream_request(client, up, &header, size, buffer)
        };
        match sent {
            Ok(()) => {}
            Err(Failure::Client) => return Err(ClientGone),
            Err(Failure::Server(e)) => lose_server(server, shared, e),
        }
    } else if !small {
        drain(client, size, buffer).map_err(client_gone)?;
    }
    if let Answer::Bytes(len) = answer {
        let mut answered = 0;
        if let Some(up) = server.as_ref() {
            match relay_answer(up, client, len, buffer, &mut answered) {
                Ok(()) => {}
                Err(Failure::Client) => return Err(ClientGone),
                Err(Failure::Server(e)) => lose_server(server, shared, e),
            }
        }
        if answered == 0 {
            send_made_up(client, cmd, len, buffer).map_err(client_gone)?;
        } else if answered < len + 8 {
            // Part of the server's answer went out: complete it with zeros.
            write_zeros(client, len + 8 - answered, buffer).map_err(client_gone)?;
        }
    }
    Ok(())
}

/// Sends a large request on to the server while reading it from llama.cpp. If the server
/// fails midway, the rest is still read (and dropped) so the client's stream stays framed.
fn stream_request(
    client: &TcpStream,
    up: &TcpStream,
    header: &[u8],
    size: u64,
    buffer: &mut [u8],
) -> Result<(), Failure> {
    let mut failure = send_all(up, header).err();
    let mut left = size;
    while left > 0 {
        let n = left.min(buffer.len() as u64) as usize;
        read_exact(client, &mut buffer[..n]).map_err(|_| Failure::Client)?;
        if failure.is_none() {
            failure = send_all(up, &buffer[..n]).err();
        }
        left -= n as u64;
    }
    failure.map_or(Ok(()), |e| Err(Failure::Server(e)))
}

/// Passes the server's answer of `len` bytes to llama.cpp, counting in `answered` what went
/// out (the 8-byte size included), so a failure midway can be completed.
fn relay_answer(
    up: &TcpStream,
    client: &TcpStream,
    len: u64,
    buffer: &mut [u8],
    answered: &mut u64,
) -> Result<(), Failure> {
    let mut size = [0u8; 8];
    read_answer(up, &mut size).map_err(Failure::Server)?;
    if u64::from_le_bytes(size) != len {
        return Err(Failure::Server(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the server answered with {} bytes where {len} were expected", u64::from_le_bytes(size)),
        )));
    }
    send_all(client, &size).map_err(|_| Failure::Client)?;
    *answered = 8;
    let mut left = len;
    while left > 0 {
        let n = left.min(buffer.len() as u64) as usize;
        read_answer(up, &mut buffer[..n]).map_err(Failure::Server)?;
        send_all(client, &buffer[..n]).map_err(|_| Failure::Client)?;
        *answered += n as u64;
        left -= n as u64;
    }
    Ok(())
}

fn send_answer(client: &TcpStream, payload: &[u8]) -> io::Result<()> {
    let mut message = Vec::with_capacity(8 + payload.len());
    message.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    message.extend_from_slice(payload);
    send_all(client, &message)
}

fn send_made_up(client: &TcpStream, cmd: u8, len: u64, buffer: &mut [u8]) -> io::Result<()> {
    if len <= 16 {
        return send_answer(client, &wire::made_up_answer(cmd, len as usize));
    }
    send_all(client, &len.to_le_bytes())?;
    write_zeros(client, len, buffer)
}

fn write_zeros(client: &TcpStream, mut len: u64, buffer: &mut [u8]) -> io::Result<()> {
    buffer.fill(0);
    while len > 0 {
        let n = len.min(buffer.len() as u64) as usize;
        send_all(client, &buffer[..n])?;
        len -= n as u64;
    }
    Ok(())
}

fn drain(client: &TcpStream, mut len: u64, buffer: &mut [u8]) -> io::Result<()> {
    while len > 0 {
        let n = len.min(buffer.len() as u64) as usize;
        read_exact(client, &mut buffer[..n])?;
        len -= n as u64;
    }
    Ok(())
}

fn read_exact(mut stream: &TcpStream, bytes: &mut [u8]) -> io::Result<()> {
    stream.read_exact(bytes)
}
