"""The Jinja ``chat_template`` of an exported chat model: our chat layout, for ``apply_chat_template``.

It renders what ``data.chat.render_conversation`` / ``render_prompt`` build from ids, as text
that ``transformers`` then tokenizes segment by segment between the special tokens (as ours
encodes each piece of text on its own), so the ids are the same::

    <|bos|><|user_start|>SYSTEM\\n\\nUSER<|user_end|><|assistant_start|>PARTS<|assistant_end|>...

Messages it reads, besides plain ``{"role", "content": str}``:

* our own parts: an assistant ``content`` list of ``{"type": "text"|"python"|"python_output", "text"}``;
* OpenAI/transformers tool calls, as the server maps them (``serve/schemas.py``): an assistant
  message's ``tool_calls`` (function ``calculator``, ``{"expression": ...}``) become python
  parts, the ``tool`` messages after it their outputs, then the message's text. A turn whose
  calls are followed by a new assistant message (the agent loop: call, tool result, answer)
  stays open and that message continues it; with ``add_generation_prompt`` after a tool
  result the model continues its own turn, as our engine does after the calculator answers.

``system``/``developer`` content goes before the first user message with a blank line.
"""

# Every literal is an expression with whitespace control (`{{- ... -}}`): the template's own
# line breaks and indentation must never reach the output.
_FLUSH = """
    {%- if ns.tooling -%}
      {%- for call in ns.calls[ns.k:] -%}{{- call_text(call) -}}{%- endfor -%}
      {{- ns.text -}}
      {%- set ns.tooling = false -%}
    {%- endif -%}"""

CHAT_TEMPLATE = ("""
{%- macro text(content) -%}
  {%- if content is string -%}{{- content -}}
  {%- elif content -%}{%- for p in content if p.type == 'text' -%}{{- p.text -}}{%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
{%- macro call_text(call) -%}
  {%- set fn = call.function if call.function is defined else call -%}
  {{- '<|python_start|>' -}}
  {%- if fn.arguments is mapping -%}{{- fn.arguments.expression -}}{%- else -%}{{- fn.arguments -}}{%- endif -%}
  {{- '<|python_end|>' -}}
{%- endmacro -%}
{%- set ns = namespace(system='', first=true, open=false, tooling=false, calls=[], k=0, results=0, text='') -%}
{{- '<|bos|>' -}}
{%- for m in messages -%}
  {%- if m.role != 'tool' -%}""" + _FLUSH + """
    {%- if ns.open and m.role != 'assistant' -%}{{- '<|assistant_end|>' -}}{%- set ns.open = false -%}{%- endif -%}
  {%- endif -%}
  {%- if m.role in ('system', 'developer') -%}
    {%- set ns.system = text(m.content) -%}
  {%- elif m.role == 'user' -%}
    {{- '<|user_start|>' -}}
    {%- if ns.first and ns.system -%}{{- ns.system + '\n\n' -}}{%- endif -%}
    {%- set ns.first = false -%}
    {{- text(m.content) -}}
    {{- '<|user_end|>' -}}
  {%- elif m.role == 'tool' -%}
    {%- if ns.tooling and ns.results < ns.calls | length -%}
      {{- '<|output_start|>' + text(m.content) + '<|output_end|>' -}}
      {%- set ns.results = ns.results + 1 -%}
      {%- if ns.k < ns.calls | length -%}{{- call_text(ns.calls[ns.k]) -}}{%- set ns.k = ns.k + 1 -%}{%- endif -%}
    {%- endif -%}
  {%- elif m.role == 'assistant' -%}
    {%- if not ns.open -%}{{- '<|assistant_start|>' -}}{%- endif -%}
    {%- if m.tool_calls -%}
      {#- the calls, each followed by the result of the tool message that answers it, then the text -#}
      {{- call_text(m.tool_calls[0]) -}}
      {%- set ns.tooling = true -%}{%- set ns.open = true -%}{%- set ns.calls = m.tool_calls -%}
      {%- set ns.k = 1 -%}{%- set ns.results = 0 -%}{%- set ns.text = text(m.content) -%}
    {%- else -%}
      {%- if m.content is string -%}{{- m.content -}}
      {%- else -%}
        {%- for p in m.content -%}
          {%- if p.type == 'text' -%}{{- p.text -}}
          {%- elif p.type == 'python' -%}{{- '<|python_start|>' + p.text + '<|python_end|>' -}}
          {%- elif p.type == 'python_output' -%}{{- '<|output_start|>' + p.text + '<|output_end|>' -}}
          {%- endif -%}
        {%- endfor -%}
      {%- endif -%}
      {{- '<|assistant_end|>' -}}
      {%- set ns.open = false -%}
    {%- endif -%}
  {%- endif -%}
{%- endfor -%}""" + _FLUSH + """
{%- if add_generation_prompt -%}
  {%- if not ns.open -%}{{- '<|assistant_start|>' -}}{%- endif -%}
{%- elif ns.open -%}{{- '<|assistant_end|>' -}}
{%- endif -%}""").strip()
