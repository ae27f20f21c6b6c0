"""The shared rendering function: token ids and loss mask from the chat template."""

from __future__ import annotations

import pytest

from tuneloop.data.render import ChatRenderer, TemplateError


@pytest.fixture(scope="module")
def renderer(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    return ChatRenderer(AutoTokenizer.from_pretrained(smollm2_tokenizer_dir))


def trained_text(renderer: ChatRenderer, rendered) -> str:
    ids = [t for t, m in zip(rendered.input_ids, rendered.mask, strict=True) if m]
    return renderer.tokenizer.decode(ids)


CONV = [
    {"role": "system", "content": "Classify."},
    {"role": "user", "content": "hello there"},
    {"role": "assistant", "content": "Greeting"},
    {"role": "user", "content": "bye"},
    {"role": "assistant", "content": "Farewell"},
]


def test_only_assistant_turns_and_their_end_token_are_trained(renderer):
    r = renderer.render(CONV)
    assert trained_text(renderer, r) == "Greeting<|im_end|>Farewell<|im_end|>"
    # the newline after <|im_end|> and every prompt token carry no loss
    assert renderer.tokenizer.decode(r.input_ids) == renderer.text(CONV)


def test_weight_zero_message_is_not_trained(renderer):
    conv = [dict(m) for m in CONV]
    conv[2]["weight"] = 0
    assert trained_text(renderer, renderer.render(conv)) == "Farewell<|im_end|>"


def test_changing_user_text_leaves_trained_tokens_unchanged(renderer):
    other = [dict(m) for m in CONV]
    other[1]["content"] = "a completely different and much longer user message"
    a, b = renderer.render(CONV), renderer.render(other)
    assert [t for t, m in zip(a.input_ids, a.mask, strict=True) if m] == [
        t for t, m in zip(b.input_ids, b.mask, strict=True) if m
    ]


def test_prompt_rendering_is_a_prefix_of_training_rendering(renderer):
    full = renderer.render(CONV[:3])
    prompt = renderer.render_prompt(CONV[:2])
    assert full.input_ids[: len(prompt)] == prompt
    assert not any(full.mask[: len(prompt)])
    assert all(full.mask[len(prompt) : len(prompt) + 2])


def test_default_system_prompt_is_rendered_when_absent(renderer):
    text = renderer.text([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>assistant\n")


def test_text_parts_are_joined(renderer):
    parts = [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]
    conv = [{"role": "user", "content": parts}, {"role": "assistant", "content": "ok"}]
    assert renderer.text(conv) == renderer.text([{"role": "user", "content": "hello there"}, conv[1]])


def test_tool_calls_are_rendered_and_trained(renderer):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    conv = [
        {"role": "user", "content": "1+2?"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "3"},
        {"role": "assistant", "content": "3"},
    ]
    r = renderer.render(conv, tools)
    trained = trained_text(renderer, r)
    assert '"name": "add"' in trained and trained.endswith("3<|im_end|>")
    assert '"name": "add"' in renderer.text(conv, tools).split("<|im_start|>user")[0]  # tools in system prompt


def test_completion_format_trains_completion_and_eos(renderer):
    (r,) = renderer.render_completion([("Q: 2+2\nA:", " 4")])
    assert trained_text(renderer, r) == " 4<|im_end|>"


def test_batched_rendering_equals_one_at_a_time(renderer):
    convs = [
        (CONV, None),
        (CONV[:3], None),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], None),
    ]
    batched = renderer.render_many(convs)
    assert [b.input_ids for b in batched] == [renderer.render(m, t).input_ids for m, t in convs]


def test_template_that_rewrites_history_is_rejected(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    # renders only the last assistant message: prefixes are not prefixes of the whole
    tok.chat_template = (
        "{% for m in messages %}{% if m.role != 'assistant' or loop.last %}{{ m.role }}: {{ m.content }}\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(TemplateError):
        ChatRenderer(tok).render(CONV)
