"""Backends: our engine, llama.cpp in process, and OpenAI-compatible servers."""
