"""A reply's live figures tell what the engine saved: prompt tokens served from its kept cache
and, where it drafted with MTP, how many drafts it kept."""

from app.tui.messages import ReplyItem
from vocab.events import Usage


def _item(usage: Usage) -> ReplyItem:
    item = ReplyItem(role="reasoner", model="m", context=4096)
    item.first_token, item.total_s, item.usage = 0.5, 1.5, usage
    return item


def test_the_figures_show_cached_prompt_tokens_and_kept_mtp_drafts():
    figures = _item(Usage(prompt_tokens=900, completion_tokens=20, cached_tokens=780, drafted=12, accepted=9)).figures()
    assert "780 prompt tokens cached" in figures
    assert "MTP kept 9 of 12 drafts" in figures
    assert "context 920 / 4,096" in figures


def test_the_figures_say_nothing_of_a_cache_or_drafts_that_were_not_used():
    figures = _item(Usage(prompt_tokens=900, completion_tokens=20)).figures()
    assert "cached" not in figures and "MTP" not in figures
