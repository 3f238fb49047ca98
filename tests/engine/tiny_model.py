"""Build a tiny, randomly initialised Llama model that the real vLLM engine can serve.

The model is meant for end-to-end tests on CPU-only machines: it loads in seconds,
answers /v1/completions and /v1/chat/completions (it ships a chat template), and its
output is gibberish.  Everything is built locally -- nothing is downloaded.

Run it with the ENGINE virtual environment (it needs torch, transformers, tokenizers):

    ENGINE_VENV/bin/python tests/engine/tiny_model.py DEST [--name NAME] [--seed N]

Builds are deterministic for a given (name, seed); a different name or seed gives a
different model (different weights, different config metadata).

Shape notes: vLLM's CPU attention backend rejects head_dim 16 at the first request
("Unsupported CPU attention configuration"), so heads are 32 wide.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zlib
from pathlib import Path

__all__ = ["build_tiny_model", "CHAT_TEMPLATE"]

# Must be set before `tokenizers` spins up its thread pool: single-threaded training
# keeps the learned merges reproducible.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END, UNK]
# Printable ASCII, newline (the chat template uses it) and the Metaspace word marker.
_ALPHABET = sorted({chr(c) for c in range(33, 127)} | {"\n", "\u2581"})

VOCAB_SIZE = 512  # ~100 characters + special tokens + learned merges
HIDDEN_SIZE = 64
INTERMEDIATE_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 2
HEAD_DIM = 32  # 16 fails in vLLM's CPU attention backend
MAX_POSITIONS = 512

# ChatML-style template; every message ends with <|im_end|>, generation is
# prompted with "<|im_start|>assistant\n".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today?",
    "A tiny language model answers every question with confidence.",
    "Large language models are served over an OpenAI compatible HTTP API.",
    "The server streams tokens back to the client as server sent events.",
    "Please write a short poem about the sea, the sky and the mountains.",
    "What is the capital of France? The capital of France is Paris.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000",
    "The appliance runs the engine under a process supervisor behind a proxy.",
    "User: tell me a joke. Assistant: why did the chicken cross the road?",
    "system user assistant tool function message content role name",
    "Graphics processing units accelerate matrix multiplication.",
    "Once upon a time there was a little model that could predict the next token.",
    "It was the best of times, it was the worst of times.",
    "To be, or not to be, that is the question.",
    "def hello(name):\n    return f'Hello, {name}!'\n",
    "{\"model\": \"tiny\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
    "Rain, snow, wind and sunshine; spring, summer, autumn and winter.",
    "Testing, testing: is this thing on? Yes, it is working fine.",
]


def _corpus() -> list[str]:
    # Repeat the lines so frequent pairs clearly dominate; order is fixed.
    return [line for _ in range(8) for line in _CORPUS_LINES]


def _effective_seed(name: str, seed: int) -> int:
    return zlib.crc32(f"{name}\0{seed}".encode()) & 0x7FFFFFFF


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    # Metaspace (sentencepiece-style) BPE over printable ASCII rather than
    # byte-level BPE: every token then decodes to clean text, so the random
    # model's gibberish never contains U+FFFD or control characters.
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=_ALPHABET,
        limit_alphabet=len(_ALPHABET),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bos_id)],
    )
    return tok


def build_tiny_model(dest: Path, *, name: str = "tiny-llama", seed: int = 0) -> Path:
    """Write a tiny random Llama (safetensors + BPE tokenizer + chat template) to dest.

    Returns dest.  Existing files in dest with the same names are overwritten.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    raw = _build_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    eos_ids = [raw.token_to_id(EOS), raw.token_to_id(IM_END)]
    config = LlamaConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        initializer_range=0.5,  # large init => peaky, seed-specific logits
        tie_word_embeddings=False,
        bos_token_id=raw.token_to_id(BOS),
        eos_token_id=eos_ids,
        pad_token_id=raw.token_to_id(PAD),
    )
    config.dtype = "float32"
    # Free-form metadata so two builds are easy to tell apart.
    config.tiny_model_name = name
    config.tiny_model_seed = seed

    torch.manual_seed(_effective_seed(name, seed))
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = config.pad_token_id

    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    # Belt and braces: some loaders only look at chat_template.jinja, others at
    # tokenizer_config.json; make sure both carry the template.
    (dest / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    cfg_path = dest / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    if tok_cfg.get("chat_template") != CHAT_TEMPLATE:
        tok_cfg["chat_template"] = CHAT_TEMPLATE
        cfg_path.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")
    for path in dest.iterdir():  # safetensors are written 0600; let any user read
        if path.is_file():
            path.chmod(0o644)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="output directory")
    parser.add_argument("--name", default="tiny-llama")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = build_tiny_model(args.dest, name=args.name, seed=args.seed)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
