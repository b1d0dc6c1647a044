//! The C ABI's layouts and numbers are frozen: a struct field moved, resized or inserted, or an
//! enum value renumbered, breaks every program built against an older header even when the
//! regenerated header looks fine. This test pins them (64-bit targets); a deliberate change
//! must come with a new struct size in the `Versioned` list (src/ffi/) and a version bump.

#![cfg(target_pointer_width = "64")]

use std::mem::{align_of, offset_of, size_of};

use pardec::ffi::*;

macro_rules! layout {
    ($t:ty, size $size:expr, { $($field:ident @ $off:expr),* $(,)? }) => {{
        assert_eq!(size_of::<$t>(), $size, "size of {}", stringify!($t));
        $( assert_eq!(offset_of!($t, $field), $off, "{}.{}", stringify!($t), stringify!($field)); )*
    }};
}

#[test]
fn struct_layouts_are_frozen() {
    layout!(pardec_model_params, size 24, { struct_size @ 0, n_gpu_layers @ 8, rpc_servers @ 16 });
    layout!(pardec_chat_message, size 16, { role @ 0, content @ 8 });
    layout!(pardec_sampling_params, size 24, { temperature @ 0, top_k @ 4, top_p @ 8, min_p @ 12, seed @ 16 });
    // 0.2 appended device_candidates (0.1's struct was 64 bytes and is still accepted), 0.5
    // the penalties and the logit bias (0.2's 72 bytes are still accepted), then logprobs
    // (the 104 bytes of the penalties alone are still accepted).
    layout!(pardec_session_params, size 112, {
        struct_size @ 0, n_ctx @ 8, n_batch @ 12, max_branches @ 16, max_depth @ 20,
        n_threads @ 24, kv_type @ 28, flash_attn @ 32, sampling @ 40, device_candidates @ 64,
        repeat_penalty @ 68, frequency_penalty @ 72, presence_penalty @ 76, penalty_last_n @ 80,
        logit_bias @ 88, n_logit_bias @ 96, logprobs @ 104,
    });
    layout!(pardec_logit_bias, size 8, { token @ 0, bias @ 4 });
    layout!(pardec_special_tokens, size 24, { bos @ 0, eos @ 4, eot @ 8, sep @ 12, nl @ 16, pad @ 20 });
    layout!(pardec_top_logprob, size 8, { token @ 0, logprob @ 4 });
    layout!(pardec_token_logprob, size 32, { pos @ 0, token @ 4, logprob @ 8, top @ 16, n_top @ 24 });
    // 0.5 appended strip_stop and the grammar (the 56 bytes before are still accepted).
    layout!(pardec_run_limits, size 80, {
        struct_size @ 0, max_tokens @ 8, stop @ 16, n_stop @ 24, ban_eog @ 32,
        banned_tokens @ 40, n_banned_tokens @ 48, strip_stop @ 56, grammar @ 64, grammar_root @ 72,
    });
    // 0.5 appended the log-probability fields (callers read only what their header has).
    layout!(pardec_event, size 88, {
        struct_size @ 0, kind @ 8, node @ 12, label @ 16, text @ 24, text_len @ 32, token @ 40,
        stop_reason @ 44, stop_string @ 48, status @ 56, has_logprob @ 60, logprob @ 64,
        top @ 72, n_top @ 80,
    });
    // 0.2 appended host_us_per_step and selection_us_per_step (0.1's struct was 128 bytes
    // and is still accepted).
    layout!(pardec_stats, size 144, {
        tokens_total @ 0, tokens_branch @ 8, tokens_prefill @ 16, steps @ 24, blocks @ 32,
        branches @ 40, serial_seconds @ 48, parallel_seconds @ 56, prefill_seconds @ 64,
        tps @ 72, p_tps @ 80, dp @ 88, abn @ 96, parallel @ 104, kv_cells_used @ 112,
        kv_cells_unshared @ 120, host_us_per_step @ 128, selection_us_per_step @ 136,
    });
    layout!(pardec_block_info, size 24, { parent_label @ 0, n_branches @ 8, fork_pos @ 16, join_state @ 20 });
    layout!(pardec_branch_info, size 48, {
        label @ 0, text @ 8, n_tokens @ 16, stop_reason @ 24, stop_string @ 32, kept @ 40,
        node @ 44,
    });
    // C enums are int-sized.
    assert_eq!(size_of::<pardec_status>(), 4);
    assert_eq!(align_of::<pardec_event>(), 8);
}

#[test]
fn enum_values_are_frozen() {
    let statuses = [
        (pardec_status::Ok, 0),
        (pardec_status::NullArgument, 1),
        (pardec_status::InvalidUtf8, 2),
        (pardec_status::InvalidArgument, 3),
        (pardec_status::StructSize, 4),
        (pardec_status::OutOfRange, 5),
        (pardec_status::Busy, 6),
        (pardec_status::Backend, 7),
        (pardec_status::ModelNotFound, 8),
        (pardec_status::NotGguf, 9),
        (pardec_status::ModelLoad, 10),
        (pardec_status::UnsupportedModel, 11),
        (pardec_status::Context, 12),
        (pardec_status::EmptyPrompt, 13),
        (pardec_status::PromptTooLong, 14),
        (pardec_status::EmptyBranchPrefix, 15),
        (pardec_status::TooManyBranches, 16),
        (pardec_status::DepthLimit, 17),
        (pardec_status::InvalidState, 18),
        (pardec_status::KvCacheFull, 19),
        (pardec_status::Cancelled, 20),
        (pardec_status::Decode, 21),
        (pardec_status::Internal, 22),
        (pardec_status::Panic, 23),
        (pardec_status::NotAdapter, 24),
        (pardec_status::AdapterMismatch, 25),
    ];
    for (status, value) in statuses {
        assert_eq!(status as i32, value, "{status:?}");
    }
    assert_eq!(pardec_stop_reason::Cancelled as i32, 5);
    assert_eq!(pardec_event_kind::Done as i32, 2);
    assert_eq!(pardec_event_kind::Fork as i32, 3);
    assert_eq!(pardec_event_kind::Join as i32, 4);
    assert_eq!(pardec_event_kind::Warning as i32, 5);
    assert_eq!(pardec_join_mode::Discard as i32, 2);
    assert_eq!(pardec_join_state::Discard as i32, 3);
    assert_eq!(pardec_kv_type::F32 as i32, 1);
    assert_eq!(PARDEC_NODE_TRUNK, 0);
}

/// Defaults come through the C functions with the sizes a caller would pass, and unknown sizes
/// are refused without writing anything.
#[test]
fn defaults_honour_struct_sizes() {
    unsafe {
        let mut p = std::mem::MaybeUninit::<pardec_session_params>::zeroed();
        let st = pardec_session_params_default(p.as_mut_ptr(), size_of::<pardec_session_params>());
        assert_eq!(st, pardec_status::Ok);
        let p = p.assume_init();
        assert_eq!(p.struct_size, size_of::<pardec_session_params>());
        assert!(p.n_ctx > 0 && p.max_branches > 0 && p.flash_attn == -1);

        let mut l = std::mem::MaybeUninit::<pardec_run_limits>::zeroed();
        assert_eq!(pardec_run_limits_default(l.as_mut_ptr(), 8), pardec_status::StructSize);
        assert_eq!(l.assume_init().struct_size, 0, "nothing written on failure");
        assert_eq!(pardec_run_limits_default(std::ptr::null_mut(), 56), pardec_status::NullArgument);
    }
}
