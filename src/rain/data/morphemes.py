"""Korean morpheme pre-tokenisation (`data.pretokenize = "korean-morphemes"`): text is cut at the morpheme starts
the Kiwi analyser (kiwipiepy, the `korean` extra) finds, before the tokenizer is trained and before every encode,
so no token spans two morphemes. The pieces are slices of the original text, so their concatenation is the text
and decoding stays exact. Kiwi is not expressible in tokenizer.json: a tokenizer that needs it carries a sidecar
(rain.data.tokenizer.SIDECAR), and transformers gives the same ids from
`tok(split_morphemes(text), is_split_into_words=True, add_special_tokens=False)`."""

from __future__ import annotations

import re
from itertools import pairwise

from rain.errors import RainError

INSTALL_HINT = ("data.pretokenize = \"korean-morphemes\" needs the Korean morpheme analyser: "
                "pip install 'rain[korean]' (kiwipiepy)")

_kiwi = None  # loaded once per process, on first use (about 2 s)


def require_analyser() -> None:
    """Fail now, in one line, where the analyser is not installed (before any text is encoded without it)."""
    try:
        import kiwipiepy  # noqa: F401
    except ImportError:
        raise RainError(INSTALL_HINT) from None


def _analyser():
    global _kiwi
    if _kiwi is None:
        require_analyser()
        from kiwipiepy import Kiwi

        # Without the typo and multi-word dictionaries the load takes 1.3 s instead of 3.0 s (2-core dev machine)
        # and the morpheme starts were the same on all 756 paragraphs of benchmarks/korean_morphemes.py. One
        # thread: prepare already runs one process per core.
        _kiwi = Kiwi(num_workers=1, load_typo_dict=False, load_multi_dict=False)
    return _kiwi


# Hangul syllables and jamo: only cuts that touch Korean are kept, so English and code between Korean text are
# split by the tokenizer's own rules as in any other tokenizer (Kiwi's cuts there took code from 3.70 to 3.23
# bytes/token: docs/tokenizers.md).
HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff]")


def morpheme_cuts(text: str) -> list[int]:
    """Character offsets where a piece starts: every Korean morpheme's start (a contracted form such as 갔 = 가 + 었
    is one span, so one piece), moved back over one preceding space so that " 학교" stays one piece as " word"
    does in English. A cut with no Hangul on either side is left to the tokenizer, and text without Hangul is not
    analysed at all."""
    cuts = {0}
    if not HANGUL.search(text):
        return [0]
    for token in _analyser().tokenize(text):
        start = token.start
        if not (HANGUL.match(text, start) or (start > 0 and HANGUL.match(text, start - 1))):
            continue
        if start > 0 and text[start - 1] == " ":
            start -= 1
        cuts.add(start)
    return sorted(c for c in cuts if c < len(text))


# rain's special tokens (<|endoftext|>, <|im_start|>...) stay whole pieces, so the tokenizer still finds them.
SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>")


def split_morphemes(text: str) -> list[str]:
    """The text as consecutive pieces, none crossing a morpheme boundary and none cutting a <|...|> special-token
    string; "".join(pieces) == text."""
    pieces, at = [], 0
    for special in SPECIAL.finditer(text):
        pieces += _split(text[at: special.start()])
        pieces.append(special.group())
        at = special.end()
    return pieces + _split(text[at:])


def _split(text: str) -> list[str]:
    if not text:
        return []
    cuts = morpheme_cuts(text) + [len(text)]
    return [text[a:b] for a, b in pairwise(cuts)]
