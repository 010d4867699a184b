"""The TUI on a real model: the demo Gemma 3 270M GGUF through llama.cpp, loaded in the background."""

from __future__ import annotations

import pytest

from app.config import Config, RoleConfig, Sampling
from tests.tui_support import make_app, type_and_send, wait_for, wait_reply, wait_text

pytest.importorskip("llama_cpp")


@pytest.fixture
def gemma_config(gemma_gguf) -> Config:
    def role(name: str) -> RoleConfig:
        return RoleConfig(role=name, backend="llama.cpp", path=gemma_gguf, context=1024, threads=2,
                          sampling=Sampling(temperature=0.0, top_p=1.0, max_tokens=24))

    return Config(reasoner=role("reasoner"), coder=role("coder"))


async def test_the_demo_model_loads_in_the_background_and_answers_a_coder_request(gemma_config):
    from app.backends import close_all

    app = make_app(gemma_config, load_models=True)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            status = app.chat.status_bar
            await wait_for(pilot, lambda: status.role("coder").state == "ready", timeout=120)
            assert status.role("reasoner").state == "ready"
            await type_and_send(pilot, "/code print hello in python")
            item = await wait_reply(pilot, app, timeout=120)
            assert item.status == "done" and item.role == "coder"
            assert item.answer.strip() and item.answer_tokens > 0
            assert item.usage is not None and item.usage.completion_tokens <= 24
            await wait_text(pilot, app, "coder · " + gemma_config.coder.label)
    finally:
        close_all()
