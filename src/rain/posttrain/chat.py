"""The ChatML-style chat template over rain's special tokens, rendered as text, as token ids with a loss
mask (1 only on what the assistant says), and as the Jinja string that transformers' apply_chat_template runs.

    <|im_start|>{role}\\n{content}<|im_end|>\\n    per turn; roles system (optional, first), user, assistant

A conversation is a list of {"role": ..., "content": ...} dicts."""

from __future__ import annotations

from rain.data.tokenizer import IM_END, IM_START, SPECIAL_TOKENS, Tokenizer
from rain.errors import RainError

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
GENERATION_HEADER = f"{IM_START}assistant\n"

# Same text as render_text: no default system prompt, no whitespace outside the quoted strings.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def render_turn(message: Message) -> str:
    return f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n"


def render_text(messages: list[Message], add_generation_prompt: bool = False) -> str:
    text = "".join(render_turn(m) for m in messages)
    return text + GENERATION_HEADER if add_generation_prompt else text


def conversation_problem(messages: list[Message]) -> str | None:
    """Why this conversation cannot be trained on (a short reason used as a skip counter), or None.
    Valid: an optional system turn, then user/assistant alternating from user, ending with assistant.
    Content must be non-blank and free of the tokenizer's special-token strings (they would be read as markup)."""
    if any(m["role"] not in ROLES for m in messages):
        return "unknown_role"
    if any(not m["content"].strip() for m in messages):
        return "empty_message"
    if any(tok in m["content"] for m in messages for tok in SPECIAL_TOKENS):
        return "special_token_in_text"
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not any(m["role"] == "assistant" for m in turns):
        return "no_assistant_turn"
    expected = ("user", "assistant")
    if any(m["role"] != expected[i % 2] for i, m in enumerate(turns)):
        return "roles_out_of_order"
    if turns[-1]["role"] != "assistant":
        return "ends_with_user"
    return None


def _check_tokenizer(tokenizer: Tokenizer) -> None:
    for token in (IM_START, IM_END):
        if tokenizer.token_id(token) is None:
            raise RainError(f"the tokenizer has no {token} token, which the chat template needs")


def encode_chat(tokenizer: Tokenizer, messages: list[Message]) -> tuple[list[int], list[int], list[int]]:
    """-> (ids, loss_mask, turn_ends). The whole text is encoded at once, so the ids equal what
    apply_chat_template gives. loss_mask[i] is 1 where token i is assistant content or the assistant's
    closing <|im_end|>; turn_ends[k] is the number of tokens up to and including turn k (a valid cut)."""
    _check_tokenizer(tokenizer)
    text, spans, turn_end_chars = "", [], []
    for m in messages:
        start = len(text) + len(IM_START) + len(m["role"]) + 1
        text += render_turn(m)
        if m["role"] == "assistant":
            spans.append((start, len(text) - 1))  # content + <|im_end|>, not the trailing newline
        turn_end_chars.append(len(text))
    ids, offsets = tokenizer.encode_with_offsets(text)  # with the tokenizer's own pre-splitting (Korean morphemes)
    # A token is trained on when it overlaps an assistant span (offsets are in characters). Only content that
    # starts with whitespace + newline can merge with the header's newline into one token, which is then trained.
    mask, k = [], 0
    for s, e in offsets:
        while k < len(spans) and spans[k][1] <= s:
            k += 1
        mask.append(int(k < len(spans) and e > spans[k][0]))
    ends = [e for _, e in offsets]
    turn_ends, i = [], 0
    for char_end in turn_end_chars:
        while i < len(ends) and ends[i] <= char_end:
            i += 1
        turn_ends.append(i)
    return ids, mask, turn_ends


def encode_prompt(tokenizer: Tokenizer, messages: list[Message]) -> list[int]:
    """The ids to generate the next assistant turn from: the conversation + `<|im_start|>assistant\\n`.
    Stop generating at <|im_end|> (tokenizer.token_id(IM_END))."""
    _check_tokenizer(tokenizer)
    return tokenizer.encode(render_text(messages, add_generation_prompt=True))
