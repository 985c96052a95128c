"""chatforge: raw text to an aligned chat model, the InstructGPT way."""

__version__ = "0.1.0"
