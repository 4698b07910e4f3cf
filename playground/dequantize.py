"""Dequantize a GGUF into a clean Hugging Face folder (run as a subprocess).

onnxruntime-genai's builder does not read quantized GGUF, so we load it through
transformers (``gguf_file=``) and save a copy without ``quantization_config``.

    python -m playground.dequantize GGUF_PATH OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path


def dequantize(gguf_path: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config)
    clean.load_state_dict(quantized.state_dict())
    clean.generation_config = quantized.generation_config
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m playground.dequantize GGUF_PATH OUT_DIR")
    print("dequantizing", flush=True)
    dequantize(Path(sys.argv[1]), Path(sys.argv[2]))
    print("dequantized", flush=True)
