//! Node handles: how the C API names the nodes of a session's fork tree.

use super::boundary::{FfiError, FfiResult};
use super::status::pardec_status;
use crate::NodeId;

/// A node of a session's fork tree: `PARDEC_NODE_TRUNK` or a branch returned by
/// `pardec_session_fork`. Node ids are never reused until `pardec_session_clear`.
pub type pardec_node = u32;

/// The trunk: the serial part of the response.
pub const PARDEC_NODE_TRUNK: pardec_node = 0;

/// The engine's id of a C node handle (the handle is the engine's index: no lookup).
pub(super) fn node_id(node: pardec_node) -> NodeId {
    NodeId(node as usize)
}

/// The C handle of an engine node; an index beyond `pardec_node` is an internal error rather
/// than a silently truncated handle.
pub(super) fn node_out(id: NodeId) -> FfiResult<pardec_node> {
    pardec_node::try_from(id.index()).map_err(|_| FfiError::new(pardec_status::Internal, "node id overflow"))
}
