"""serving: the OpenAI/pplx-compatible chat-completions server over live engines, with hot-swap."""
