//! The relay's sockets: writes that fail instead of raising SIGPIPE, and connections to a
//! server that notice when its machine is gone.

use std::io;
use std::net::TcpStream;
use std::time::Duration;

/// Idle time on a connection to a server before the kernel probes whether its machine is
/// still there, the time between probes, and the probes missed before the connection is
/// given up: a server whose machine vanished (power, network) is lost within about 30 s
/// instead of a decode waiting forever. A server that is only slow still answers the probes
/// (its kernel does), so a long graph is never cut short.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: i32 = 3;
/// How long sent data may stay unacknowledged before the connection is given up (Linux):
/// the keepalive probes only run while nothing is in flight.
const UNACKNOWLEDGED_LIMIT: Duration = Duration::from_secs(30);

/// Small messages go out at once (llama.cpp's client waits for each answer), and on Apple
/// systems, which have no MSG_NOSIGNAL, writes to a closed socket do not raise SIGPIPE.
pub(super) fn prepare(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    set_int(stream, libc::SOL_SOCKET, libc::SO_NOSIGPIPE, 1)?;
    Ok(())
}

/// Turns on the kernel's dead-peer detection for a connection to a server.
pub(super) fn detect_dead_peer(stream: &TcpStream) -> io::Result<()> {
    #[cfg(unix)]
    {
        set_int(stream, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            set_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE.as_secs() as i32)?;
            set_int(stream, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, UNACKNOWLEDGED_LIMIT.as_millis() as i32)?;
        }
        #[cfg(any(target_os = "macos", target_os = "ios"))]
        set_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPALIVE, KEEPALIVE_IDLE.as_secs() as i32)?;
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "ios"))]
        {
            set_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_INTERVAL.as_secs() as i32)?;
            set_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES)?;
        }
    }
    let _ = (stream, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES, UNACKNOWLEDGED_LIMIT);
    Ok(())
}

#[cfg(unix)]
fn set_int(stream: &TcpStream, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a live socket and a c_int option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes all of `bytes` without raising SIGPIPE when the peer is gone (that signal would end
/// a C host that did not ignore it): an error is returned instead.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(super) fn send_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    while !bytes.is_empty() {
        // SAFETY: a live socket and a readable buffer of the given length.
        let n = unsafe { libc::send(stream.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// Writes all of `bytes` (Apple sockets were set up without SIGPIPE; Windows has none).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(super) fn send_all(mut stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    stream.write_all(bytes)
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    fn get_int(stream: &TcpStream, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a live socket and an out value of the size given.
        let r = unsafe {
            libc::getsockopt(stream.as_raw_fd(), level, name, (&mut value as *mut libc::c_int).cast(), &mut len)
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        value
    }

    #[test]
    fn server_connections_detect_a_vanished_peer_and_local_ones_do_not_wait() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(get_int(&stream, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0, "off before");
        prepare(&stream).unwrap();
        detect_dead_peer(&stream).unwrap();
        assert_ne!(get_int(&stream, libc::IPPROTO_TCP, libc::TCP_NODELAY), 0);
        assert_ne!(get_int(&stream, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
        assert_eq!(get_int(&stream, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 15);
        assert_eq!(get_int(&stream, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 5);
        assert_eq!(get_int(&stream, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
        assert_eq!(get_int(&stream, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 30_000);
    }

    #[test]
    fn a_write_to_a_closed_peer_is_an_error_not_a_signal() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        drop(listener.accept().unwrap());
        drop(listener);
        // Rust programs ignore SIGPIPE, a C host may not: with the default action restored, a
        // write that raised it would end this test process. The first writes may still be
        // taken by the kernel; the peer's reset makes a later one fail.
        // SAFETY: setting a signal's disposition; no other test here writes to a closed socket.
        let before = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let mut failed = false;
        for _ in 0..50 {
            if send_all(&stream, &[0u8; 4096]).is_err() {
                failed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: as above, restoring what was there.
        unsafe { libc::signal(libc::SIGPIPE, before) };
        assert!(failed, "writes to a closed peer kept succeeding");
    }
}
