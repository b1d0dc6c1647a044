//! `pardec rpc-server`: this machine served to pardec clients over llama.cpp's RPC protocol.

use crate::args::RpcServerArgs;
use crate::error::CliResult;
use crate::output::out;

pub(crate) fn cmd_rpc_server(a: &RpcServerArgs) -> CliResult<()> {
    // A client that goes away mid-answer must not end the server: writes then fail with
    // EPIPE, and ggml-rpc drops that client and accepts the next.
    #[cfg(unix)]
    // SAFETY: setting the disposition of a signal, before the server's threads start.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let threads = match a.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let endpoint = format!("{}:{}", a.host, a.port);
    out::flush();
    match pardec::rpc::serve(&endpoint, threads, a.cache.as_deref())? {}
}
