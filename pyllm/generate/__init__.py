"""Generation: what turns a prompt's ids into a stream of tokens and text.

  engine.py       SamplingParams, Completion, the scheduler thread: slots, batched decode, prefix reuse
  speculative.py  prompt-lookup and draft-model proposals, verified in one batched pass
  constrain.py    JSON-schema / grammar / regex constraints (llguidance) as per-step token masks
  stop.py         StopMatcher: stop strings held back from a text stream

Not here: the OpenAI-shaped API over it (pyllm.chat.completions), the sampler itself (C++).
"""
