"""Chat: turning messages into a prompt and talking to a model.

  template.py     chat templates (the GGUF's Jinja template in a sandbox, or a built-in format)
  completions.py  the OpenAI-shaped API: create_chat_completion, create_completion, chunks
  repl.py         `pyllm chat`, the terminal REPL (`python -m pyllm.chat`)

Not here: generation itself (pyllm.generate), the HTTP server (pyllm.server).
"""
