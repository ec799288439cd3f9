"""Model profiles: defaults, the override file, virtual models, and bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from role_injector.profiles import ProfileError, load_profiles


def test_defaults() -> None:
    profiles = load_profiles()
    qwen = profiles.for_model("qwen3:8b")
    assert (qwen.tokenizer, qwen.format, qwen.exact) == ("qwen", "chatml", True)
    assert profiles.for_model("Qwen2.5-Coder:7B").tokenizer == "qwen"
    assert profiles.for_model("hf.co/bartowski/qwen2.5-7b-instruct-gguf:Q4_K_M").tokenizer == "qwen"
    newer = profiles.for_model("qwen3.6:27b")
    assert (newer.tokenizer, newer.format, newer.exact) == ("qwen3.5", "chatml", True)
    assert profiles.for_model("llama3.1:8b").format == "llama3"
    assert profiles.for_model("mistral:7b").format == "mistral"
    assert profiles.for_model("gemma3:4b").format == "gemma"
    unknown = profiles.for_model("phi4:14b")
    assert (unknown.tokenizer, unknown.format, unknown.exact) == ("cl100k_base", "chatml", False)
    assert profiles.for_model(None) == unknown


def test_the_file_overrides_defaults_and_declares_virtual_models(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - {match: 'qwen3*', context_window: 32768, reserve_output: 2048, tokenizer: qwen}\n"
        "virtual_models:\n  engineer: {base: 'qwen3:8b', role: agi-engineer, budget: 2000, params: {top_k: 20}}\n"
        "  whole-history: {base: 'qwen3:8b', role: manifest, context_policy: shrink_role, history_share: 0.4}\n"
    )
    profiles = load_profiles(path)
    assert profiles.for_model("qwen3:8b").context_window == 32768
    assert profiles.for_model("qwen3:8b").exact is True
    assert profiles.for_model("qwen2.5:7b").context_window == 8192
    engineer = profiles.virtual_model("engineer")
    assert engineer is not None
    assert (engineer.base, engineer.role, engineer.options.budget) == ("qwen3:8b", "agi-engineer", 2000)
    # the role's, else the default
    assert (engineer.options.context_policy, engineer.options.history_share) == (None, None)
    whole = profiles.virtual_model("whole-history")
    assert whole is not None and (whole.options.context_policy, whole.options.history_share) == ("shrink_role", 0.4)
    adhoc = profiles.virtual_model("qwen3:8b@agi-engineer")
    assert adhoc is not None and (adhoc.base, adhoc.role) == ("qwen3:8b", "agi-engineer")
    assert profiles.virtual_model("qwen3:8b") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [{match: x, tokenizer: gpt2}]", "tokenizer must be one of"),
        ("models: [{match: x, format: alpaca}]", "format must be one of"),
        ("models: [{match: x, context_window: -1}]", "positive whole number"),
        ("models: [{match: x, margin: 0.5}]", "margin must be"),
        ("models: [{tokenizer: qwen}]", "'match' pattern"),
        ("virtual_models: {v: {base: qwen3}}", "needs 'base'"),
        ("virtual_models: {v: {base: q, role: r, context_policy: all}}", "'context_policy' must be one of"),
        ("virtual_models: {v: {base: q, role: r, history_share: 1.5}}", "'history_share' must be a number"),
        ("colour: blue", "must be a mapping with 'models'"),
        ("models: [unclosed", "not valid YAML"),
    ],
)
def test_bad_profile_files_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=message):
        load_profiles(path)
