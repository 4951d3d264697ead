"""Helpers shared by llmrt's tests and benchmarks: random-weight GGUF files
(`models`), GGUF block encoding and a plain numpy decoding (`blocks`), and a
server subprocess (`server`). Nothing in the runtime imports them."""
