"""The words every layer of Duet shares, and nothing else: the backends' event stream
(`vocab.events`), chat messages (`vocab.messages`) and the thinking/answer splitter
(`vocab.reasoning`).

Pure Python with no imports of ours: the bottom layer. `local_engine` uses the splitter
(its `generate` command splits a reasoner's output); `app` — backends, store, conversation,
TUI — uses all of it. Layers: vocab ← kernels ← local_engine ← app.
"""
