"""Chat templates of the Gemma, Phi-3 and Qwen3 families through the sandbox.

The templates below are written for these tests in each family's format and
with the jinja constructs their published templates rely on (namespaces,
reverse loops, string methods, tojson, raise_exception, keyword variables
such as enable_thinking and tools)."""

import pytest

from llmrt.chat import END_OF_TURN_TEXTS, TemplateError, render

GEMMA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] | trim + '\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}"
    "{% for m in rest %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant/user/...') }}{% endif %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + m['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")

PHI3 = (
    "{% for m in messages %}"
    "{% if m['role'] in ['system', 'user', 'assistant'] %}"
    "{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

QWEN3 = (
    "{% if tools %}{{ '<|im_start|>system\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
    "{{ '# Tools\n<tools>' }}{% for t in tools %}{{ '\n' + t | tojson }}{% endfor %}"
    "{{ '\n</tools><|im_end|>\n' }}"
    "{% elif messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% set ns = namespace(last_user=-1) %}"
    "{% for m in messages[::-1] %}{% set i = messages | length - 1 - loop.index0 %}"
    "{% if ns.last_user < 0 and m['role'] == 'user' %}"
    "{% set ns.last_user = i %}{% endif %}{% endfor %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' or (m['role'] == 'system' and not loop.first) %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% elif m['role'] == 'assistant' %}"
    "{% set content = m['content'] %}{% set reasoning = '' %}"
    "{% if '</think>' in content %}"
    "{% set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\n') %}"
    "{% set content = content.split('</think>')[-1].lstrip('\n') %}{% endif %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% if loop.index0 > ns.last_user and reasoning %}"
    "{{ '<think>\n' + reasoning + '\n</think>\n\n' }}{% endif %}"
    "{{ content + '<|im_end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}")

CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "<think>\nThe user greets.\n</think>\n\nHello."},
        {"role": "user", "content": "Name a river."}]


def test_gemma_turns_fold_the_system_prompt_and_check_alternation():
    out = render(GEMMA, CHAT, bos_token="<bos>")
    assert out == ("<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n"
                   "<start_of_turn>model\n<think>\nThe user greets.\n</think>\n\nHello."
                   "<end_of_turn>\n<start_of_turn>user\nName a river.<end_of_turn>\n"
                   "<start_of_turn>model\n")
    with pytest.raises(TemplateError, match="alternate"):
        render(GEMMA, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert "<end_of_turn>" in END_OF_TURN_TEXTS


def test_phi3_roles_and_the_end_token():
    out = render(PHI3, CHAT[:2])
    assert out == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\n"
    assert render(PHI3, CHAT[:2], add_generation_prompt=False, eos_token="<|endoftext|>") \
        .endswith("<|end|>\n<|endoftext|>")
    assert "<|end|>" in END_OF_TURN_TEXTS


def test_qwen3_thinking_tags_tools_and_enable_thinking():
    out = render(QWEN3, CHAT)
    # reasoning before the last user turn is dropped from the history
    assert "<think>" not in out
    assert out.endswith("<|im_start|>user\nName a river.<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>assistant\nHello.<|im_end|>\n" in out
    # after the last user turn it is kept
    tail = CHAT[:2] + [{"role": "assistant", "content": "<think>\nok\n</think>\n\nDone."}]
    assert "<think>\nok\n</think>\n\nDone." in render(QWEN3, tail, add_generation_prompt=False)
    off = render(QWEN3, CHAT, enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tools = [{"type": "function", "function": {"name": "weather",
                                               "parameters": {"type": "object"}}}]
    with_tools = render(QWEN3, CHAT, tools=tools)
    assert with_tools.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n<tools>\n{")
    assert '"name": "weather"' in with_tools


def test_tool_call_turns_reach_the_template():
    calls = "{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}" \
            "{{ c.function.name }}({{ c.function.arguments | tojson }});{% endfor %}" \
            "{% else %}{{ m.role }}:{{ m.content }};{% endif %}{% endfor %}"
    msgs = [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
            {"role": "tool", "content": "rain"}]
    assert render(calls, msgs, add_generation_prompt=False) == \
        'user:weather?;weather({"city": "Oslo"});tool:rain;'
    with pytest.raises(ValueError, match="content"):
        render(calls, [{"role": "user", "content": None}])


def test_templates_cannot_reach_outside_the_sandbox():
    bad = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateError):
        render(bad, CHAT[:2])
    mutate = "{% set x = messages.append({'role': 'user', 'content': 'x'}) %}{{ x }}"
    with pytest.raises(TemplateError):
        render(mutate, CHAT[:2])


def test_tojson_is_plain_json_and_template_errors_are_template_errors():
    # as transformers renders: keys in order, nothing HTML-escaped, plain text
    # that the template may add to (gpt-oss adds markers to a tool result)
    t = "{{ messages[0].content | tojson }}{{ '<|end|>' + {'b': '<x&y>', 'a': 'é'} | tojson }}"
    assert render(t, [{"role": "user", "content": "a<b>"}]) == \
        '"a<b>"<|end|>{"b": "<x&y>", "a": "é"}'
    # a template's own Python error on these messages is a TemplateError
    calls = [{"type": "function", "function": {"name": "f", "arguments": {}}}]
    with pytest.raises(TemplateError, match="chat template failed"):
        render("{{ 'x' in messages[0].content }}",
               [{"role": "assistant", "content": None, "tool_calls": calls}])
