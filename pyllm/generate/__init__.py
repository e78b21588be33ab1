"""Generation: what turns a prompt's ids into a stream of tokens and text.

  stop.py         StopMatcher: stop strings held back from a text stream
"""
