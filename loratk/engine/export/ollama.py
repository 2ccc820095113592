"""``--ollama``: an Ollama Modelfile beside the GGUF, with the chat template as a Go template.

Ollama does not run Jinja. The template is translated by rendering it: a conversation of marked
messages shows what the template writes before and after each role's content and what starts the
assistant's reply. Those pieces become a Go template over ``.Messages``; the translation is checked
by rebuilding the Jinja rendering of other conversations from the pieces, and a template it cannot
reproduce (one that, say, folds the system prompt into the first user turn) is refused with a
one-line error before anything is exported.
"""

from __future__ import annotations

from pathlib import Path

from loratk.engine.export.gguf_file import readable_mode
from loratk.errors import UsageError
from loratk.fileio import atomic_write_text

MARK = {"system": "\x1fSYSTEM\x1f", "user": "\x1fUSER\x1f", "assistant": "\x1fASSISTANT\x1f"}
ROLES = ("system", "user", "assistant")
TEMPERATURE = 0.7


def modelfile_path(gguf_path: Path) -> Path:
    return gguf_path.with_suffix(".Modelfile")


def _render(tokenizer, messages: list[tuple[str, str]], generation: bool) -> str:
    from loratk.engine.data.tokenize import render_chat

    return render_chat([{"role": r, "content": c} for r, c in messages], tokenizer, add_generation_prompt=generation)


def _refuse(reason: str) -> None:
    raise UsageError(f"cannot translate this chat template for Ollama: {reason}",
                     "export without --ollama and write the Modelfile's TEMPLATE by hand")


def template_pieces(tokenizer) -> dict[str, str]:
    """{role}_prefix / {role}_suffix for each role, "generation" (what opens a reply) and
    "default_system" (the system prompt the template adds when a conversation has none)."""
    s, u, a = (MARK[r] for r in ROLES)
    try:
        full = _render(tokenizer, [("system", s), ("user", u), ("assistant", a), ("user", u), ("assistant", a)], False)
        without = _render(tokenizer, [("system", s), ("user", u)], False)
        prompt = _render(tokenizer, [("system", s), ("user", u)], True)
        no_system = _render(tokenizer, [("user", u)], True)
    except Exception as exc:  # a template may refuse a role order with any exception
        _refuse(f"rendering it failed ({exc})")
    if full.count(s) != 1 or full.count(u) != 2 or full.count(a) != 2 or not prompt.startswith(without):
        _refuse("it does not write each message's content once, in order")
    i_s, i_u1 = full.index(s), full.index(u)
    i_a1 = full.index(a)
    i_u2 = full.index(u, i_a1)
    i_a2 = full.index(a, i_u2)
    p = {"user_suffix": without[without.index(u) + len(u):], "assistant_suffix": full[i_a2 + len(a):]}
    p["generation"] = prompt[len(without):]
    p["assistant_prefix"] = full[i_u1 + len(u) + len(p["user_suffix"]):i_a1]
    p["user_prefix"] = full[i_a1 + len(a) + len(p["assistant_suffix"]):i_u2]
    p["system_prefix"], p["system_suffix"] = full[:i_s], full[i_s + len(s):i_u1 - len(p["user_prefix"])]
    head = no_system[:no_system.index(u)]
    p["default_system"] = ""
    if head != p["user_prefix"]:  # the template adds a system prompt of its own
        if not (head.startswith(p["system_prefix"]) and head.endswith(p["system_suffix"] + p["user_prefix"])):
            _refuse("it opens a conversation without a system message in a way it does not otherwise use")
        p["default_system"] = head[len(p["system_prefix"]):len(head) - len(p["system_suffix"] + p["user_prefix"])]
    _check_pieces(tokenizer, p)
    return p


def _rebuild(pieces: dict[str, str], messages: list[tuple[str, str]], generation: bool) -> str:
    if messages[0][0] != "system" and pieces["default_system"]:  # what Ollama does with SYSTEM
        messages = [("system", pieces["default_system"]), *messages]
    text = "".join(pieces[f"{role}_prefix"] + content + pieces[f"{role}_suffix"] for role, content in messages)
    return text + (pieces["generation"] if generation else "")


def _check_pieces(tokenizer, pieces: dict[str, str]) -> None:
    for messages in ([("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Bye")],
                     [("user", "one"), ("assistant", "two"), ("user", "three"), ("assistant", "four")]):
        for generation in (True, False):
            if _render(tokenizer, messages, generation) != _rebuild(pieces, messages, generation):
                _refuse("its turns are not each wrapped the same way")


def go_template(pieces: dict[str, str]) -> str:
    def literal(text: str) -> str:  # Go templates have no escapes in plain text, only in actions
        return text.replace("{{", '{{ "{{" }}')

    branches = "".join(f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{literal(pieces[role + "_prefix"])}'
                       f'{{{{ .Content }}}}{literal(pieces[role + "_suffix"])}' for i, role in enumerate(ROLES))
    return f"{{{{- range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{literal(pieces['generation'])}"


def modelfile_text(gguf_name: str, tokenizer, model) -> str:
    """The Modelfile for the GGUF file named ``gguf_name`` (in the same folder)."""
    from loratk.engine.inference.generation import stop_token_ids

    pieces = template_pieces(tokenizer)
    if any('"""' in text for text in pieces.values()):
        _refuse('it contains """, which a Modelfile cannot quote')
    stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_token_ids(tokenizer, model)]
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{go_template(pieces)}"""', ""]
    if pieces["default_system"]:
        lines += [f'SYSTEM """{pieces["default_system"]}"""', ""]
    lines += [f'PARAMETER stop "{stop}"' for stop in stops if stop]
    lines += [f"PARAMETER temperature {TEMPERATURE}", f"PARAMETER num_ctx {min(model.config.max_position_embeddings, 4096)}"]
    return "\n".join(lines) + "\n"


def check_modelfile(gguf_path: Path, overwrite: bool) -> None:
    path = modelfile_path(gguf_path)
    if path.exists() and not overwrite:
        raise UsageError(f"{path} already exists", "pass --overwrite to replace it, or choose another --output")


def write_modelfile(gguf_path: Path, text: str, overwrite: bool) -> Path:
    check_modelfile(gguf_path, overwrite)
    path = modelfile_path(gguf_path)
    atomic_write_text(path, text)
    path.chmod(readable_mode())
    return path
