"""Modelfiles: the reader behaves as Ollama's parser on Ollama's own test cases (ollama/ollama
parser/parser_test.go), and any text written by the renderer reads back as itself, or, when a
Modelfile cannot carry it, as `carried_text` of it, which differs only in invisible characters."""

from __future__ import annotations

import struct
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from role_injector.errors import InvalidRequest
from role_injector.formats import CONTROL_TOKEN, ZERO_WIDTH_SPACE, neutralise
from role_injector.modelfile import (
    COMBINING_GRAPHEME_JOINER,
    PARAMETER_TYPES,
    Command,
    carried_text,
    check_parameters,
    expressible,
    parse_modelfile,
    quote,
    read_modelfile,
    render_modelfile,
)

MANY = settings(max_examples=600, deadline=None)

# --- Ollama's own parser tests, ported -----------------------------------------------------------

GO_TEMPLATE = ("{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
               "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
               "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>")
GO_CASES: list[tuple[str, list[tuple[str, str]]]] = [
    (f'\nFROM model1\nADAPTER adapter1\nLICENSE MIT\nPARAMETER param1 value1\nPARAMETER param2 value2\n'
     f'TEMPLATE """{GO_TEMPLATE}"""    \n',
     [("model", "model1"), ("adapter", "adapter1"), ("license", "MIT"), ("param1", "value1"),
      ("param2", "value2"), ("template", GO_TEMPLATE)]),
    ("\nFROM base\nDRAFT ./assistant\n", [("model", "base"), ("draft", "./assistant")]),
    (f'\nFROM "     model 1"\nADAPTER      adapter3\nLICENSE "MIT       "\nPARAMETER param1        value1\n'
     f'PARAMETER param2    value2\nTEMPLATE """   {GO_TEMPLATE}   """    \n',
     [("model", "     model 1"), ("adapter", "adapter3"), ("license", "MIT       "), ("param1", "value1"),
      ("param2", "value2"), ("template", f"   {GO_TEMPLATE}   ")]),
    ('FROM "FOO  BAR  "', [("model", "FOO  BAR  ")]),
    ('FROM "FOO BAR"\nPARAMETER param1 value1', [("model", "FOO BAR"), ("param1", "value1")]),
    ("FROM     FOOO BAR    ", [("model", "FOOO BAR")]),
    ("FROM /what/is/the path ", [("model", "/what/is/the path")]),
    ("FROM llama3:7b-instruct-q4_K_M", [("model", "llama3:7b-instruct-q4_K_M")]),
    ("PARAMETER param1 value1\nFROM foo", [("param1", "value1"), ("model", "foo")]),
    ("PARAMETER what the \nFROM lemons make lemonade ", [("what", "the"), ("model", "lemons make lemonade")]),
    ("\nFROM foo\nRENDERER renderer1\n", [("model", "foo"), ("renderer", "renderer1")]),
    ("\nFROM foo\nPARSER parser1\n", [("model", "foo"), ("parser", "parser1")]),
    ("\nFROM foo\nMESSAGE system You are a file parser. Always parse things.",
     [("model", "foo"), ("message", "system: You are a file parser. Always parse things.")]),
    ("\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\nMESSAGE user Hey there!\n"
     "MESSAGE assistant Hello, I want to parse all the things!\n",
     [("model", "foo"), ("message", "system: You are a file parser. Always parse things."),
      ("message", "user: Hey there!"), ("message", "assistant: Hello, I want to parse all the things!")]),
    ('\nFROM foo\nMESSAGE system """\nYou are a multiline file parser. Always parse things.\n"""\n\t\t\t',
     [("model", "foo"), ("message", "system: \nYou are a multiline file parser. Always parse things.\n")]),
    ('\nFROM foo\nSYSTEM """\nThis is a\nmultiline system.\n"""\n\t\t\t',
     [("model", "foo"), ("system", "\nThis is a\nmultiline system.\n")]),
    ('\nFROM foo\nSYSTEM """\nThis is a\nmultiline system."""\n\t\t\t',
     [("model", "foo"), ("system", "\nThis is a\nmultiline system.")]),
    ('\nFROM foo\nSYSTEM """This is a\nmultiline system."""\n\t\t\t',
     [("model", "foo"), ("system", "This is a\nmultiline system.")]),
    ('\nFROM foo\nSYSTEM """\nThis is a multiline system with "quotes".\n"""\n',
     [("model", "foo"), ("system", '\nThis is a multiline system with "quotes".\n')]),
    ('\nFROM foo\nSYSTEM """"""\n', [("model", "foo"), ("system", "")]),
    ('\nFROM foo\nSYSTEM ""\n', [("model", "foo"), ("system", "")]),
    ("\nFROM foo\nSYSTEM \"'\"\n", [("model", "foo"), ("system", "'")]),
    ('\nFROM foo\nSYSTEM """\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""\n',
     [("model", "foo"), ("system", "''\"'\"\"'\"\"'\"'''''\"\"'\"\"'")]),
    ('\nFROM foo\nTEMPLATE """\n{{ .Prompt }}\n"""', [("model", "foo"), ("template", "\n{{ .Prompt }}\n")]),
    ("\n# comment\nFROM foo\n\t", [("model", "foo")]),
    ("FROM foo\nPARAMETER stop ### User: \n", [("model", "foo"), ("stop", "### User:")]),
    ('FROM foo\nPARAMETER stop "### User: "\n', [("model", "foo"), ("stop", "### User: ")]),
    ('FROM foo\nPARAMETER stop """### User:\n"""\n', [("model", "foo"), ("stop", "### User:\n")]),
    ("FROM foo\nPARAMETER stop </s>\n", [("model", "foo"), ("stop", "</s>")]),
]
GO_ERRORS = [
    ("", "no FROM line"),
    ("PARAMETER param1 value1", "no FROM line"),
    ("\nFROM foo\nPARAMETER param1\n", "unexpected EOF"),
    ("\nFROM foo\nBADCOMMAND param1 value1\n", "line 3: command must be one of"),
    ("\nFROM foo\nMESSAGE badguy I'm a bad guy!\n", "line 3: message role must be one of"),
    ("\nFROM foo\nMESSAGE system\n", "unexpected EOF"),
    ("\nFROM foo\nMESSAGE system", "unexpected EOF"),
    ('\nFROM foo\nSYSTEM """This is a multiline system.""\n\t\t\t', "unexpected EOF"),
    ('\nFROM foo\nSYSTEM "\n\t\t\t', "unexpected EOF"),
]


@pytest.mark.parametrize(("text", "expected"), GO_CASES)
def test_the_reader_parses_ollamas_test_cases_as_ollama_does(text: str, expected: list[tuple[str, str]]) -> None:
    assert parse_modelfile(text) == [Command(name, args) for name, args in expected]


@pytest.mark.parametrize(("text", "message"), GO_ERRORS)
def test_the_reader_refuses_what_ollama_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_modelfile(text)


def test_a_byte_order_mark_and_crlf_line_ends_are_read_as_ollama_reads_them() -> None:
    assert read_modelfile('\ufeffFROM foo\r\nSYSTEM """a\r\nb"""\r\n') == {"from": "foo", "system": "a\r\nb"}


def test_characters_go_does_not_print_are_dropped_inside_values() -> None:
    text = f'FROM foo\nSYSTEM """<{ZERO_WIDTH_SPACE}|im_end|>\u00a0x\u200d\ty"""\n'
    assert read_modelfile(text)["system"] == "<|im_end|>x\ty"  # a dropped ZWSP re-arms the control token


def test_the_create_request_types_parameters_like_ollamas_cli() -> None:
    text = ("FROM qwen3:8b\nPARAMETER num_ctx 8192\nPARAMETER temperature 0.1234567891\nPARAMETER use_mmap True\n"
            "PARAMETER stop <|im_end|>\nPARAMETER stop \"\"\"\n\n\"\"\"\nPARAMETER mirostat 1\n"
            "LICENSE MIT\nLICENSE BSD\n"
            "MESSAGE user hi: there\nADAPTER ./a.gguf\nADAPTER ./b.gguf\n")
    assert read_modelfile(text) == {
        "from": "qwen3:8b",
        "parameters": {"num_ctx": 8192, "temperature": 0.12345679, "use_mmap": True, "stop": ["<|im_end|>", "\n\n"]},
        "license": ["MIT", "BSD"],
        "messages": [{"role": "user", "content": "hi: there"}],
        "adapters": ["./b.gguf"],  # one adapter: the last ADAPTER wins, as in Ollama
    }


@pytest.mark.parametrize(("line", "message"), [
    ("PARAMETER num_ctx 8k", "invalid int"), ("PARAMETER top_k 1.5", "invalid int"),
    ("PARAMETER temperature warm", "invalid float"), ("PARAMETER temperature 1e39", "invalid float"),
    ("PARAMETER use_mmap yes", "invalid bool"), ("PARAMETER numa true", "unknown parameter 'numa'"),
])
def test_parameter_values_of_the_wrong_type_are_refused(line: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        read_modelfile(f"FROM foo\n{line}\n")


# --- writing and reading back ------------------------------------------------------------------

TRICKY = ['"""', '"', "\\", "#", "# heading", "\n", "\r\n", "\r", " ", "\t", "x", "Я", "<|im_end|>", "\u200b",
          "\u00a0", "\u2028", "\x85", "\x00", "\u034f", "FROM x", '"""\n', "  \n", "SYSTEM"]
tricky_text = st.lists(st.sampled_from(TRICKY) | st.text(max_size=8), max_size=24).map("".join)
any_text = st.text() | tricky_text


def read_system(text: str) -> str:
    return read_modelfile(render_modelfile("qwen3:8b", system=text))["system"]


def visible(text: str) -> str:
    """Letters, numbers, punctuation and symbols: what carrying may not change."""
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LNPS")


@MANY
@given(text=any_text)
def test_any_text_reads_back_as_itself_or_as_its_carried_form(text: str) -> None:
    carried = carried_text(text)
    assert expressible(carried)
    assert read_system(carried) == carried
    assert carried_text(carried) == carried
    if expressible(text):
        assert carried == text and read_system(text) == text
    else:
        with pytest.raises(InvalidRequest):
            quote(text)
        assert visible(carried) == visible(text)
        assert CONTROL_TOKEN.search(carried) is None  # no control token formed by what was dropped


@MANY
@given(text=tricky_text)
def test_a_neutralised_role_keeps_its_control_tokens_broken_in_the_modelfile(text: str) -> None:
    read = read_system(carried_text(neutralise(text)))
    assert CONTROL_TOKEN.search(read) is None


def test_carrying_changes_only_what_it_must() -> None:
    assert carried_text('def f():\n    """Docstring."""\n    pass') == (
        f'def f():\n    """Docstring."""{COMBINING_GRAPHEME_JOINER}\n    pass')
    assert carried_text(f"<{ZERO_WIDTH_SPACE}|im_end|>") == f"<{COMBINING_GRAPHEME_JOINER}|im_end|>"
    assert carried_text("a\u00a0b\u2028c\u200dd") == "a b\ncd"
    assert carried_text("<\u200d|im_start|>") == f"<{COMBINING_GRAPHEME_JOINER}|im_start|>"
    assert carried_text('say """hi""" and \\n # not a comment') == 'say """hi""" and \\n # not a comment'


def test_the_rendered_modelfile_is_plain_to_read() -> None:
    text = render_modelfile("qwen3:8b", system="You are\nhelpful.", comments=["made by\nRole Injector"],
                            parameters={"num_ctx": 8192, "temperature": 0.3, "stop": ["<|im_end|>", "a b"]},
                            adapters=["./adapter.gguf"])
    assert text == ('# made by Role Injector\nFROM qwen3:8b\nADAPTER ./adapter.gguf\nSYSTEM """You are\nhelpful."""\n'
                    "PARAMETER num_ctx 8192\nPARAMETER temperature 0.3\nPARAMETER stop <|im_end|>\n"
                    "PARAMETER stop a b\n")


def float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


stop_strings = st.lists(any_text.filter(expressible), min_size=1, max_size=4)
parameters = st.fixed_dictionaries({}, optional={
    "num_ctx": st.integers(1, 2**31), "seed": st.integers(-(2**63), 2**63 - 1), "top_k": st.integers(0, 1000),
    "temperature": st.floats(0, 2), "top_p": st.floats(0, 1, allow_subnormal=False), "min_p": st.integers(0, 1),
    "use_mmap": st.booleans(), "stop": stop_strings,
})


@MANY
@given(values=parameters)
def test_parameters_read_back_with_their_types(values: dict) -> None:
    read = read_modelfile(render_modelfile("qwen3:8b", parameters=values)).get("parameters", {})
    assert set(read) == set(values)
    for name, value in values.items():
        if PARAMETER_TYPES[name] is float:
            assert float32(read[name]) == float32(value)  # Ollama's CLI reads them as float32
        else:
            assert read[name] == value and type(read[name]) is type(value)


@pytest.mark.parametrize("values", [
    {"think": True}, {"mirostat": 1}, {"num_ctx": "8192"}, {"num_ctx": True}, {"temperature": float("nan")},
    {"use_mmap": 1}, {"stop": [1]}, {"seed": 2**63},
])
def test_values_ollama_would_not_take_are_refused(values: dict) -> None:
    with pytest.raises(InvalidRequest):
        check_parameters(values)


def test_a_stop_string_a_modelfile_cannot_carry_is_refused_not_changed() -> None:
    with pytest.raises(InvalidRequest, match="cannot be written in a Modelfile"):
        render_modelfile("qwen3:8b", parameters={"stop": ["a\u200bb"]})
