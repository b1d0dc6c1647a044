//! What the relay must know of ggml-rpc's wire protocol (version 7, as in the vendored
//! `ggml/src/ggml-rpc/ggml-rpc.cpp`): how a message is framed and which commands are answered
//! with how many bytes. Nothing here interprets tensors: the relay passes bytes through, and
//! only makes up an answer once the server is gone, so that llama.cpp's client (which aborts
//! the process on any failed read) is always answered with a well-formed message.
//!
//! Request:  | command (1 byte) | payload size (u64, little-endian) | payload |
//! Response: | payload size (u64, little-endian) | payload |   (only for some commands)

/// `RPC_PROTO_MAJOR_VERSION`: the client refuses servers of another major version.
pub(crate) const PROTO_MAJOR: u8 = 7;
/// `RPC_PROTO_MINOR_VERSION`: the client refuses servers of a newer minor version.
pub(crate) const PROTO_MINOR: u8 = 0;

/// `RPC_CMD_HELLO`: the first command of every connection (fixed at 14 across versions).
pub(crate) const CMD_HELLO: u8 = 14;
/// `RPC_CMD_GET_ALIGNMENT`.
const CMD_GET_ALIGNMENT: u8 = 1;
/// `RPC_CMD_GET_TENSOR`: answered with as many bytes as the request asks for.
const CMD_GET_TENSOR: u8 = 8;
/// `RPC_CMD_DEVICE_COUNT`.
const CMD_DEVICE_COUNT: u8 = 15;
/// `RPC_CMD_COUNT`: commands from here on are unknown to this protocol version.
pub(crate) const CMD_COUNT: u8 = 19;

/// `RPC_CONN_CAPS_SIZE`: the transport capabilities exchanged in HELLO (all zero: plain TCP).
const CAPS_SIZE: usize = 24;
/// `rpc_msg_hello_req`: the client's capabilities.
pub(crate) const HELLO_REQUEST_SIZE: usize = CAPS_SIZE;
/// `rpc_msg_hello_rsp`: major, minor, patch, padding, then the server's capabilities.
pub(crate) const HELLO_RESPONSE_SIZE: usize = 4 + CAPS_SIZE;
/// Header of a request: the command byte and the payload size.
pub(crate) const REQUEST_HEADER_SIZE: usize = 1 + 8;

/// How a command is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Not at all (set_tensor, graph_compute, free_buffer, ...).
    None,
    /// With this many bytes.
    Bytes(u64),
}

/// How `cmd` with request `payload` is answered, as the server's dispatch loop does it;
/// `None` for a command this protocol version does not have. `payload` need only hold the
/// request's last 8 bytes where the answer depends on them (get_tensor's size).
pub(crate) fn answer(cmd: u8, payload_tail: &[u8]) -> Option<Answer> {
    Some(match cmd {
        // alloc_buffer {remote_ptr, remote_size}, get_device_memory {free, total}
        0 | 11 => Answer::Bytes(16),
        // get_alignment, get_max_size, buffer_get_base, get_alloc_size: one u64
        1 | 2 | 3 | 13 => Answer::Bytes(8),
        // set_tensor_hash, copy_tensor: a result byte
        7 | 9 => Answer::Bytes(1),
        CMD_GET_TENSOR => Answer::Bytes(u64::from_le_bytes(payload_tail.try_into().ok()?)),
        CMD_HELLO => Answer::Bytes(HELLO_RESPONSE_SIZE as u64),
        CMD_DEVICE_COUNT => Answer::Bytes(4),
        // free_buffer, buffer_clear, set_tensor, graph_compute, init_tensor, graph_recompute,
        // memset_tensor, none
        4 | 5 | 6 | 10 | 12 | 16 | 17 | 18 => Answer::None,
        _ => return None,
    })
}

/// The bytes of the request payload `answer` needs: its last 8 for get_tensor, else none.
pub(crate) fn tail_needed(cmd: u8) -> usize {
    if cmd == CMD_GET_TENSOR {
        8
    } else {
        0
    }
}

/// The answer given once the server is gone: zeros (no buffer, a zero base pointer, empty
/// tensor data; llama.cpp fails cleanly on a buffer it could not allocate), except where a
/// zero would mislead llama.cpp's client: an alignment must be a power of two and a server has
/// at least one device. The result is thrown away: the session reports the loss.
pub(crate) fn made_up_answer(cmd: u8, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    match cmd {
        CMD_GET_ALIGNMENT if len == 8 => bytes.copy_from_slice(&64u64.to_le_bytes()),
        CMD_DEVICE_COUNT if len == 4 => bytes.copy_from_slice(&1u32.to_le_bytes()),
        _ => {}
    }
    bytes
}

/// The HELLO answer of a server of `version` with plain-TCP capabilities.
pub(crate) fn hello_answer(version: [u8; 3]) -> [u8; HELLO_RESPONSE_SIZE] {
    let mut bytes = [0u8; HELLO_RESPONSE_SIZE];
    bytes[..3].copy_from_slice(&version);
    bytes
}

/// Whether llama.cpp's client accepts a server of this version (`negotiate_hello`).
// The rule as llama.cpp states it, though with minor version 0 `<=` can only mean `==`.
#[allow(clippy::absurd_extreme_comparisons)]
pub(crate) fn client_accepts(version: [u8; 3]) -> bool {
    version[0] == PROTO_MAJOR && version[1] <= PROTO_MINOR
}

/// The HELLO request the relay sends: plain-TCP capabilities.
pub(crate) fn hello_request() -> Vec<u8> {
    let mut bytes = Vec::with_capacity(REQUEST_HEADER_SIZE + HELLO_REQUEST_SIZE);
    bytes.push(CMD_HELLO);
    bytes.extend_from_slice(&(HELLO_REQUEST_SIZE as u64).to_le_bytes());
    bytes.extend_from_slice(&[0u8; HELLO_REQUEST_SIZE]);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_tensor_is_answered_with_the_size_it_asks_for() {
        assert_eq!(answer(CMD_GET_TENSOR, &4096u64.to_le_bytes()), Some(Answer::Bytes(4096)));
        assert_eq!(answer(CMD_GET_TENSOR, &[1, 2]), None, "a request too short for its size field");
    }

    #[test]
    fn unknown_commands_have_no_answer_rule() {
        assert_eq!(answer(CMD_COUNT, &[]), None);
        assert_eq!(answer(10, &[]), Some(Answer::None), "graph_compute is not answered");
    }

    #[test]
    fn made_up_answers_keep_what_the_client_asserts() {
        assert_eq!(made_up_answer(CMD_GET_ALIGNMENT, 8), 64u64.to_le_bytes().to_vec());
        assert_eq!(made_up_answer(CMD_DEVICE_COUNT, 4), 1u32.to_le_bytes().to_vec());
        assert_eq!(made_up_answer(0, 16), vec![0; 16]);
        assert!(client_accepts([7, 0, 3]));
        assert!(!client_accepts([7, 1, 0]) && !client_accepts([6, 0, 0]));
    }
}
