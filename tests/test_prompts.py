"""Prompt styles: the book's Alpaca and Phi-3 formats character for character, extraction, the registry."""

from __future__ import annotations

import doctest
import json

import pytest

import gpt_sft.data.prompts as prompts
from gpt_sft.data.prompts import (
    PromptStyle,
    available_prompt_styles,
    extract_response,
    format_prompt,
    format_response,
    format_text,
    get_prompt_style,
    register_prompt_style,
    unregister_prompt_style,
)


def reference_prompt(entry, style):
    """The book's two prompt formats as DESIGN part 1 states them (the formats are facts; this is our
    own reference, written from that description)."""
    has_input = bool(entry["input"])
    if style == "alpaca":
        head = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                "the request.\n\n### Instruction:\n")
        return head + entry["instruction"] + ("\n\n### Input:\n" + entry["input"] if has_input else "")
    return "<|user|>\n" + entry["instruction"] + ("\n" + entry["input"] if has_input else "")


BOOK = {
    "alpaca": (lambda e: reference_prompt(e, "alpaca"), lambda e: f"\n\n### Response:\n{e['output']}", "### Response:"),
    "phi3": (lambda e: reference_prompt(e, "phi3"), lambda e: f"\n<|assistant|>:\n{e['output']}", "<|assistant|>:"),
}


@pytest.fixture(scope="module")
def book_entries(book_data_path):
    return json.loads(book_data_path.read_text())


@pytest.mark.parametrize("style", ["alpaca", "phi3"])
def test_styles_match_the_book_on_all_entries(book_entries, style):
    book_prompt, book_response, marker = BOOK[style]
    assert any(e["input"] for e in book_entries) and any(not e["input"] for e in book_entries)
    for entry in book_entries:
        prompt = format_prompt(entry, style)
        assert prompt == book_prompt(entry)
        assert format_response(entry, style) == book_response(entry)
        assert format_text(entry, style) == (prompt, book_prompt(entry) + book_response(entry))
        # The book's extraction on a typical generation (prompt + response + trailing space)
        generated = prompt + book_response(entry) + " \n"
        expected = generated[len(prompt):].replace(marker, "").strip()
        assert extract_response(generated, prompt, style) == expected == entry["output"].strip()


def test_exact_text_of_both_styles():
    entry = {"instruction": "Rewrite the sentence.", "input": "The cat sat.", "output": "The cat was sitting."}
    assert format_prompt(entry) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nRewrite the sentence.\n\n### Input:\nThe cat sat."
    )
    assert format_response(entry) == "\n\n### Response:\nThe cat was sitting."
    assert format_prompt(entry, "phi3") == "<|user|>\nRewrite the sentence.\nThe cat sat."
    assert format_response(entry, "phi3") == "\n<|assistant|>:\nThe cat was sitting."
    assert extract_response("P\n<|assistant|>:\n  Hi.\n", "P", "phi3") == "Hi."
    assert extract_response("P\n\n### Response:\nHi.", "P") == "Hi."


@pytest.mark.parametrize("style", ["alpaca", "phi3"])
def test_missing_or_null_input_means_empty(style):
    base = {"instruction": "Say hi.", "output": "Hi."}
    expected = format_prompt({**base, "input": ""}, style)
    assert format_prompt(base, style) == expected
    assert format_prompt({**base, "input": None}, style) == expected
    assert "Input" not in expected
    # like the book, any non-empty input (even whitespace) is shown
    assert format_prompt({**base, "input": " "}, style) != expected


def test_user_data_with_braces_is_not_reformatted():
    entry = {"instruction": "Print {x} and {0} and {{y}}", "input": "{input}", "output": "{output}"}
    assert format_prompt(entry).endswith("Print {x} and {0} and {{y}}\n\n### Input:\n{input}")
    assert format_response(entry) == "\n\n### Response:\n{output}"


def test_register_format_string_style_and_extra_fields():
    style = register_prompt_style(
        "test-tagged",
        prompt="[{category}] {instruction}{input_section}",
        input_template=" | {input}",
        response="\nA: {output}",
        response_marker="A:",
    )
    try:
        assert "test-tagged" in available_prompt_styles()
        entry = {"instruction": "Add.", "input": "2 3", "output": "5", "category": "math"}
        assert format_prompt(entry, "test-tagged") == "[math] Add. | 2 3"
        assert format_prompt({**entry, "input": ""}, "test-tagged") == "[math] Add."
        assert format_response(entry, "test-tagged") == "\nA: 5"
        prompt = format_prompt(entry, "test-tagged")
        assert extract_response(prompt + "\nA: 5 ", prompt, "test-tagged") == "5"
        assert get_prompt_style("test-tagged") is style
        with pytest.raises(KeyError, match=r"test-tagged.*\{category\}"):
            format_prompt({"instruction": "x", "output": "y"}, "test-tagged")
        with pytest.raises(ValueError, match="already registered"):
            register_prompt_style("test-tagged", prompt="{instruction}", response="{output}")
        register_prompt_style("test-tagged", prompt="{instruction}", response="{output}", overwrite=True)
        assert format_prompt(entry, "test-tagged") == "Add."
    finally:
        unregister_prompt_style("test-tagged")
    assert "test-tagged" not in available_prompt_styles()


def test_register_function_style_and_custom_extract():
    def prompt_fn(entry):
        return f"Q: {entry['instruction']}" + (f" ({entry['input']})" if entry["input"] else "")

    register_prompt_style(
        "test-fn", prompt=prompt_fn, response=lambda e: f"\nA: {e['output']}", extract=lambda g, p: g[len(p):][4:]
    )
    try:
        entry = {"instruction": "Hi?", "output": "Hello"}  # no input key at all
        assert format_prompt(entry, "test-fn") == "Q: Hi?"
        assert format_response(entry, "test-fn") == "\nA: Hello"
        assert extract_response("Q: Hi?\nA: Hello", "Q: Hi?", "test-fn") == "Hello"
    finally:
        unregister_prompt_style("test-fn")


def test_unregistered_style_instance_can_be_passed_directly():
    style = PromptStyle("inline", prompt="> {instruction}", response=" = {output}")
    assert format_prompt({"instruction": "a", "output": "b"}, style) == "> a"
    assert format_response({"instruction": "a", "output": "b"}, style) == " = b"
    assert "inline" not in available_prompt_styles()


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown prompt style 'nope'.*alpaca.*phi3"):
        format_prompt({"instruction": "a", "output": "b"}, "nope")
    with pytest.raises(ValueError, match="built in"):
        register_prompt_style("alpaca", prompt="{instruction}", response="{output}", overwrite=True)
    with pytest.raises(ValueError, match="built in"):
        unregister_prompt_style("phi3")
    with pytest.raises(TypeError, match="needs prompt= and response="):
        register_prompt_style("x", prompt="{instruction}")
    with pytest.raises(ValueError, match="not a valid format string"):
        PromptStyle("bad", prompt="{instruction", response="{output}")
    with pytest.raises(ValueError, match="positional"):
        PromptStyle("bad", prompt="{}", response="{output}")
    with pytest.raises(TypeError, match="format string or a function"):
        PromptStyle("bad", prompt=3, response="{output}")
    bad = PromptStyle("bad-fn", prompt=lambda e: 3, response="{output}")
    with pytest.raises(TypeError, match="returned int"):
        format_prompt({"instruction": "a", "output": "b"}, bad)


def test_module_doctests():
    result = doctest.testmod(prompts)
    assert result.attempted > 5 and result.failed == 0
    assert "chatml-ish" not in available_prompt_styles()


def test_a_template_cannot_pad_a_field_to_gigabytes():
    """A recipe's template is read from a downloaded file: {instruction:>999999999} made generate allocate more
    than 7 GB per prompt. Widths and precisions are bounded, and none comes from the data itself."""
    from gpt_sft.data.prompts import MAX_TEMPLATE_WIDTH
    from gpt_sft.data.recipe import Recipe

    spec = {"name": "padded", "prompt": "{instruction:>999999999}", "response": " {output}"}
    with pytest.raises(ValueError, match="pads or cuts to 999,999,999 characters, more than 1,000"):
        Recipe(prompt_style="padded", prompt_style_spec=spec).style()
    with pytest.raises(ValueError, match="has a field inside its format spec"):
        PromptStyle(name="nested", prompt="{instruction:>{input}}", response=" {output}")
    with pytest.raises(ValueError, match="characters of text, more than"):
        PromptStyle(name="long", prompt="x" * 100_001 + "{instruction}", response=" {output}")
    fine = PromptStyle(name="fine", prompt=f"{{instruction:>{MAX_TEMPLATE_WIDTH}.20}}", response=" {output}")
    assert len(fine.format_prompt({"instruction": "Hi", "input": ""})) == MAX_TEMPLATE_WIDTH
