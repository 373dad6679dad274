#!/usr/bin/env python3
"""Write a deterministic random-weight Llama model folder for vLLM, with no hub access.

The folder is what `save_pretrained` writes (config.json, model.safetensors) plus a byte-level
BPE tokenizer trained here on generated text (tokenizer.json, tokenizer_config.json). The sizes
are those of the registry entry `tiny-llama-hf` (configs/models.toml): hidden 512, 4 layers,
8 query heads and 2 KV heads of 64, MLP 2048, vocabulary 8192, 4096 positions, bfloat16 (21M
parameters, 42 MB). The shape is chosen so that prefill costs what a cache hit saves: 2 KiB of KV
per token (as small as the old 2-layer model's) for about 30 MFLOP of compute per token, so a
2,048-token prompt takes about a second to compute on two CPU cores and far less to load.

The load generator sends token ids to vLLM, so prompt lengths are exact whatever the tokenizer
does; the tokenizer only turns generated ids back into text. Same seed, same files.

usage: gen_hf_model.py OUT_DIR [--seed 0]
"""
import argparse
import json
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

VOCAB = 8192
SPECIALS = ["<unk>", "<s>", "</s>"]


def corpus(seed: int, lines: int = 20000):
    """Generated text: words of letters and digits, so BPE has merges to learn."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(6000)]
    for _ in range(lines):
        yield " ".join(rng.choice(words) for _ in range(rng.randint(5, 20)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(a.seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.model_max_length = 4096
    fast.save_pretrained(a.out)

    torch.manual_seed(a.seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(a.out, safe_serialization=True)
    # vLLM reads the generation defaults from here; none that would end a stream early.
    with open(os.path.join(a.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2}, f)
    # Readable by every user: an engine image runs as an unprivileged user and reads the folder
    # from a read-only volume (safetensors' writer leaves the weights 0600).
    os.chmod(a.out, 0o755)
    for name in os.listdir(a.out):
        os.chmod(os.path.join(a.out, name), 0o644)
    print(f"wrote {a.out}: {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()
