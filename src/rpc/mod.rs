//! Models split over other machines with llama.cpp's RPC backend (ggml-rpc).
//!
//! A machine with memory to spare runs `pardec rpc-server` ([`serve`]); a model loaded with
//! [`ModelParams::rpc_servers`](crate::ModelParams) puts its layers on those servers the way
//! llama.cpp does (`--rpc` in its tools): the servers' devices go first in the model's device
//! list, any local GPU after them, and the layers are split between them in proportion to
//! their free memory (`n_gpu_layers` of them; all by default). The branches of a fork are
//! still one batch per step: every server computes its layers for all of them at once.
//!
//! llama.cpp is never pointed at a server directly but at a loopback relay (`relay.rs`),
//! because ggml-rpc ends the process on any network failure. The relay turns an unreachable
//! server into an error at load and a server lost mid-generation into [`Error::Rpc`] after
//! the step it broke, with the session's text so far kept.
//!
//! The backend is compiled in only when llama.cpp is built with `GGML_RPC=ON` (llama-cpp-sys-2
//! forwards `GGML_*` variables to CMake; see the `rpc` feature and `scripts/test-rpc.sh`).
//! Without it every call here is [`Error::Rpc`] saying so.

mod relay;
mod socket;
mod wire;

use std::convert::Infallible;
use std::ffi::{c_char, c_void, CStr, CString};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use llama_cpp_sys_2 as sys;

use crate::error::{Error, Result};
use relay::Relay;

/// `ggml_backend_rpc_add_server`: a registry holding the devices of one server.
type AddServer = unsafe extern "C" fn(endpoint: *const c_char) -> sys::ggml_backend_reg_t;
/// `ggml_backend_rpc_start_server`: serves `devices` until the process ends.
type StartServer = unsafe extern "C" fn(
    endpoint: *const c_char,
    cache_dir: *const c_char,
    n_threads: usize,
    n_devices: usize,
    devices: *mut sys::ggml_backend_dev_t,
);

/// Whether this build's llama.cpp has the RPC backend.
pub fn available() -> bool {
    rpc_registry().is_some()
}

/// Splits a `host:port,host:port` list, checking each entry. ggml-rpc splits an endpoint at its
/// first colon, so hosts are names or IPv4 addresses.
pub fn parse_servers(list: &str) -> Result<Vec<String>> {
    let servers: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
    for server in &servers {
        check_endpoint(server)?;
    }
    Ok(servers)
}

fn check_endpoint(server: &str) -> Result<()> {
    let bad = |why: &str| Error::InvalidArgument(format!("RPC server {server:?}: {why} (expected host:port)"));
    let (host, port) = server.split_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if port.contains(':') {
        return Err(bad("IPv6 addresses are not supported by ggml-rpc; use a host name"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("the port is not a number from 1 to 65535")),
    }
}

/// Serves this machine's devices to RPC clients on `endpoint` (`host:port`; use `127.0.0.1`
/// unless the network is trusted: the protocol has no authentication), with `threads` CPU
/// threads and, if given, a local cache of tensors in `cache_dir` (so a client's second load
/// of a model is not sent over the network again). It serves one client at a time and
/// returns only when it cannot start.
pub fn serve(endpoint: &str, threads: usize, cache_dir: Option<&Path>) -> Result<Infallible> {
    check_endpoint(endpoint)?;
    let start = rpc_function(c"ggml_backend_rpc_start_server")?;
    // SAFETY: ggml-rpc returns this function for this name, with the signature of ggml-rpc.h.
    let start: StartServer = unsafe { std::mem::transmute::<*mut c_void, StartServer>(start) };
    // ggml-rpc only prints a failure to listen: find it first to say what went wrong.
    drop(TcpListener::bind(endpoint).map_err(|e| Error::Rpc(format!("cannot listen on {endpoint}: {e}")))?);
    let mut devices = local_accelerators();
    if devices.is_empty() {
        // SAFETY: a read-only query of the registered devices.
        let cpu = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
        if cpu.is_null() {
            return Err(Error::Backend("llama.cpp has no CPU device".to_string()));
        }
        devices.push(cpu);
    }
    let c_endpoint =
        CString::new(endpoint).map_err(|_| Error::InvalidArgument("endpoint holds a NUL byte".to_string()))?;
    let c_cache = match cache_dir {
        Some(dir) => Some(
            crate::llama::path_cstring(dir)
                .ok_or_else(|| Error::InvalidArgument(format!("cache dir {} is not UTF-8", dir.display())))?,
        ),
        None => None,
    };
    // SAFETY: NUL-terminated strings and a device array that outlive the call (which only
    // returns if the server could not start).
    unsafe {
        start(
            c_endpoint.as_ptr(),
            c_cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            threads.max(1),
            devices.len(),
            devices.as_mut_ptr(),
        );
    }
    Err(Error::Rpc(format!("the RPC server on {endpoint} could not start")))
}

/// The link of one model to its servers: the devices llama.cpp places layers on, and the
/// relays whose losses mean the model's remote layers are gone.
pub(crate) struct RemoteLink {
    /// The model's devices in llama.cpp's order, NULL-terminated (`llama_model_params.devices`).
    devices: Vec<sys::ggml_backend_dev_t>,
    /// Each server's relay and its count of losses when the model was loaded.
    relays: Vec<(Arc<Relay>, u64)>,
}

// SAFETY: the device handles are process-wide ggml objects, never freed and safe to share;
// they are only read (passed to llama.cpp at load).
unsafe impl Send for RemoteLink {}
// SAFETY: as above.
unsafe impl Sync for RemoteLink {}

impl RemoteLink {
    /// Reaches every server (each is greeted before llama.cpp is given it) and lists the
    /// devices a model loaded over them uses.
    pub(crate) fn connect(servers: &[String]) -> Result<RemoteLink> {
        if servers.len() > MAX_SERVERS {
            return Err(Error::InvalidArgument(format!(
                "{} RPC servers named; ggml-rpc handles at most {MAX_SERVERS}",
                servers.len()
            )));
        }
        for server in servers {
            check_endpoint(server)?;
        }
        let add = rpc_function(c"ggml_backend_rpc_add_server")?;
        // SAFETY: ggml-rpc returns this function for this name, with the signature of ggml-rpc.h.
        let add: AddServer = unsafe { std::mem::transmute::<*mut c_void, AddServer>(add) };
        let mut devices = Vec::new();
        let mut relays = Vec::new();
        for server in servers {
            let relay = relay::relay_for(server).map_err(Error::Rpc)?;
            relay.make_ready().map_err(Error::Rpc)?;
            let losses = relay.losses();
            let endpoint = CString::new(relay.local_endpoint()).expect("an address has no NUL byte");
            // SAFETY: a NUL-terminated endpoint; the relay answers every message, so ggml-rpc's
            // client does not abort even if the server goes away now.
            let reg = unsafe { add(endpoint.as_ptr()) };
            if relay.losses() != losses {
                return Err(lost(&relay));
            }
            if reg.is_null() {
                return Err(Error::Rpc(format!("RPC server {server} has no devices")));
            }
            // SAFETY: a registry returned by ggml-rpc; its devices live for the process.
            unsafe {
                for i in 0..sys::ggml_backend_reg_dev_count(reg) {
                    devices.push(sys::ggml_backend_reg_dev_get(reg, i));
                }
            }
            relays.push((relay, losses));
        }
        devices.extend(local_accelerators());
        devices.push(std::ptr::null_mut());
        Ok(RemoteLink { devices, relays })
    }

    /// The NULL-terminated device list for `llama_model_params.devices`.
    pub(crate) fn devices(&self) -> &[sys::ggml_backend_dev_t] {
        &self.devices
    }

    /// `Err(Error::Rpc)` once a server of this model was lost since the model was loaded:
    /// what llama.cpp computed since then is made up and must be thrown away.
    pub(crate) fn check(&self) -> Result<()> {
        match self.relays.iter().find(|(relay, at_load)| relay.losses() != *at_load) {
            Some((relay, _)) => Err(lost(relay)),
            None => Ok(()),
        }
    }

    /// The servers, as named.
    pub(crate) fn servers(&self) -> impl Iterator<Item = &str> {
        self.relays.iter().map(|(relay, _)| relay.server())
    }
}

/// `GGML_RPC_MAX_SERVERS`.
const MAX_SERVERS: usize = 16;

fn lost(relay: &Relay) -> Error {
    Error::Rpc(format!(
        "{}; the model's layers on {} are gone (load the model again once the server is back)",
        relay.last_loss(),
        relay.server()
    ))
}

fn not_built() -> Error {
    Error::Rpc(
        "this build has no RPC backend: build llama.cpp with GGML_RPC=ON (see the `rpc` feature \
         and scripts/test-rpc.sh)"
            .to_string(),
    )
}

/// The RPC backend's function `name` (llama.cpp's backend started first), looked up at run
/// time so the same code links with and without the backend.
fn rpc_function(name: &CStr) -> Result<*mut c_void> {
    crate::backend()?;
    let registry = rpc_registry().ok_or_else(not_built)?;
    // SAFETY: the RPC registry is static and the name NUL-terminated.
    let function = unsafe { sys::ggml_backend_reg_get_proc_address(registry, name.as_ptr()) };
    if function.is_null() {
        return Err(Error::Rpc(format!("this llama.cpp's RPC backend has no {}", name.to_string_lossy())));
    }
    Ok(function)
}

fn rpc_registry() -> Option<sys::ggml_backend_reg_t> {
    // SAFETY: a lookup in ggml's static registry by a NUL-terminated literal.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    (!reg.is_null()).then_some(reg)
}

/// This machine's GPUs as llama.cpp's default device selection takes them (after the RPC
/// devices): discrete GPUs, or the integrated GPUs of one backend when there is none.
fn local_accelerators() -> Vec<sys::ggml_backend_dev_t> {
    let mut gpus = Vec::new();
    let mut igpus: Vec<sys::ggml_backend_dev_t> = Vec::new();
    // SAFETY: read-only queries of ggml's registered devices, which live for the process.
    unsafe {
        for i in 0..sys::ggml_backend_dev_count() {
            let dev = sys::ggml_backend_dev_get(i);
            let reg = sys::ggml_backend_dev_backend_reg(dev);
            match sys::ggml_backend_dev_type(dev) {
                sys::GGML_BACKEND_DEVICE_TYPE_GPU => {
                    let name = CStr::from_ptr(sys::ggml_backend_reg_name(reg));
                    if name.to_bytes() != b"RPC" {
                        gpus.push(dev);
                    }
                }
                sys::GGML_BACKEND_DEVICE_TYPE_IGPU
                    if igpus.last().map_or(true, |&last| sys::ggml_backend_dev_backend_reg(last) == reg) =>
                {
                    igpus.push(dev);
                }
                _ => {}
            }
        }
    }
    if gpus.is_empty() {
        igpus
    } else {
        gpus
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_are_checked_entry_by_entry() {
        assert_eq!(parse_servers("a:1, 10.0.0.2:50052").unwrap(), vec!["a:1", "10.0.0.2:50052"]);
        for bad in ["", "host", ":50052", "host:0", "host:70000", "host:x", "a:1,", "::1:50052"] {
            assert!(matches!(parse_servers(bad), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }
}
