"""Word pools drawn once from a seeded Faker, then sampled with ``random.Random``.

Faker costs tens of microseconds per value; a million users need tens of
millions of values, so the seed draws a few hundred of each kind up front and
picks from them. The pools depend only on the seed, so the data set does too.
"""

from __future__ import annotations

from dataclasses import dataclass

from faker import Faker

TOOLS = (
    ("web_search", "search"),
    ("code_interpreter", "code"),
    ("file_search", "retrieval"),
    ("image_generation", "media"),
    ("calculator", "utility"),
    ("sql_query", "data"),
    ("send_email", "integration"),
    ("calendar_lookup", "integration"),
)
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini", "claude-sonnet-4")
SECRET_KEYS = ("openai_api_key", "anthropic_api_key", "github_token", "slack_webhook", "notion_token")
AUDIT_EVENTS = ("login", "login", "login", "logout", "token_refresh", "password_change", "login_failed")
CORPUS_ACTIONS = ("upload", "reindex", "delete", "share")
ANALYSIS_KINDS = ("sentiment", "topics", "summary", "entities", "usage")


@dataclass(frozen=True)
class Pools:
    """Faker values to sample from: names, sentences, user agents, domains."""

    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    sentences: tuple[str, ...]
    phrases: tuple[str, ...]
    user_agents: tuple[str, ...]
    domains: tuple[str, ...]


def build_pools(seed: int, size: int = 400) -> Pools:
    """Pools of ``size`` values each, the same for the same ``seed``."""
    fake = Faker()
    fake.seed_instance(seed)
    return Pools(
        first_names=tuple(fake.first_name() for _ in range(size)),
        last_names=tuple(fake.last_name() for _ in range(size)),
        sentences=tuple(fake.sentence(nb_words=12) for _ in range(size)),
        phrases=tuple(fake.catch_phrase() for _ in range(size // 4)),
        user_agents=tuple(fake.user_agent() for _ in range(size // 4)),
        # sorted: a set's order changes with PYTHONHASHSEED, the pools must not.
        domains=tuple(
            sorted({fake.free_email_domain() for _ in range(50)} | {fake.domain_name() for _ in range(20)})
        ),
    )
