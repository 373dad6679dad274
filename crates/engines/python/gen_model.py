#!/usr/bin/env python3
"""Write a deterministic random-weight Llama model in GGUF for llama.cpp.

The vocabulary is 3 special tokens, 256 byte tokens, the word-boundary mark and the 94 printable
ASCII characters, so one ASCII character is one token and a prompt of N characters is N + 1
tokens (with BOS). Byte and special tokens get a large negative logit, so generation is plain
ASCII, one token per streamed chunk, and never ends early (no EOS).

The default size (dim 256, 4 layers, 13.6 MB) makes prefill cost clearly grow with the prompt on
two CPU threads (about 15-25 ms at 128 tokens, 300-350 ms at 2048), so timing assertions hold on
a loaded machine; `--dim 64 --layers 2 --ctx 4096` gives a 0.6 MB model for quick smoke runs.

usage: gen_model.py OUT.gguf [--dim 256] [--layers 4] [--heads 4] [--ctx 8192] [--seed 0] [--f16]
"""
import argparse

import gguf
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--f16", action="store_true", help="store matrices as F16")
    a = ap.parse_args()

    dim, layers, heads = a.dim, a.layers, a.heads
    ffn = ((8 * dim) // 3 + 31) // 32 * 32
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = ["<0x%02X>" % b for b in range(256)]
    text_tokens = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    vocab = specials + byte_tokens + text_tokens
    n_never = len(specials) + len(byte_tokens)

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("kvlab-random-llama-d%d-l%d" % (dim, layers))
    w.add_context_length(a.ctx)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(dim // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab)
    w.add_token_scores([0.0] * len(vocab))
    # 2 = unknown, 3 = control, 6 = byte, 1 = normal
    w.add_token_types([2, 3, 3] + [6] * len(byte_tokens) + [1] * len(text_tokens))
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    w.add_chat_template(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )

    rng = np.random.default_rng(a.seed)
    dtype = np.float16 if a.f16 else np.float32

    def normal(rows: int, cols: int) -> np.ndarray:
        return rng.standard_normal((rows, cols), dtype=np.float32) * 0.02

    def weight(rows: int, cols: int, keep_dim0: bool = False) -> np.ndarray:
        m = normal(rows, cols)
        if keep_dim0:
            m[0] = 0.0  # blocks never write residual dimension 0
        return m.astype(dtype)

    ones = np.ones(dim, dtype=np.float32)
    embed = normal(len(vocab), dim)
    embed[:, 0] = 1.0  # residual dimension 0 stays constant and positive
    output = normal(len(vocab), dim)
    output[:, 0] = 0.0
    output[:n_never, 0] = -100.0  # special and byte tokens are never sampled
    w.add_tensor("token_embd.weight", embed)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", output.astype(dtype))
    for i in range(layers):
        p = "blk.%d." % i
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", weight(dim, dim))
        w.add_tensor(p + "attn_k.weight", weight(dim, dim))
        w.add_tensor(p + "attn_v.weight", weight(dim, dim))
        w.add_tensor(p + "attn_output.weight", weight(dim, dim, keep_dim0=True))
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "ffn_gate.weight", weight(ffn, dim))
        w.add_tensor(p + "ffn_up.weight", weight(ffn, dim))
        w.add_tensor(p + "ffn_down.weight", weight(dim, ffn, keep_dim0=True))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote %s: vocab=%d dim=%d layers=%d heads=%d ctx=%d" % (a.out, len(vocab), dim, layers, heads, a.ctx))


if __name__ == "__main__":
    main()
