"""Which journal an engine directory uses: the config's ``journal`` names it (one place)."""

from __future__ import annotations

from pathlib import Path

from recsieve.engine.config import EngineConfig
from recsieve.engine.journal import Journal, JournalBackend

__all__ = ["open_journal"]


def open_journal(directory: Path, config: EngineConfig, dim: int) -> JournalBackend:
    """``journal.sqlite`` in ``directory`` (the processes of one machine) when ``config.journal`` is
    empty, else the Redis stream it names (many machines; :mod:`recsieve.engine.journal_redis`)."""
    if config.journal:
        from recsieve.engine.journal_redis import RedisJournal

        return RedisJournal(config.journal, dim)
    return Journal(directory / "journal.sqlite", dim)
