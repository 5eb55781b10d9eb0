"""Chat templates: choosing one, rendering conversations, and reading their structure.

Training, token health, export (the Ollama Modelfile) and chat all ask the same questions of a
template: which text is it, how does it render a conversation, which token ends an assistant
turn, and what surrounds each role's content. They are answered here, once.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError, HeadtuneError

# Used when the model has no chat template of its own (documented in the README).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


BUILTIN_TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE}


def resolve_template(tokenizer, choice: str) -> tuple[str, str]:
    """(template text, where it came from) for ``data.chat_template``."""
    if choice == "model":
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.chat_template, "model"
        return CHATML_TEMPLATE, "chatml (the model has no chat template)"
    if choice in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[choice], choice
    path = Path(choice)
    if not path.is_file():
        raise DataError(
            f"data.chat_template: {choice!r} is not 'model', a built-in template "
            f"({', '.join(BUILTIN_TEMPLATES)}) or an existing Jinja file."
        )
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"data.chat_template: the file {path} cannot be read ({exc}).") from None


def render(tokenizer, messages, template: str, generation_prompt: bool, where: str = "") -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # Jinja errors raised by the template itself ("roles must alternate", ...)
        raise DataError(
            f"{where}: the chat template refused this conversation ({exc}). Fix the row, or "
            "choose another data.chat_template (e.g. chatml)."
        ) from None


def assistant_spans(tokenizer, messages, template: str, where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = render(tokenizer, messages, template, False, where)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], template, True, where) if i else ""
        after = render(tokenizer, messages[: i + 1], template, False, where)
        if not (full.startswith(after) and after.startswith(before)):
            continue  # a template that rewrites earlier turns: only the turns we can locate train
        spans.append((len(before), len(after)))
    if not spans:
        raise DataError(
            f"{where}: the chat template does not render this conversation in a way that lets "
            "Headtune find the assistant's reply. Choose another data.chat_template (e.g. chatml)."
        )
    return full, spans


SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye."},
]


def template_end_token(tokenizer, template: str) -> str | None:
    """The token the template puts right after an assistant reply (end of turn)."""
    text = render(tokenizer, SAMPLE_CONVERSATION[:3], template, False)
    i = text.rfind("Hello!")
    if i < 0:
        return None
    ids = tokenizer(text[i + len("Hello!") :], add_special_tokens=False)["input_ids"]
    if not ids:
        return tokenizer.eos_token
    return tokenizer.convert_ids_to_tokens(ids[0])


def training_template(plan, tokenizer) -> str:
    """The chat template the run trained with (the model's own, a built-in, or a Jinja file)."""
    return resolve_template(tokenizer, plan.data.chat_template)[0]


def end_of_turn_ids(tokenizer, template: str) -> list[int]:
    """Ids that end an assistant turn: the template's end-of-turn token and the tokenizer's EOS."""
    ids = []
    try:
        end = template_end_token(tokenizer, template)
    except HeadtuneError:
        end = None
    for tok in (end, tokenizer.eos_token):
        if tok is None:
            continue
        i = tokenizer.convert_tokens_to_ids(tok)
        if i is not None and i != tokenizer.unk_token_id and i not in ids:
            ids.append(i)
    return ids


_MARKS = ("\u2063SYS\u2063", "\u2063U1\u2063", "\u2063A1\u2063", "\u2063U2\u2063", "\u2063A2\u2063")


def template_parts(tokenizer, template: str) -> dict | None:
    """The text around each role's content in ``template``, found by rendering marker messages:
    {system_prefix, system_suffix, user_prefix, user_suffix, assistant_prefix, assistant_suffix,
    default_system}. None when the template does not have that simple shape."""
    s, u1, a1, u2, a2 = _MARKS
    msgs = [
        {"role": "system", "content": s},
        {"role": "user", "content": u1},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": u2},
        {"role": "assistant", "content": a2},
    ]
    try:
        full = render(tokenizer, msgs, template, False)
        no_gen = render(tokenizer, msgs[1:2], template, False)
        gen = render(tokenizer, msgs[1:2], template, True)
    except HeadtuneError:
        return None
    pos = [full.find(m) for m in _MARKS]
    if min(pos) < 0 or pos != sorted(pos) or not gen.startswith(no_gen):
        return None
    seg = [full[: pos[0]]] + [full[pos[i] + len(_MARKS[i]) : pos[i + 1]] for i in range(4)]
    tail = full[pos[4] + len(a2) :]
    a_prefix = gen[len(no_gen) :]
    a_suffix = tail
    if not seg[3].startswith(a_suffix):
        return None
    u_prefix = seg[3][len(a_suffix) :]
    if not (seg[2].endswith(a_prefix) and seg[4] == seg[2] and seg[1].endswith(u_prefix)):
        return None
    u_suffix = seg[2][: len(seg[2]) - len(a_prefix)]
    sys_suffix = seg[1][: len(seg[1]) - len(u_prefix)]
    # A BOS the template writes itself is dropped (llama.cpp adds it); not a BOS that is part of
    # every turn's header (SmolLM2's BOS is <|im_start|>).
    bos = tokenizer.bos_token or ""
    bos = "" if u_prefix.startswith(bos) else bos
    sys_prefix = seg[0][len(bos) :] if bos and seg[0].startswith(bos) else seg[0]
    # A system message the template adds when the conversation has none (SmolLM2 does).
    default_system = ""
    head = no_gen.split(u1, 1)[0]
    head = head[len(bos) :] if bos and head.startswith(bos) else head
    if head != u_prefix and head.startswith(sys_prefix) and head.endswith(sys_suffix + u_prefix):
        default_system = head[len(sys_prefix) : len(head) - len(sys_suffix + u_prefix)]
    return dict(
        system_prefix=sys_prefix,
        system_suffix=sys_suffix,
        user_prefix=u_prefix,
        user_suffix=u_suffix,
        assistant_prefix=a_prefix,
        assistant_suffix=a_suffix,
        default_system=default_system,
    )
