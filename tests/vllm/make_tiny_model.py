"""Writes a tiny Llama model for vLLM to serve on CPU: random weights, a local tokenizer.

No weights can be fetched from a hub here, so this builds the smallest model that
vLLM's CPU backend runs like any other: a Llama-architecture config (two layers,
hidden size 256, head size 64, which the CPU attention kernels support), weights
drawn with a fixed seed and saved as safetensors, and a byte-level BPE tokenizer
trained on text that ships with Python (the Zen of Python and the docstrings of a
few standard modules), with a chat template so /v1/chat/completions works. Its
answers are gibberish: the tests it serves check the protocol, not the text.

Runs with the interpreter of .bench/vllm (it needs torch, transformers and
tokenizers, which the project's own environment does not have):
    .bench/vllm/bin/python tests/vllm/make_tiny_model.py OUT_DIR
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import io
import json
from pathlib import Path

SEED = 20240607
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
CORPUS_MODULES = [
    "argparse",
    "collections",
    "csv",
    "email",
    "http.client",
    "json",
    "logging",
    "os",
    "re",
    "string",
    "textwrap",
    "urllib.parse",
]


def corpus() -> list[str]:
    """Text every Python carries: the Zen of Python and some modules' docstrings."""
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this

    texts = [codecs.decode(this.s, "rot13")]
    for name in CORPUS_MODULES:
        module = importlib.import_module(name)
        texts.append(module.__doc__ or "")
        for attribute in sorted(vars(module)):
            doc = getattr(getattr(module, attribute), "__doc__", None)
            if isinstance(doc, str):
                texts.append(doc)
    return texts


def train_tokenizer(out: Path) -> int:
    """A byte-level BPE tokenizer (any text encodes); returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    # Older and newer transformers keep the template in different files; vLLM reads
    # tokenizer_config.json, so make sure it is there.
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    return len(fast)


def write_model(out: Path, vocab_size: int) -> None:
    """Llama weights drawn with a fixed seed, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    config.dtype = "float32"
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the model into")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = train_tokenizer(out)
    write_model(out, vocab_size)
    print(f"tiny model in {out}: vocabulary {vocab_size}")


if __name__ == "__main__":
    main()
