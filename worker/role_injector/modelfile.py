'''Ollama Modelfiles: write one that `ollama create -f` reads back exactly, and read one as it does.

The reader is a port, rule for rule, of Ollama's own parser (ollama/ollama `parser/parser.go`,
`ParseFile` and `CreateRequest`; parameter types from `api.Options` and `api.Runner`). What that
grammar means for the text of a value:

- A value runs from the first character after `COMMAND ` to the first line end at which what was
  read so far, trimmed of blanks (space, tab, CR, LF), is complete: not starting with `"`, or
  `"…"`, or `"""…"""` (at least six characters). Quotes are then stripped; nothing else.
- There are no escapes: a backslash is a backslash. `#` starts a comment only where a command
  could start; inside a value it is text.
- Characters that Go does not count as printable (`strconv.IsPrint`: letters, marks, numbers,
  punctuation, symbols and the ASCII space) are dropped, except the tab, CR and LF a value keeps.
  That drops U+200B, the zero-width space `formats.neutralise` puts into control tokens, as well as
  no-break spaces, joiners and other format characters. Printable is judged by this Python's
  Unicode tables; Ollama's Go has the same or newer ones, which only add printable characters, so
  a character this Python does not know is treated as dropped and what is written reads the same.
- So a value can be carried exactly (`expressible`) when every character is kept and no line end
  follows `"""` with only blanks between; it is written bare when it is one line without blanks at
  its edges and does not start with `"`, else between `"""`.

A system prompt that cannot be carried exactly is first changed as little as possible
(`carried_text`): U+200B becomes U+034F (the combining grapheme joiner, printable and invisible, so
control tokens stay broken); other spaces become a space, line and paragraph separators a line
end; other invisible characters go; control tokens are neutralised again (a dropped character
could have joined one); and a U+034F follows every `"""` that ends a line. `role-injector ollama
create` sends the exact text through the API instead; only the printed Modelfile needs this.
'''

from __future__ import annotations

import math
import re
import struct
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from role_injector.errors import InvalidRequest
from role_injector.formats import ZERO_WIDTH_SPACE, neutralise

COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
            "message", "requires")
MESSAGE_ROLES = ("system", "user", "assistant")
# Ollama's model parameters and their Go types (api.Runner and api.Options).
PARAMETER_TYPES: dict[str, type] = {
    "num_ctx": int, "num_batch": int, "num_gpu": int, "main_gpu": int, "use_mmap": bool, "num_thread": int,
    "draft_num_predict": int, "num_keep": int, "seed": int, "num_predict": int, "top_k": int, "top_p": float,
    "min_p": float, "typical_p": float, "repeat_last_n": int, "temperature": float, "repeat_penalty": float,
    "presence_penalty": float, "frequency_penalty": float, "stop": list,
}
# Accepted by the Modelfile reader with a warning, then ignored.
DEPRECATED_PARAMETERS = frozenset({"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only",
                                   "use_mlock", "mirostat", "mirostat_tau", "mirostat_eta"})
INT64 = (-(2**63), 2**63 - 1)

BLANK = " \t\r\n"
COMBINING_GRAPHEME_JOINER = "\u034f"
TRIPLE_BEFORE_LINE_END = re.compile(r'"""(?=[ \t\r\n]*[\r\n])')
LINE_BREAKS = frozenset("\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
GO_INT = re.compile(r"[+-]?[0-9]+")
GO_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
GO_BOOLS = {**dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
            **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False)}


@dataclass(frozen=True)
class Command:
    """One command as Ollama's parser records it: `model` for FROM, the parameter's name for
    PARAMETER, `role: text` as the args of MESSAGE, else the command in lower case."""

    name: str
    args: str


def printable(ch: str) -> bool:
    """Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def kept(ch: str) -> bool:
    """Whether a character inside a value survives Ollama's parser."""
    return ch in "\t\r\n" or printable(ch)


def expressible(value: str) -> bool:
    """Whether some way of writing `value` in a Modelfile reads back as exactly `value`."""
    return all(kept(ch) for ch in value) and not TRIPLE_BEFORE_LINE_END.search(value)


def quote(value: str) -> str:
    """`value` as Ollama's parser reads it back exactly: bare when it can be, else between `\"\"\"`."""
    if not expressible(value):
        raise InvalidRequest("this text cannot be written in a Modelfile as it is (it has characters Ollama's "
                             "parser drops, or a line that ends in \"\"\")", details={"value": value[:200]})
    if value and value[0] not in BLANK + '"' and value[-1] not in BLANK and "\n" not in value and "\r" not in value:
        return value
    return '"""' + value + '"""'


def _carried_char(ch: str) -> str:
    if kept(ch):
        return ch
    if ch == ZERO_WIDTH_SPACE:
        return COMBINING_GRAPHEME_JOINER
    if ch in LINE_BREAKS:
        return "\n"
    return " " if unicodedata.category(ch) == "Zs" else ""


def carried_text(text: str) -> str:
    """The closest text to `text` that a Modelfile carries exactly (see the module's docstring);
    `text` itself when it already can be."""
    if expressible(text):
        return text
    mapped = neutralise("".join(_carried_char(ch) for ch in text))
    mapped = mapped.replace(ZERO_WIDTH_SPACE, COMBINING_GRAPHEME_JOINER)
    return TRIPLE_BEFORE_LINE_END.sub('"""' + COMBINING_GRAPHEME_JOINER, mapped)


# --- parameters -----------------------------------------------------------------------------------


def check_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama model parameters with values of their types (`stop` as a list of strings), or
    `InvalidRequest` naming the first one Ollama would not take."""
    out: dict[str, Any] = {}
    for name, value in parameters.items():
        kind = PARAMETER_TYPES.get(name)
        if kind is None:
            hint = " (deprecated: Ollama ignores it)" if name in DEPRECATED_PARAMETERS else ""
            raise InvalidRequest(f"{name!r} is not an Ollama model parameter{hint}; known: "
                                 f"{', '.join(sorted(PARAMETER_TYPES))}", details={"parameter": name})
        out[name] = _checked(name, kind, value)
    return out


def _checked(name: str, kind: type, value: Any) -> Any:
    def wrong(expected: str) -> InvalidRequest:
        return InvalidRequest(f"Ollama parameter {name!r} takes {expected}, not {value!r}", details={"parameter": name})

    if kind is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not INT64[0] <= value <= INT64[1]:
            raise wrong("a whole number")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise wrong("a number")
        return value
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise wrong("a string or a list of strings")
    return list(items)


def parameter_lines(parameters: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, value text) for each PARAMETER line; a list (`stop`) gives one line per item."""
    lines = []
    for name, value in check_parameters(parameters).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool):
                text = "true" if item else "false"
            elif isinstance(item, float):
                text = repr(item)  # the shortest text that reads back as the same number
            else:
                text = str(item)
            lines.append((name, text))
    return lines


# --- writing ----------------------------------------------------------------------------------


def render_modelfile(
    base: str,
    *,
    system: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    adapters: Sequence[str] = (),
    comments: Iterable[str] = (),
) -> str:
    """A Modelfile: comment lines, FROM, ADAPTER, SYSTEM and PARAMETER lines. Raises
    `InvalidRequest` for a value that cannot be written exactly (pass the system prompt through
    `carried_text` first)."""
    lines = ["# " + " ".join(comment.split()) for comment in comments]
    lines.append(f"FROM {quote(base)}")
    lines += [f"ADAPTER {quote(path)}" for path in adapters]
    if system is not None:
        lines.append(f"SYSTEM {quote(system)}")
    lines += [f"PARAMETER {name} {quote(text)}" for name, text in parameter_lines(parameters or {})]
    return "\n".join(lines) + "\n"


# --- reading, as Ollama's parser does -------------------------------------------------------------

_NIL, _NAME, _VALUE, _PARAMETER, _MESSAGE, _COMMENT = range(6)


class _SyntaxError(Exception):
    pass


def _is_alpha(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


def _step(ch: str, state: int) -> tuple[int, str]:
    """Go's parseRuneForState: the next state and the character to keep ("" for none)."""
    if state == _NIL:
        if ch == "#":
            return _COMMENT, ""
        return (_NIL, "") if ch in BLANK else (_NAME, ch)
    if state == _NAME:
        if _is_alpha(ch):
            return _NAME, ch
        if ch in " \t":
            return _VALUE, ""
        raise _SyntaxError(f"command must be one of {', '.join(map(repr, COMMANDS))}")
    if state == _VALUE:
        return (_NIL, ch) if ch in BLANK else (_VALUE, ch)
    if state in (_PARAMETER, _MESSAGE):
        if _is_alpha(ch) or (state == _PARAMETER and (ch in "0123456789_")):
            return state, ch
        if ch in " \t":
            return _VALUE, ""
        raise _SyntaxError("unexpected EOF")
    return (_NIL, "") if ch in "\r\n" else (_COMMENT, "")


class _Value:
    """The characters of a value being read, with the edges of its trimmed form kept up to date, so
    the check at each line end costs O(1) instead of Go's trim of the whole buffer."""

    def __init__(self) -> None:
        self.chars: list[str] = []
        self.first = -1  # index of the first and last characters that are not blank
        self.last = -1

    def add(self, ch: str) -> None:
        self.chars.append(ch)
        if ch not in BLANK:
            if self.first < 0:
                self.first = len(self.chars) - 1
            self.last = len(self.chars) - 1

    def unquoted(self) -> str | None:
        """Go's unquote(strings.TrimSpace(value)): the text, or None while a quote is open."""
        chars, first, last = self.chars, self.first, self.last
        if first < 0:
            return ""
        size = last - first + 1
        if size >= 3 and chars[first] == chars[first + 1] == chars[first + 2] == '"':
            if size >= 6 and chars[last] == chars[last - 1] == chars[last - 2] == '"':
                return "".join(chars[first + 3 : last - 2])
            return None
        if chars[first] == '"':
            return "".join(chars[first + 1 : last]) if size >= 2 and chars[last] == '"' else None
        return "".join(chars[first : last + 1])


def parse_modelfile(text: str) -> list[Command]:
    """The commands of a Modelfile as Ollama's `ParseFile` reads them; `InvalidRequest` (with the
    line) where it fails."""
    text = text.removeprefix("\ufeff")
    commands: list[Command] = []
    state = _NIL
    word: list[str] = []  # a command, parameter or message role being read
    value = _Value()
    name = role = ""
    line = 1
    try:
        for ch in text:
            if ch in "\r\n":
                line += 1
            following, out = _step(ch, state)
            if following != state:
                if state == _NAME:
                    command = "".join(word).lower()
                    if command not in COMMANDS:
                        raise _SyntaxError(f"command must be one of {', '.join(map(repr, COMMANDS))}")
                    if command == "parameter":
                        following = _PARAMETER
                    else:
                        following = _MESSAGE if command == "message" else following
                        name = "model" if command == "from" else command
                elif state == _PARAMETER:
                    name = "".join(word)
                elif state == _MESSAGE:
                    role = "".join(word)
                    if role not in MESSAGE_ROLES:
                        raise _SyntaxError('message role must be one of "system", "user", or "assistant"')
                elif state == _VALUE:
                    unquoted = None if out in " \t" else value.unquoted()
                    if unquoted is None:  # a blank inside the value, or a line end inside quotes
                        value.add(out)
                        continue
                    commands.append(Command(name, f"{role}: {unquoted}" if role else unquoted))
                    role = ""
                    value = _Value()
                word = []
                state = following
            if out and printable(out):
                (value.add if state == _VALUE else word.append)(out)
        if state == _VALUE:
            unquoted = value.unquoted()
            if unquoted is None:
                raise _SyntaxError("unexpected EOF")
            commands.append(Command(name, f"{role}: {unquoted}" if role else unquoted))
        elif state not in (_NIL, _COMMENT):
            raise _SyntaxError("unexpected EOF")
    except _SyntaxError as exc:
        raise InvalidRequest(f"Modelfile, line {line}: {exc}", details={"line": line}) from None
    if not any(command.name == "model" for command in commands):
        raise InvalidRequest("Modelfile: no FROM line")
    return commands


def _float32(value: float) -> float:
    """What arrives at Ollama's server for a float32 the CLI parsed: Go writes a float32 in JSON as
    the shortest decimal that reads back as the same float32."""
    single = struct.unpack("f", struct.pack("f", value))[0]
    for digits in range(1, 10):
        text = f"{single:.{digits}g}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == single:
            return float(text)
    return single


def _parameter_value(name: str, text: str) -> Any:
    """Go's api.FormatParams for one value."""
    kind = PARAMETER_TYPES.get(name)
    if kind is None:
        raise InvalidRequest(f"unknown parameter '{name}'", details={"parameter": name})
    if kind is int and GO_INT.fullmatch(text) and INT64[0] <= int(text) <= INT64[1]:
        return int(text)
    special = text.lower().lstrip("+-") in ("inf", "infinity", "nan")
    if kind is float and (GO_FLOAT.fullmatch(text) or special):
        try:
            number = _float32(float(text))
        except OverflowError:  # beyond float32: Go's ParseFloat reports a range error
            number = math.inf
        if math.isfinite(number) or special:
            return number
    if kind is bool and text in GO_BOOLS:
        return GO_BOOLS[text]
    if kind is list:
        return [text]
    raise InvalidRequest(f"invalid {kind.__name__} value [{text}] for parameter '{name}'", details={"parameter": name})


def create_request(commands: Sequence[Command]) -> dict[str, Any]:
    """The /api/create body `ollama create -f` builds from these commands (Go's CreateRequest), with
    FROM taken as a model name and ADAPTER / DRAFT as the paths the CLI would upload."""
    request: dict[str, Any] = {}
    parameters: dict[str, Any] = {}
    for command in commands:
        name, args = command.name, command.args
        if name == "model":
            request["from"] = args
        elif name == "adapter":  # one adapter: a later ADAPTER replaces an earlier one
            request["adapters"] = [args]
        elif name == "draft":
            request.setdefault("drafts", []).append(args)
        elif name in ("template", "system", "renderer", "parser", "requires"):
            request[name] = args
        elif name == "license":
            request.setdefault("license", []).append(args)
        elif name == "message":
            speaker, _, content = args.partition(": ")
            request.setdefault("messages", []).append({"role": speaker, "content": content})
        elif name not in DEPRECATED_PARAMETERS:
            value = _parameter_value(name, args)
            parameters[name] = parameters.get(name, []) + value if isinstance(value, list) else value
    if parameters:
        request["parameters"] = parameters
    return request


def read_modelfile(text: str) -> dict[str, Any]:
    """A Modelfile as the /api/create body `ollama create -f` would send."""
    return create_request(parse_modelfile(text))
