"""Assistant-only labels under templates that behave like real model families' (written here, offline):
Qwen3 (earlier turns rendered without their <think> block), Gemma (the assistant is `model`), Llama 3.1
(an injected system prompt with today's date), and `{% generation %}` templates (checked against
transformers' own assistant mask)."""

import pytest
import torch
from tokenizers import AddedToken

from mmtune.data.chat import render_conversation, render_prompt
from mmtune.data.example import IGNORE_INDEX
from mmtune.model.tokenizer import load_tokenizer
from tests.data.test_chat import message, supervised_runs

QWEN3 = (
    "{%- set ns = namespace(last_query=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_query = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}"
    "{%- set content = m.content.split('</think>')[-1].lstrip('\n') -%}"
    "{%- if loop.index0 > ns.last_query -%}"
    "{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' + content + '<|im_end|>\n' -}}"
    "{%- else -%}{{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- else -%}{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' -}}{%- endif -%}")
GEMMA = ("{{ bos_token }}{% for m in messages %}{% set role = 'model' if m.role == 'assistant' else m.role %}"
         "<start_of_turn>{{ role }}\n{{ m.content | trim }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
LLAMA31 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
           "Today Date: {{ strftime_now('%d %b %Y') }}\n\n"
           "{% if messages[0].role == 'system' %}{{ messages[0].content }}{% endif %}<|eot_id|>"
           "{% for m in messages %}{% if m.role != 'system' %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
           "{{ m.content | trim }}<|eot_id|>{% endif %}{% endfor %}"
           "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
GENERATION = ("{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant\n"
              "{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}\n"
              "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# as llava-hf's processors: content is only ever a list of parts (a string's characters render as nothing)
PARTS_ONLY = ("{% for m in messages %}{{ m.role.upper() + ':\\n' }}"
              "{% for p in m.content | selectattr('type', 'equalto', 'text') %}{{ p.text }}{% endfor %}"
              "{% if m.role == 'assistant' %}</s>{% endif %}\n{% endfor %}"
              "{% if add_generation_prompt %}ASSISTANT:\\n{% endif %}")
FAMILY_TOKENS = ["<start_of_turn>", "<end_of_turn>", "<|begin_of_text|>", "<|start_header_id|>",
                 "<|end_header_id|>", "<|eot_id|>"]

CHAT = [message("user", ("audio", "a.wav"), "Transcribe the audio."),
        message("assistant", "three one four"),
        message("user", "Which digit is written here?"),
        message("assistant", "zero seven eight")]
COUNTS = {"audio": [2], "image": []}


def _tokenizer(tokenizer_dir, template):
    tokenizer = load_tokenizer(tokenizer_dir, chat_template=template)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in FAMILY_TOKENS],
                         special_tokens=True)
    return tokenizer


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template,end", [(QWEN3, "<|im_end|>"), (GEMMA, "<end_of_turn>"),
                                          (LLAMA31, "<|eot_id|>"), (GENERATION, "<|im_end|>"),
                                          (PARTS_ONLY, "</s>")],
                         ids=["qwen3", "gemma", "llama3.1", "generation", "llava-parts"])
@pytest.mark.parametrize("train_on", ["all", "last"])
def test_every_answer_and_only_the_answers_are_supervised(tokenizer_dir, template, end, train_on):
    tokenizer = _tokenizer(tokenizer_dir, template)
    ids, labels = render_conversation(tokenizer, CHAT, COUNTS, train_on)
    answers = ["three one four", "zero seven eight"] if train_on == "all" else ["zero seven eight"]
    assert supervised_runs(labels) == [_ids(tokenizer, a + end) for a in answers]
    as_text = [{"role": m["role"], "content": "\n".join(p.get("text", "<|audio|>") for p in m["content"])}
               for m in CHAT]
    if template == PARTS_ONLY:  # the text of each message as its one text part
        as_text = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in as_text]
    rendered = tokenizer.apply_chat_template(as_text, tokenize=False)
    audio = tokenizer.convert_tokens_to_ids("<|audio|>")
    one_slot = [t for k, t in enumerate(ids.tolist()) if not (t == audio and ids[k - 1] == audio)]
    assert one_slot == _ids(tokenizer, rendered)  # the template's own text, the clip's slot expanded


def test_an_earlier_turns_reasoning_is_not_trained_where_qwen3_drops_it(tokenizer_dir):
    tokenizer = _tokenizer(tokenizer_dir, QWEN3)
    chat = [CHAT[0], message("assistant", "<think>three digits</think>\n\nthree one four"), *CHAT[2:]]
    _, labels = render_conversation(tokenizer, chat, COUNTS)
    assert supervised_runs(labels) == [_ids(tokenizer, "three one four<|im_end|>"),
                                       _ids(tokenizer, "zero seven eight<|im_end|>")]


def test_the_labels_equal_transformers_assistant_mask_for_a_generation_template(tokenizer_dir):
    tokenizer = _tokenizer(tokenizer_dir, GENERATION)
    chat = [{"role": "user", "content": "Which digit is written here?"}, {"role": "assistant", "content": "seven"},
            {"role": "user", "content": "And this one?"}, {"role": "assistant", "content": "zero seven eight"}]
    theirs = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, labels = render_conversation(tokenizer, [message(m["role"], m["content"]) for m in chat], {"audio": [],
                                                                                                   "image": []})
    assert ids.tolist() == list(theirs["input_ids"])
    assert (labels != IGNORE_INDEX).long().tolist() == list(theirs["assistant_masks"])


def test_a_generation_prompt_under_each_family_ends_where_its_answer_starts(tokenizer_dir):
    for template, header in ((QWEN3, "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
                             (GEMMA, "<start_of_turn>model\n"),
                             (LLAMA31, "<|start_header_id|>assistant<|end_header_id|>\n\n")):
        tokenizer = _tokenizer(tokenizer_dir, template)
        prompt = render_prompt(tokenizer, CHAT, COUNTS)
        assert prompt[-len(_ids(tokenizer, header)):].tolist() == _ids(tokenizer, header)
        assert torch.is_tensor(prompt)


# as Qwen3's own: the turns after the last user message render their reasoning, taken from the content
QWEN3_REASONING = QWEN3.replace(
    "{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' + content + '<|im_end|>\n' -}}",
    "{%- set reasoning = m.content.split('</think>')[0].split('<think>')[-1].strip('\n') if '</think>' in m.content "
    "else '' -%}{{- '<|im_start|>assistant\n<think>\n' + reasoning + '\n</think>\n\n' + content + '<|im_end|>\n' -}}"
).replace("{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' -}}{%- endif -%}",
          "{{- '<|im_start|>assistant\n' -}}{%- endif -%}")


def test_the_last_turns_reasoning_is_trained_where_qwen3_renders_it(tokenizer_dir):
    assert QWEN3_REASONING != QWEN3
    tokenizer = _tokenizer(tokenizer_dir, QWEN3_REASONING)
    chat = [CHAT[0], message("assistant", "<think>three digits</think>\n\nthree one four"), CHAT[2],
            message("assistant", "<think>\ncount them\n</think>\n\nzero seven eight")]
    _, labels = render_conversation(tokenizer, chat, COUNTS)
    assert supervised_runs(labels) == [_ids(tokenizer, "three one four<|im_end|>"),  # earlier: reasoning dropped
                                       _ids(tokenizer, "<think>\ncount them\n</think>\n\nzero seven eight<|im_end|>")]


def test_a_template_that_renders_only_content_parts_is_told_from_one_that_takes_strings():
    from mmtune.data.chat import template_takes_parts
    from mmtune.model.tokenizer import CHATML_TEMPLATE

    assert template_takes_parts(PARTS_ONLY)
    assert not any(template_takes_parts(t) for t in (CHATML_TEMPLATE, QWEN3, GEMMA, LLAMA31, GENERATION, None))
