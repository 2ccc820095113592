"""Text generation with a base model and its adapters: prompts, stop tokens, seeds, streaming.

Chat prompts are rendered with ``loratk.engine.data.tokenize.render_chat``, the function training
used, so an adapter sees at inference exactly the template it was trained on. Generation stops at
every end-of-turn token the tokenizer and the generation config know of (e.g. ``<|im_end|>`` for
ChatML), and always uses the KV cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from loratk.engine.models.adapters import (AdapterSpec, active_adapter, adapter_names, base_model_of, load_adapters,
                                          load_base)
from loratk.engine.quiet import quiet_libraries

Prompt = Union[str, list[dict]]  # raw text, or a chat of {role, content} messages
# End-of-turn tokens of common chat templates, used when the template in use mentions them.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                                  "repetition_penalty": self.repetition_penalty, "use_cache": True}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # unset the model's sampling defaults so greedy decoding does not warn about them
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class Generation:
    text: str
    new_tokens: int
    seconds: float
    stopped_at_end_of_turn: bool
    adapter: str | None = None


@dataclass
class Session:
    """One loaded base model with any number of adapters on it, ready to generate."""

    model: Any
    tokenizer: Any
    base_path: str
    adapters: list[str] = field(default_factory=list)
    use_chat_template: bool = True
    system: str | None = None

    def __post_init__(self):
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)

    def messages(self, prompt: Prompt, history: list[dict] | None = None) -> list[dict]:
        messages = list(history or []) + ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt))
        if self.system and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.system})
        return messages

    def render(self, prompt: Prompt, history: list[dict] | None = None) -> str:
        from loratk.engine.data.tokenize import render_chat

        if not self.use_chat_template:
            if not isinstance(prompt, str):
                return "\n".join(m["content"] for m in prompt)
            return prompt if not self.system else f"{self.system}\n{prompt}"
        return render_chat(self.messages(prompt, history), self.tokenizer, add_generation_prompt=True)

    def generate(self, prompt: Prompt, settings: GenerationSettings, adapter: str | None = None,
                 history: list[dict] | None = None, on_text: Callable[[str], None] | None = None) -> Generation:
        """Generate a reply with ``adapter`` active (``None``: the base model), streaming to ``on_text``."""
        import torch

        text = self.render(prompt, history)
        # A chat template writes its own BOS; raw completions get the tokenizer's special tokens.
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=not self.use_chat_template)
        encoded = {k: v.to(self.model.device) for k, v in encoded.items()}
        if settings.seed is not None:
            from transformers import set_seed

            set_seed(settings.seed)  # per prompt: the same seed gives the same text whatever ran before
        streamer = _CallbackStreamer(self.tokenizer, on_text) if on_text is not None else None
        start = time.perf_counter()
        with active_adapter(self.model, adapter), torch.inference_mode():
            output = self.model.generate(**encoded, **settings.generate_kwargs(), eos_token_id=self.stop_ids or None,
                                         pad_token_id=self.tokenizer.pad_token_id, streamer=streamer)
        seconds = time.perf_counter() - start
        new = output[0, encoded["input_ids"].shape[1]:].tolist()
        ended = bool(new) and new[-1] in self.stop_ids
        reply = self.tokenizer.decode(new, skip_special_tokens=True)
        return Generation(reply, len(new), seconds, ended, adapter)


def stop_token_ids(tokenizer, model) -> list[int]:
    """Every token that ends a turn: the tokenizer's and the generation config's EOS, plus the
    end-of-turn markers of the chat template in use (e.g. ``<|im_end|>`` and ``<|endoftext|>``)."""
    from loratk.engine.data.tokenize import chat_template

    ids: list[int] = []

    def add(value):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))

    add(tokenizer.eos_token_id)
    config = getattr(model, "generation_config", None)
    add(getattr(config, "eos_token_id", None))
    template = chat_template(tokenizer)
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in template and token in vocab:
            add(vocab[token])
    return ids


class _CallbackStreamer:
    """A transformers streamer that hands each finished piece of text to a callback."""

    def __new__(cls, tokenizer, callback):
        from transformers import TextStreamer

        class Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                if text:
                    callback(text)

        return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def pick_device_and_dtype(dtype: str) -> tuple[Any, str]:
    import torch

    if torch.cuda.is_available():
        return {"": 0}, ("bfloat16" if dtype == "auto" and torch.cuda.is_bf16_supported() else
                         "float16" if dtype == "auto" else dtype)
    return None, ("float32" if dtype == "auto" else dtype)


def tokenizer_source(specs: list[AdapterSpec], base_path: str) -> str:
    """The first adapter's own tokenizer (what training saved, chat template included), else the base's."""
    for spec in specs[:1]:
        if (Path(spec.path) / "tokenizer_config.json").is_file():
            return str(spec.path)
    return base_path


def load_session(specs: list[AdapterSpec], model_name_or_path: str | None = None, *, quantization: str | None = None,
                 dtype: str = "auto", trust_remote_code: bool = False, use_chat_template: bool = True,
                 system: str | None = None) -> Session:
    """Load the base (from the adapters' config unless given) once, and every adapter onto it."""
    quiet_libraries()
    from loratk.engine.models.loading import load_config, load_model, load_tokenizer

    base_path = base_model_of(specs, model_name_or_path)
    load_config(base_path, trust_remote_code)  # train's checks first: remote code, a damaged config
    device_map, torch_dtype = pick_device_and_dtype(dtype)
    tokenizer = load_tokenizer(tokenizer_source(specs, base_path), trust_remote_code=trust_remote_code)
    if quantization is None:  # a LoftQ adapter's base is the 4-bit one it was fitted to, dequantized
        model = load_base(specs, base_path, dtype=torch_dtype, trust_remote_code=trust_remote_code, device_map=device_map)
    else:
        model = load_model(base_path, quantization=quantization, dtype=torch_dtype,
                           trust_remote_code=trust_remote_code, device_map=device_map)
    model = load_adapters(model, specs, base_path)
    model.eval()
    return Session(model, tokenizer, base_path, adapter_names(model), use_chat_template, system)
