#!/usr/bin/env python3
"""Write a llama-architecture GGUF with random Q4_0 weights and no tokenizer.

Usage: make_random_gguf.py OUT SHAPE [N_LAYERS]

Decoding speed does not depend on weight values, so a random-weight model of a real model's
shape stands in for it on a machine the real weights cannot reach (the device machine takes
64 MiB per call). The vocabulary is ids only (`tokenizer.ggml.model = "none"` plus
`llama.vocab_size`); pardec drives such models with token-id prompts.

Weights: Q4_0 blocks of 32 (an fp16 scale d and 16 bytes of 4-bit values q, w = d·(q − 8)),
drawn from a fixed seed, so the same SHAPE always gives the same file. |d| = 1 / (4.61·√cols)
gives each weight a standard deviation of about 1/√cols (the uniform nibble has std 4.61), so
a matrix-vector product keeps the scale of its input and logits stay of order one at any depth;
d's sign is random per block, which cancels the −0.5·d mean of the nibbles. Norm weights are 1.
N_LAYERS overrides the layer count (for quick checks of a big shape's per-layer numerics).
"""
import struct
import sys
import time

import numpy as np

# name: (n_embd, n_layer, n_ff, n_head, n_head_kv, n_vocab, rope_base, ctx, tied_output)
SHAPES = {
    # SmolLM2-135M-Instruct, as its GGUF says (tied embeddings, like the real file).
    "smol": (576, 30, 1536, 9, 3, 49152, 100000.0, 8192, True),
    # Llama-3.2-1B (tied embeddings). Real context 131072; 8192 is all a check needs.
    "1b": (2048, 16, 8192, 32, 8, 128256, 500000.0, 8192, True),
    # Llama-2-7B (no GQA, separate output matrix). Real context 4096, raised to 8192 so that
    # pardec bench's 8192-cell context does not exceed the training context.
    "7b": (4096, 32, 11008, 32, 32, 32000, 10000.0, 8192, False),
    # A very small model for smoke tests of this script and of the loader.
    "tiny": (256, 2, 512, 4, 2, 1024, 10000.0, 8192, False),
}

GGUF_F32, GGUF_Q4_0 = 0, 2
QK = 32  # weights per Q4_0 block
ALIGN = 32
SEED = 20261126


def gguf_str(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, val):
    """One metadata pair; the GGUF value type follows the Python type."""
    if isinstance(val, bool):
        return gguf_str(key) + struct.pack("<IB", 7, val)
    if isinstance(val, int):
        return gguf_str(key) + struct.pack("<II", 4, val)  # uint32
    if isinstance(val, float):
        return gguf_str(key) + struct.pack("<If", 6, val)  # float32
    return gguf_str(key) + struct.pack("<I", 8) + gguf_str(val)


class Weights:
    def __init__(self, seed):
        self.bits = np.random.PCG64(seed)

    def q4_0(self, rows, cols):
        """rows × cols weights as Q4_0 blocks (18 bytes each), row-major."""
        assert cols % QK == 0, f"Q4_0 needs rows of a multiple of {QK} weights, not {cols}"
        n = rows * cols // QK
        blocks = np.empty((n, 18), dtype=np.uint8)
        blocks[:, 2:] = self.bits.random_raw(2 * n).view(np.uint8).reshape(n, 16)
        d = np.float16(1.0 / (4.61 * np.sqrt(cols)))
        signs = np.unpackbits(self.bits.random_raw((n + 63) // 64).view(np.uint8))[:n]
        scales = np.where(signs == 1, -d, d).astype("<f2")
        blocks[:, :2] = scales.view(np.uint8).reshape(n, 2)
        return blocks


def main():
    if len(sys.argv) not in (3, 4) or sys.argv[2] not in SHAPES:
        sys.exit(f"usage: {sys.argv[0]} OUT SHAPE [N_LAYERS]; SHAPE one of {', '.join(SHAPES)}")
    out, shape = sys.argv[1], sys.argv[2]
    E, L, F, H, HKV, V, rope_base, ctx, tied = SHAPES[shape]
    if len(sys.argv) == 4:
        L = int(sys.argv[3])
    assert E % H == 0 and E % QK == 0 and F % QK == 0
    head_dim = E // H
    e_kv = head_dim * HKV
    t0 = time.time()

    # (name, ne: innermost first, as GGUF stores them, type)
    tensors = [("token_embd.weight", (E, V), GGUF_Q4_0), ("output_norm.weight", (E,), GGUF_F32)]
    if not tied:
        tensors.append(("output.weight", (E, V), GGUF_Q4_0))
    for i in range(L):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (E,), GGUF_F32),
            (p + "attn_q.weight", (E, E), GGUF_Q4_0),
            (p + "attn_k.weight", (E, e_kv), GGUF_Q4_0),
            (p + "attn_v.weight", (E, e_kv), GGUF_Q4_0),
            (p + "attn_output.weight", (E, E), GGUF_Q4_0),
            (p + "ffn_norm.weight", (E,), GGUF_F32),
            (p + "ffn_gate.weight", (E, F), GGUF_Q4_0),
            (p + "ffn_up.weight", (E, F), GGUF_Q4_0),
            (p + "ffn_down.weight", (F, E), GGUF_Q4_0),
        ]
    meta = [
        kv("general.architecture", "llama"),
        kv("general.name", f"pardec random {shape}-shape Q4_0"),
        kv("general.file_type", 2),  # LLAMA_FTYPE_MOSTLY_Q4_0
        kv("general.alignment", ALIGN),
        kv("llama.context_length", ctx),
        kv("llama.embedding_length", E),
        kv("llama.block_count", L),
        kv("llama.feed_forward_length", F),
        kv("llama.attention.head_count", H),
        kv("llama.attention.head_count_kv", HKV),
        kv("llama.rope.dimension_count", head_dim),
        kv("llama.rope.freq_base", rope_base),
        kv("llama.attention.layer_norm_rms_epsilon", 1e-5),
        kv("llama.vocab_size", V),
        kv("tokenizer.ggml.model", "none"),
    ]

    def nbytes(ne, typ):
        n = int(np.prod(ne))
        return n * 4 if typ == GGUF_F32 else n // QK * 18

    infos, offset = [], 0
    for name, ne, typ in tensors:
        infos.append(gguf_str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
                     + struct.pack("<IQ", typ, offset))
        offset += -(-nbytes(ne, typ) // ALIGN) * ALIGN

    w = Weights(SEED)
    with open(out, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)))
        f.write(b"".join(meta) + b"".join(infos))
        f.write(b"\0" * (-f.tell() % ALIGN))
        for name, ne, typ in tensors:
            data = np.ones(ne[0], dtype="<f4") if typ == GGUF_F32 else w.q4_0(ne[1], ne[0])
            f.write(data)
            f.write(b"\0" * (-data.nbytes % ALIGN))
    print(f"wrote {out}: {shape}-shape, {L} layers, {offset / 2**30:.2f} GiB of weights in "
          f"{time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
